"""rarekit.augment on tiny local masked LMs (bert, distilbert, roberta; random weights, built here) and
nlpaug's model-free methods; augment_minority against imbalanced-learn's RandomOverSampler targets."""
import random
import re
import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch

nlpaug_word = pytest.importorskip("nlpaug.augmenter.word")
transformers = pytest.importorskip("transformers")
imblearn_over = pytest.importorskip("imblearn.over_sampling")

import rarekit  # noqa: E402
from rarekit.augment import augmenter as augment  # noqa: E402
from rarekit.augment.masked_lm import WORD_RE, MaskedLM  # noqa: E402
from rarekit.augment import RareAugmenter, augment_minority, augment_rare_tokens, contextual_word_embs_aug  # noqa: E402
from masked_lm_models import BERT_SPECIAL, PIECES, build_masked_lms, one_torch_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>")
TEXTS = ["The quick cat jumped over the lazy dog.", "a big red bird flew over the old house",
         "She walked to the river at night, and he talked.", "Zebras sat under the green tree!"]
MODEL_FREE = ("random_swap", "random_delete", "spelling", "keyboard", "ocr")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_masked_lms(tmp_path_factory.mktemp("masked-lms"))


@pytest.fixture(scope="module")
def bert_augmenter(models):
    return RareAugmenter("contextual", model_path=models["bert"], aug_p=0.3, seed=0)


def assert_clean(texts, outputs):
    """No special token and no ## fragment in any output unless its text had it."""
    for text, variants in zip(texts, outputs):
        for variant in variants:
            for token in SPECIAL + ("##",):
                assert variant.count(token) <= text.count(token), (token, text, variant)


def assert_distinct(texts, outputs):
    for text, variants in zip(texts, outputs):
        keys = [tuple(re.findall(r"\w+|[^\w\s]", variant)) for variant in variants]
        assert len(set(keys)) == len(keys) and tuple(re.findall(r"\w+|[^\w\s]", text)) not in keys, (text, variants)


def words_of(text):
    return WORD_RE.findall(text)


def is_subsequence(short, long):
    rest = iter(long)
    return all(word in rest for word in short)


def test_stock_nlpaug_contextual_breaks_on_transformers_5(models):
    """The break the compatibility layer exists for (see rarekit.augment.nlpaug_compat)."""
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the break is specific to transformers 5")
    with pytest.raises(AttributeError, match="_convert_token_to_id"):
        nlpaug_word.ContextualWordEmbsAug(model_path=str(models["bert"]), model_type="bert", force_reload=True)


@pytest.mark.parametrize("model", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("action", ["substitute", "insert"])
def test_contextual_end_to_end(models, model, action):
    augmenter = RareAugmenter("contextual", model_path=models[model], action=action, aug_p=0.3, batch_size=3, seed=1)
    outputs = augmenter.augment(TEXTS, n=3, protect={"dog", "river"})
    assert [len(variants) for variants in outputs] == [3] * len(TEXTS)
    assert_clean(TEXTS, outputs)
    assert_distinct(TEXTS, outputs)
    for text, variants in zip(TEXTS, outputs):
        for variant in variants:
            assert Counter(w for w in words_of(variant) if w in ("dog", "river")) == \
                Counter(w for w in words_of(text) if w in ("dog", "river"))
            if action == "substitute":  # only words change: punctuation, spacing and word count stay
                assert WORD_RE.sub("", variant) == WORD_RE.sub("", text)
                assert len(words_of(variant)) == len(words_of(text))
            else:  # the original words, in order, with new ones between them
                assert is_subsequence(words_of(text), words_of(variant))
                assert len(words_of(variant)) > len(words_of(text))
    assert "Zebras" in " ".join(" ".join(v) for v in outputs)  # an unknown word is kept, never [UNK]


def test_contextual_never_draws_special_tokens_or_fragments(models):
    """The model is made to prefer [SEP], [UNK], ... and ## pieces by far: they are still never drawn."""
    augmenter = RareAugmenter("contextual", model_path=models["bert"], aug_p=0.5, seed=2)
    lm = augmenter._masked_lm
    vocab = lm.tokenizer.get_vocab()
    unwanted = [vocab[token] for token in BERT_SPECIAL + PIECES + [".", ","]]
    with torch.no_grad():
        lm.model.get_output_embeddings().bias[unwanted] += 1000.0
    outputs = augmenter.augment(TEXTS, n=2)
    assert_clean(TEXTS, outputs)
    assert_distinct(TEXTS, outputs)


def test_masked_lm_whole_words(models):
    bert = MaskedLM(models["bert"])
    vocab = bert.tokenizer.get_vocab()
    assert bert.words[vocab["cat"]] == "cat" and bert.words[vocab["q"]] == "q"
    assert all(bert.words[vocab[token]] is None for token in BERT_SPECIAL + PIECES + ["##a", ".", "'"])
    roberta = MaskedLM(models["roberta"])
    vocab = roberta.tokenizer.get_vocab()
    assert roberta.words[vocab["Ġcat"]] == "cat"
    assert all(roberta.words[vocab[token]] is None for token in ["<s>", "</s>", "<pad>", "<unk>", "<mask>", "!"])
    continuations = [i for token, i in vocab.items() if token.isalpha() and token[0] != "Ġ"]  # inside a word
    assert continuations and all(roberta.words[i] is None for i in continuations)
    assert (bert.nlpaug_model_type, roberta.nlpaug_model_type) == ("bert", "roberta")
    # exclusions: with every word but "moon" excluded, each mask draws "moon"; masks are filled left to right
    everything_else = [i for i, word in enumerate(bert.words) if word is not None and word != "moon"]
    drawn = bert.sample(["the [MASK] sat on [MASK]", "[MASK]"], [[everything_else, []], [everything_else]],
                        generator=torch.Generator().manual_seed(0))
    assert [len(masks) for masks in drawn] == [2, 1]
    assert bert.words[drawn[0][0][0]] == "moon" and bert.words[drawn[1][0][0]] == "moon"


@pytest.mark.parametrize("model", ["bert", "distilbert", "roberta"])
def test_nlpaug_contextual_augmenter_through_the_compat_layer(models, model):
    """nlpaug's own ContextualWordEmbsAug runs on transformers 5 with the compat language model, batched
    over more texts than its batch size."""
    augmenter = contextual_word_embs_aug(models[model], action="substitute", aug_p=0.3, batch_size=4)
    assert isinstance(augmenter, nlpaug_word.ContextualWordEmbsAug)
    texts = ["the quick cat jumped over the lazy dog", "a big red bird flew over the old house"] * 5
    torch.manual_seed(0)
    random.seed(0)
    outputs = augmenter.augment(texts)
    assert len(outputs) == len(texts)
    assert_clean(texts, [[output] for output in outputs])
    assert sum(output.split() != text.split() for text, output in zip(texts, outputs)) >= len(texts) // 2
    wrapped = RareAugmenter(augmenter, seed=3).augment(texts[:2], n=2)
    assert_clean(texts[:2], wrapped)


def test_protect_is_kept_by_every_method(models):
    text = "The quick cat and the lazy dog sat on the big red mat in New York today."
    protect = {"cat", "dog", "mat", "New York", "quick"}
    augmenters = [RareAugmenter(method, aug_p=0.5, seed=4) for method in MODEL_FREE]
    augmenters += [RareAugmenter("contextual", model_path=models["bert"], action=action, aug_p=0.5, seed=4)
                   for action in ("substitute", "insert")]
    for augmenter in augmenters:
        variants = augmenter.augment([text], n=4, protect=protect)[0]
        for variant in variants:
            assert Counter(w for w in words_of(variant) if w in protect) == \
                Counter(w for w in words_of(text) if w in protect), (augmenter, variant)
            assert variant.count("New York") == 1, (augmenter, variant)


@pytest.mark.parametrize("method", ["contextual", *MODEL_FREE])
def test_seed_makes_variants_reproducible_without_touching_global_generators(models, method):
    def run(seed):
        augmenter = RareAugmenter(method, model_path=models["bert"], aug_p=0.3, seed=seed)
        return augmenter.augment(TEXTS, n=2), augmenter.augment(TEXTS[:2], n=1)

    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = run(7)
    assert (random.getstate(), torch.get_rng_state().tolist()) == (states[0], states[2].tolist())
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert run(7) == first
    assert run(8) != first


def test_spelling_variants_do_not_depend_on_the_hash_seed():
    """nlpaug fills its misspelling lists from sets (order set by PYTHONHASHSEED); rarekit sorts them."""
    texts = ["The people were there because their friends said so."]
    first = RareAugmenter("spelling", aug_p=0.5, seed=5).augment(texts, n=3)
    model = nlpaug_word.spelling.SPELLING_ERROR_MODEL
    shuffler = random.Random(0)
    for misspellings in model.dict.values():
        shuffler.shuffle(misspellings)  # another process's order
    assert RareAugmenter("spelling", aug_p=0.5, seed=5).augment(texts, n=3) == first


def test_model_free_methods_need_nothing_downloaded():
    text = "The people were there because their friends said the weather was good."
    outputs = {method: RareAugmenter(method, aug_p=0.3, seed=6).augment([text], n=3)[0] for method in MODEL_FREE}
    assert_clean([text] * len(MODEL_FREE), list(outputs.values()))
    assert_distinct([text] * len(MODEL_FREE), list(outputs.values()))
    for variant in outputs["random_swap"]:  # (nlpaug moves the capital of a swapped first word)
        assert Counter(words_of(variant.lower())) == Counter(words_of(text.lower()))
    for variant in outputs["random_delete"]:
        kept = words_of(variant.lower())  # (nlpaug capitalizes the new first word)
        assert len(kept) < len(words_of(text)) and is_subsequence(kept, words_of(text.lower()))
    for method in ("spelling", "keyboard", "ocr"):
        for variant in outputs[method]:
            assert set(words_of(variant)) != set(words_of(text))


def test_texts_that_cannot_be_varied_get_copies():
    augmenter = RareAugmenter("random_swap", seed=0)
    assert augmenter.augment(["Hello", "", "   "], n=2) == [["Hello", "Hello"], ["", ""], ["   ", "   "]]
    assert augmenter.augment(["cat dog"], n=0) == [[]]
    assert augmenter.augment([], n=3) == []
    all_protected = augmenter.augment(["cat dog bird"], n=2, protect={"cat", "dog", "bird"})
    assert all_protected == [["cat dog bird"] * 2] or all(
        Counter(words_of(v)) == Counter(["cat", "dog", "bird"]) for v in all_protected[0])


def oversampler_counts(labels, strategy):
    sampler = imblearn_over.RandomOverSampler(sampling_strategy=strategy, random_state=0)
    _, resampled = sampler.fit_resample(np.zeros((len(labels), 1)), np.asarray(labels))
    return Counter(resampled.tolist())


@pytest.mark.parametrize("strategy", ["auto", "minority", "not majority", "all", {"a": 9, "b": 7, "c": 12},
                                      lambda y: {"c": 10}])
def test_augment_minority_reaches_the_random_over_sampler_targets(strategy):
    labels = ["a"] * 9 + ["b"] * 4 + ["c"] * 2 + ["d"] * 1
    texts = [f"{label} sample {i} with the quick brown fox jumping high" for i, label in enumerate(labels)]
    texts_res, labels_res = augment_minority(texts, labels, strategy, "random_swap", seed=0, progress=False)
    assert Counter(labels_res) == oversampler_counts(labels, strategy)
    assert texts_res[:len(texts)] == texts and labels_res[:len(labels)] == labels
    assert isinstance(labels_res, list) and len(texts_res) == len(labels_res)
    by_words = {tuple(sorted(words_of(text.lower()))): label for text, label in zip(texts, labels)}
    for text, label in zip(texts_res[len(texts):], labels_res[len(labels):]):
        assert by_words[tuple(sorted(words_of(text.lower())))] == label  # a swap of one of its own class's texts


@pytest.mark.parametrize("strategy", [0.5, 1.0, "auto"])
@pytest.mark.parametrize("kind", ["ndarray", "tensor", "list"])
def test_augment_minority_binary_float_strategy_and_label_types(strategy, kind):
    raw = [0] * 10 + [1] * 3
    labels = {"ndarray": np.array(raw), "tensor": torch.tensor(raw), "list": raw}[kind]
    texts = [f"text number {i} about the quick brown fox" for i in range(len(raw))]
    texts_res, labels_res = augment_minority(texts, labels, strategy, "random_delete", seed=1, progress=False)
    expected = oversampler_counts(raw, strategy)
    assert type(labels_res) is type(labels) and len(texts_res) == sum(expected.values())
    assert Counter(np.asarray(labels_res).tolist()) == expected


def test_augment_minority_is_reproducible_with_progress_bar(models, capsys, monkeypatch):
    labels = ["big"] * 5 + ["small"] * 2
    texts = ["the big dog ran on the road", "a big red car", "the big old house", "a big tree", "the big river",
             "the small cat sat", "a small bird flew over the pond"]
    augmenter = RareAugmenter("contextual", model_path=models["bert"], aug_p=0.3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # the bar shows on terminals only
    first = augment_minority(texts, labels, "auto", augmenter, seed=3)
    assert "augmenting" in capsys.readouterr().err
    assert augment_minority(texts, labels, "auto", augmenter, seed=3, progress=False) == first
    texts_res, labels_res = first
    assert labels_res == labels + ["small"] * 3
    assert_clean(texts[5:] * 2, [[text] for text in texts_res[7:]])
    assert len(set(texts_res[7:]) - set(texts)) == 3


def test_augment_minority_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        augment_minority(["a b", "c d"], [0], augmenter="random_swap", progress=False)
    with pytest.raises(ValueError, match="more than 1 class"):
        augment_minority(["a b", "c d"], [0, 0], augmenter="random_swap", progress=False)
    with pytest.raises(ValueError, match="float"):
        augment_minority(["a", "b", "c"], [0, 1, 2], 0.5, "random_swap", progress=False)


def test_augment_rare_tokens_with_word_level_counts(models):
    texts = ["the dog sat on the mat", "the zebra sat on the rug", "a big dog and a small Zebra",
             "the sun is red", "an okapi ran over the road"]
    vocab = {}
    ids = [vocab.setdefault(word, len(vocab)) for text in texts for word in text.lower().split()]
    counter = rarekit.TokenCounter(len(vocab)).update(ids)
    words = list(vocab)
    rare = {words[i] for i in rarekit.rare_ids(counter.counts, min_count=1, max_count=2).tolist()} & {"zebra", "okapi"}
    augmenter = RareAugmenter("contextual", model_path=models["bert"], aug_p=0.4)
    variants = augment_rare_tokens(texts, rare, n=2, augmenter=augmenter, seed=0)
    assert len(variants) == 2 * 3  # the texts with zebra, Zebra and okapi
    for variant, source in zip(variants, [texts[1]] * 2 + [texts[2]] * 2 + [texts[4]] * 2):
        kept = {"zebra", "Zebra", "okapi"} & set(words_of(source))
        assert kept <= set(words_of(variant)) and variant != source
    assert_clean([texts[1]] * 6, [variants])
    assert augment_rare_tokens(texts, rare, n=2, augmenter=augmenter, seed=0) == variants
    assert augment_rare_tokens(texts, ["unicorn"], augmenter="random_swap") == []


@pytest.mark.parametrize("call, error, message", [
    (lambda: RareAugmenter("paraphrase"), ValueError, "method must be one of"),
    (lambda: RareAugmenter(object()), TypeError, "nlpaug augmenter"),
    (lambda: RareAugmenter("random_swap", action="swap"), ValueError, "action"),
    (lambda: RareAugmenter("random_swap", aug_p=0), ValueError, "aug_p"),
    (lambda: RareAugmenter("random_swap", batch_size=0), ValueError, "batch_size"),
    (lambda: RareAugmenter("random_swap", seed=1.5), TypeError, "seed"),
    (lambda: RareAugmenter("random_swap", device="gpu0"), ValueError, "device"),
    (lambda: RareAugmenter("random_swap", device=2.0), TypeError, "device"),
    (lambda: RareAugmenter("random_swap").augment("one text"), TypeError, "wrap it in a list"),
    (lambda: RareAugmenter("random_swap").augment(["a", 3]), TypeError, r"texts\[1\]"),
    (lambda: RareAugmenter("random_swap").augment(["a b"], n=-1), ValueError, "n must be"),
    (lambda: RareAugmenter("random_swap").augment(["a b"], protect="cat"), TypeError, "wrap it"),
    (lambda: RareAugmenter("random_swap").augment(["a b"], protect={""}), ValueError, "non-empty"),
    (lambda: augment_rare_tokens(["a b"], "zebra"), TypeError, "wrap it"),
    (lambda: augment_rare_tokens(["a b"], torch.tensor([3, 4])), TypeError, "map them to words"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("missing, method", [("transformers", "contextual"), ("nlpaug.augmenter.word", "random_swap"),
                                             ("nlpaug.augmenter.char", "keyboard")])
def test_missing_extra_names_it(monkeypatch, models, missing, method):
    monkeypatch.setitem(sys.modules, missing, None)  # import of it now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install rarekit[augment]")):
        RareAugmenter(method, model_path=models["bert"])


def test_synonym_without_nltk_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)
    with pytest.raises(ImportError, match=r"pip install nltk(.|\n)*nltk\.downloader wordnet omw-1\.4"):
        RareAugmenter("synonym")


def test_synonym_without_wordnet_data_never_downloads(monkeypatch):
    fake = types.ModuleType("nltk")
    found = []

    def find(name):
        found.append(name)
        raise LookupError(f"Resource {name} not found")

    def download(*args, **kwargs):
        raise AssertionError("nltk.download must not be called")

    fake.data = types.SimpleNamespace(find=find)
    fake.download = download
    monkeypatch.setitem(sys.modules, "nltk", fake)
    with pytest.raises(LookupError, match=r"corpora/wordnet(.|\n)*python -m nltk\.downloader wordnet omw-1\.4"):
        RareAugmenter("synonym")
    assert "corpora/wordnet" in found


def test_repr_and_top_level_exports(bert_augmenter):
    assert rarekit.RareAugmenter is RareAugmenter and rarekit.augment_minority is augment_minority
    assert "contextual" in repr(bert_augmenter) and "random_swap" in repr(RareAugmenter("random_swap"))
    assert augment.METHODS == ("contextual", "synonym", "random_swap", "random_delete", "spelling", "keyboard", "ocr")


@pytest.mark.cuda
def test_contextual_batches_on_cuda(models):
    cpu = RareAugmenter("contextual", model_path=models["bert"], aug_p=0.3, seed=9)
    gpu = RareAugmenter("contextual", model_path=models["bert"], aug_p=0.3, device="cuda", batch_size=64, seed=9)
    texts = TEXTS * 20
    outputs = gpu.augment(texts, n=2, protect={"dog"})
    assert_clean(texts, outputs)
    assert next(gpu._masked_lm.model.parameters()).is_cuda
    assert len(outputs) == len(texts) and cpu.augment(TEXTS, n=1)
