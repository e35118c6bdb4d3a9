"""nlpaug's ContextualWordEmbsAug through rarekit (``rarekit.augment.contextual_word_embs_aug``): the behaviours
nlpaug's own test module (test/augmenter/word/test_context_word_embs.py in makcedward/nlpaug) checks on hub
models, here on tiny local bert, distilbert and roberta models built by the tests: model_type and device
arguments, get_device, insert and substitute, top_k, stopwords, aug_p, batch input, an incorrect model name,
and a hub name that cannot be downloaded."""
import builtins
import os
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch

naw = pytest.importorskip("nlpaug.augmenter.word")
transformers = pytest.importorskip("transformers")

from masked_lm_models import BERT_SPECIAL, ROBERTA_SPECIAL, build_masked_lms, one_torch_thread  # noqa: E402,F401
from rarekit.augment import RareAugmenter, contextual_word_embs_aug  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ("bert", "distilbert", "roberta")
MODEL_TYPES = {"bert": ("bert", "distilbert"), "distilbert": ("bert", "distilbert"), "roberta": ("roberta",)}
SUBWORD_PREFIX = {"bert": "##", "distilbert": "##", "roberta": "Ġ"}
# lower-case words of the tiny vocabularies, so that every word is one token of every model
TEXT = "the quick cat jumped over the lazy dog"
TEXTS = ["the quick cat jumped over the lazy dog and the big red bird flew over the old house",
         "she walked under the old tree and he talked"]
TEN_WORDS = "the big red bird flew over the old green house"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_masked_lms(tmp_path_factory.mktemp("nlpaug-masked-lms"))


def special_tokens(model):
    return ROBERTA_SPECIAL if model == "roberta" else BERT_SPECIAL


def augment_seeded(augmenter, data, seed):
    """nlpaug draws positions from ``random`` and words from torch's generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    return augmenter.augment(data)


def assert_clean_output(model, augmenter, texts, outputs):
    """One output text per input, changed, with no word piece and no special token."""
    assert isinstance(outputs, list) and len(outputs) == len(texts)
    for text, output in zip(texts, outputs):
        assert isinstance(output, str) and output.split() != text.split(), (text, output)
        assert augmenter.model.get_subword_prefix() == SUBWORD_PREFIX[model]
        assert SUBWORD_PREFIX[model] not in output, output
        assert not any(token in output for token in special_tokens(model)), output


def is_subsequence(short, long):
    rest = iter(long)
    return all(word in rest for word in short)


# item 9: model_type, device=None, get_device

@pytest.mark.parametrize("model", MODELS)
def test_model_type_keyword_device_none_and_get_device(models, model):
    for model_type in ("", *MODEL_TYPES[model]):
        augmenter = contextual_word_embs_aug(models[model], model_type=model_type, device=None, action="insert",
                                             force_reload=True, silence=True)  # nlpaug's test_none_device
        assert augmenter.device == "cpu" and augmenter.model.get_device() == "cpu"
        assert all(parameter.device.type == "cpu" for parameter in augmenter.model.get_model().parameters())
        assert augmenter.model_type == ("roberta" if model == "roberta" else "bert")
        assert_clean_output(model, augmenter, [TEXT], augment_seeded(augmenter, TEXT, 0))
    positional = contextual_word_embs_aug(str(models[model]), MODEL_TYPES[model][-1], "substitute", 5)
    assert positional.action == "substitute" and positional.model.top_k == 5


def test_model_type_that_contradicts_the_vocabulary_is_refused(models):
    with pytest.raises(ValueError, match=r"model_type='roberta'.*model_type='bert'"):
        contextual_word_embs_aug(models["bert"], model_type="roberta")
    with pytest.raises(ValueError, match=r"model_type='distilbert'.*model_type='roberta'"):
        contextual_word_embs_aug(models["roberta"], model_type="distilbert")


@pytest.mark.parametrize("device, error", [("gpu0", ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_device_names_the_argument(models, device, error):
    with pytest.raises(error, match="device"):
        contextual_word_embs_aug(models["bert"], device=device)


def test_model_moves_with_to(models):
    augmenter = contextual_word_embs_aug(models["bert"], device=torch.device("cpu"))
    assert augmenter.model.to("cpu") is augmenter.model and augmenter.model.get_device() == "cpu"


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_get_device_on_cuda(models, model):
    for action in ("insert", "substitute"):
        augmenter = contextual_word_embs_aug(models[model], action=action, device="cuda")
        assert "cuda" in augmenter.model.get_device() and "cuda" in augmenter.device
        assert_clean_output(model, augmenter, TEXTS, augment_seeded(augmenter, TEXTS, 1))


# item 10: nlpaug's behaviours

def test_incorrect_model_name_gives_nlpaugs_value_error(monkeypatch):
    with pytest.raises(ValueError) as stock:
        naw.ContextualWordEmbsAug(model_path="unknown")
    first_sentence = str(stock.value).split(". ")[0]

    def no_loading(*args, **kwargs):
        raise AssertionError("nothing may be loaded for a name that tells no model type")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_loading)
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=first_sentence) as ours:
        contextual_word_embs_aug("unknown")
    assert "'unknown'" in str(ours.value)
    with pytest.raises(ValueError, match=first_sentence):
        contextual_word_embs_aug("bert-base-uncased", model_type="xlnet")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-bert"):
        contextual_word_embs_aug(tmp_path / "missing-bert")
    with pytest.raises(FileNotFoundError, match="no-model"):
        RareAugmenter("contextual", model_path=str(tmp_path / "no-model"))


def test_hub_name_offline_gives_a_clear_error_without_retries(tmp_path):
    """A hub model that is not in the cache, with HF_HUB_OFFLINE=1: an OSError that names the model and says
    how to get it, at once (huggingface_hub retries for about a minute without HF_HUB_OFFLINE)."""
    script = textwrap.dedent("""
        from rarekit.augment import RareAugmenter, contextual_word_embs_aug
        for make in (lambda: contextual_word_embs_aug("bert-base-uncased"), lambda: RareAugmenter("contextual")):
            try:
                make()
                print("LOADED")
            except Exception as error:
                print(type(error).__name__, "|", str(error).replace("\\n", " "))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2, run.stdout
    for line in lines:
        name, message = line.split(" | ", 1)
        assert issubclass(getattr(builtins, name, type(None)), OSError), line
        assert "'bert-base-uncased'" in message and "HF_HUB_OFFLINE" in message
        assert "hf download bert-base-uncased" in message
    assert "Retrying" not in run.stderr


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("action", ["insert", "substitute"])
def test_insert_and_substitute_single_and_batch(models, model, action):
    augmenter = contextual_word_embs_aug(models[model], action=action, aug_p=0.3)
    single = augment_seeded(augmenter, TEXT, 2)
    batch = augment_seeded(augmenter, TEXTS, 3)
    assert_clean_output(model, augmenter, [TEXT], single)
    assert_clean_output(model, augmenter, TEXTS, batch)
    for text, output in zip([TEXT, *TEXTS], single + batch):
        words, new_words = text.split(), output.split()
        if action == "insert":  # the text's words in order, with new ones between them
            assert len(new_words) > len(words) and is_subsequence(words, new_words), (text, output)
        else:  # words replaced in place
            assert len(new_words) == len(words), (text, output)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("action", ["insert", "substitute"])
def test_aug_p_aug_max_set_how_many_words_change(models, model, action):
    """ceil(aug_p * words) words are changed, at most aug_max (nlpaug's documented count)."""
    assert len(TEN_WORDS.split()) == 10
    for aug_p, aug_max, expected in ((0.2, 10, 2), (0.5, 10, 5), (1.0, 3, 3), (0.1, 10, 1)):
        augmenter = contextual_word_embs_aug(models[model], action=action, aug_p=aug_p, aug_max=aug_max)
        assert len(augmenter.model.get_tokenizer().tokenize(TEN_WORDS)) == 10  # one token per word
        for seed in range(3):
            words, new_words = TEN_WORDS.split(), augment_seeded(augmenter, TEN_WORDS, seed)[0].split()
            if action == "insert":
                assert len(new_words) == 10 + expected and is_subsequence(words, new_words), new_words
            else:
                assert sum(old != new for old, new in zip(words, new_words)) == expected, new_words


def top_whole_words(model, folder, masked_text, excluded, k):
    """The ``k`` most likely whole words (word-start tokens of letters, no special token) for the mask of
    ``masked_text``, by the model run here directly."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    lm = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    encoded = tokenizer(masked_text, return_tensors="pt")
    with torch.no_grad():
        logits = lm(**encoded).logits[0, encoded["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    words = {}
    for token, index in tokenizer.get_vocab().items():
        word = token[1:] if model == "roberta" and token.startswith("Ġ") else None if model == "roberta" else token
        if word and word.isalpha() and word != excluded and token not in special_tokens(model):
            words[index] = word
    ranked = sorted(words, key=lambda index: -float(logits[index]))
    return [words[index] for index in ranked[:k]]


@pytest.mark.parametrize("model", MODELS)
def test_top_k_draws_among_the_k_most_likely_whole_words(models, model):
    mask = {"roberta": "<mask>"}.get(model, "[MASK]")
    text = "the cat"
    # position -> masked text, replaced word; roberta's mask stands for the word with its space (Ġcat), as
    # roberta-base's tokenizer reads "the <mask>" (its mask absorbs the space before it; this tiny one's does not)
    contexts = {0: (f"{mask} cat", "the"), 1: (f"the{mask}" if model == "roberta" else f"the {mask}", "cat")}
    for top_k in (1, 3):
        augmenter = contextual_word_embs_aug(models[model], action="substitute", aug_p=0.5, top_k=top_k)
        assert augmenter.model.top_k == top_k  # nlpaug's test_reset_model: a new augmenter takes its own top_k
        allowed = {position: top_whole_words(model, models[model], masked, replaced, top_k)
                   for position, (masked, replaced) in contexts.items()}
        drawn = {0: set(), 1: set()}
        for output in augment_seeded(augmenter, [text] * 40, top_k):
            changed = [position for position, (old, new) in enumerate(zip(text.split(), output.split())) if old != new]
            assert len(changed) == 1 and len(output.split()) == 2, output
            drawn[changed[0]].add(output.split()[changed[0]])
        for position, words in drawn.items():
            assert words <= set(allowed[position]), (top_k, position, words, allowed[position])
        if top_k == 3:  # more than the single most likely word is used
            assert max(len(words) for words in drawn.values()) > 1, drawn


@pytest.mark.parametrize("model", MODELS)
def test_stopwords_are_never_changed(models, model):
    stopwords = ["quick", "lazy", "house", "tree"]
    augmenter = contextual_word_embs_aug(models[model], action="substitute", aug_p=1.0, aug_max=None,
                                         stopwords=stopwords)
    for seed in range(3):
        for text, output in zip(TEXTS, augment_seeded(augmenter, TEXTS, seed)):
            words, new_words = text.split(), output.split()
            assert len(new_words) == len(words), output
            for old, new in zip(words, new_words):
                if old in stopwords:
                    assert new == old, (text, output)
            assert sum(old != new for old, new in zip(words, new_words)) >= len(words) // 2, output


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("action", ["insert", "substitute"])
def test_long_text_changes_only_its_head_and_punctuation_stays(models, model, action):
    """nlpaug's max_length, subword and empty_replacement checks: a text longer than the model takes is
    changed in its head only; punctuation is kept, in order."""
    long_text = " ".join([TEN_WORDS] * 8)
    punctuated = "the cat sat on the mat, and the dog ran! did it?"
    augmenter = contextual_word_embs_aug(models[model], action=action, aug_p=0.3)
    head = augmenter.max_num_token
    assert len(augmenter.model.get_tokenizer().tokenize(long_text)) == 80 > head + 10  # one token per word
    for seed in range(2):
        outputs = augment_seeded(augmenter, [long_text, punctuated], seed)
        assert_clean_output(model, augmenter, [long_text, punctuated], outputs)
        tail = long_text.split()[head:]
        assert outputs[0].split()[-len(tail):] == tail
        assert re.findall(r"[^\w\s]", outputs[1]) == re.findall(r"[^\w\s]", punctuated), outputs[1]


@pytest.mark.parametrize("model", MODELS)
def test_batch_input_of_any_size_keeps_order(models, model):
    """nlpaug's test_batch_size: batch sizes of 1, the input size, more, and fewer than the input."""
    texts = TEXTS + [TEXT, TEN_WORDS]
    for batch_size, data in ((1, texts), (len(texts), texts), (len(texts) + 1, texts), (2, texts * 2)):
        augmenter = contextual_word_embs_aug(models[model], action="substitute", aug_p=0.2, batch_size=batch_size)
        outputs = augment_seeded(augmenter, data, batch_size)
        assert_clean_output(model, augmenter, data, outputs)
        for text, output in zip(data, outputs):  # each output is a variant of its own text
            words, new_words = text.split(), output.split()
            assert len(new_words) == len(words)
            assert sum(old == new for old, new in zip(words, new_words)) >= len(words) // 2, (text, output)
