"""Tiny random-weight masked language models built in a folder, as the augmentation tests need them (the
model hub is unreachable): bert and distilbert with a WordPiece vocabulary, roberta with a byte-level BPE
trained here. Shared by tests/augment/test_augment.py and tests/augment/test_nlpaug_contextual.py."""
import pytest
import torch

WORDS = ("the a an cat dog bird fish sat ran flew swam on in under over mat rug tree pond big small red blue quick "
         "lazy happy sad and or but is was were very not it he she they we you i good bad day night sun moon house "
         "car road river city old new green fast slow jumped walked talked").split()
PIECES = ["##s", "##ed", "##ing", "##ly", "##er", "##est"]
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def small_config(config_class, vocab_size, **names):
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return config_class(vocab_size=vocab_size, max_position_embeddings=64,
                        **{names.get(key, key): value for key, value in sizes.items()})


def build_wordpiece_model(folder, model_type):
    """A random-weight bert or distilbert masked LM with a small WordPiece vocabulary written to vocab.txt
    (transformers 5 ignores BertTokenizerFast(vocab_file=...): the tokenizer is read from the folder)."""
    import transformers

    folder.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = BERT_SPECIAL + list(".,!?'") + WORDS + PIECES + list(letters) + ["##" + c for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    if model_type == "bert":
        model = transformers.BertForMaskedLM(small_config(transformers.BertConfig, len(vocab)))
        tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    else:
        config = small_config(transformers.DistilBertConfig, len(vocab), hidden_size="dim",
                              num_hidden_layers="n_layers", num_attention_heads="n_heads",
                              intermediate_size="hidden_dim")
        model = transformers.DistilBertForMaskedLM(config)
        tokenizer = transformers.DistilBertTokenizerFast.from_pretrained(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_roberta_model(folder):
    """A random-weight roberta masked LM with a byte-level BPE (vocab.json + merges.txt) trained here, in which
    every word of :data:`WORDS` is one token, with its space (``Ġcat``) and without (a text's first word)."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(WORDS + [" " + word for word in WORDS], vocab_size=1000, min_frequency=1,
                            special_tokens=ROBERTA_SPECIAL, show_progress=False)
    bpe.save_model(str(folder))
    tokenizer = transformers.RobertaTokenizerFast.from_pretrained(folder)
    torch.manual_seed(0)
    config = small_config(transformers.RobertaConfig, len(tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          type_vocab_size=1)
    config.max_position_embeddings = 66  # roberta's positions start at padding_idx + 1
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_masked_lms(root):
    """``{"bert": folder, "distilbert": folder, "roberta": folder}`` under ``root``."""
    return {"bert": build_wordpiece_model(root / "bert", "bert"),
            "distilbert": build_wordpiece_model(root / "distilbert", "distilbert"),
            "roberta": build_roberta_model(root / "roberta")}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Runs a module's tests on one torch thread, then restores the count: the models are so small that
    more threads only wait for each other (20 to 70x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
