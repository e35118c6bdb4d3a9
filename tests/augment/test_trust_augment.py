"""Issue 20's regressions in augmentation, on the tiny local masked LMs of tests/masked_lm_models.py (whose
vocabularies lack most words of these texts): the nlpaug factory keeps what its model does not know."""
import math
import random
import re

import pytest
import torch

naw = pytest.importorskip("nlpaug.augmenter.word")
pytest.importorskip("transformers")

from masked_lm_models import BERT_SPECIAL, ROBERTA_SPECIAL, build_masked_lms, one_torch_thread  # noqa: E402,F401
from rarekit.augment import RareAugmenter, contextual_word_embs_aug  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ("bert", "distilbert", "roberta")
WORD = re.compile(r"\w+(?:['’]\w+)*")
UNKNOWN_WORD_TEXTS = ["the zorblax 🙂 fox jumps over the lazy dog", "a café in Tōkyō sells naïve crêpes",
                      "Zorblax, the QUICK 🦊 fox… jumped over [MASK] and <mask>!"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_masked_lms(tmp_path_factory.mktemp("trust-masked-lms"))


def seeded(augmenter, data, seed):
    random.seed(seed)
    torch.manual_seed(seed)
    return augmenter.augment(data)


def nlpaug_count(words: int, aug_p: float, aug_min: int = 1, aug_max: int | None = 10) -> int:
    """nlpaug's documented number of changes (Augmenter._generate_aug_cnt), over the text's words."""
    count = math.ceil(aug_p * words)
    if aug_min and count < aug_min:
        return aug_min
    return aug_max if aug_max and count > aug_max else count


def words_and_gaps(text):
    """The words of ``text`` and the text between them (spaces, punctuation, emoji)."""
    return WORD.findall(text), WORD.split(text)


def no_new_special_token(model, text, output):
    special = ROBERTA_SPECIAL if model == "roberta" else BERT_SPECIAL
    return all(output.count(token) == text.count(token) for token in [*special, "##"])


# --- item 9: the nlpaug factory keeps the words its model does not know ---------------------------

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("aug_p", [0.3, 1.0])
def test_substitute_keeps_unknown_words_and_counts_real_words(models, model, aug_p):
    augmenter = contextual_word_embs_aug(models[model], action="substitute", aug_p=aug_p)
    for seed in range(4):
        for text, output in zip(UNKNOWN_WORD_TEXTS, seeded(augmenter, UNKNOWN_WORD_TEXTS, seed)):
            assert no_new_special_token(model, text, output), (text, output)
            (words, gaps), (new_words, new_gaps) = words_and_gaps(text), words_and_gaps(output)
            assert new_gaps == gaps, (text, output)  # emoji, punctuation, special tokens and spacing as they were
            # words with a letter, outside special tokens written in the text, can be substituted
            substitutable = [word for word in words if any(c.isalpha() for c in word) and word not in ("MASK", "mask")]
            changed = [old for old, new in zip(words, new_words) if old != new]
            assert len(changed) == min(nlpaug_count(len(words), aug_p), len(substitutable)), (text, output)


@pytest.mark.parametrize("model", MODELS)
def test_insert_keeps_unknown_words(models, model):
    augmenter = contextual_word_embs_aug(models[model], action="insert", aug_p=0.3)
    for seed in range(4):
        for text, output in zip(UNKNOWN_WORD_TEXTS, seeded(augmenter, UNKNOWN_WORD_TEXTS, seed)):
            assert no_new_special_token(model, text, output), (text, output)
            words, new_words = WORD.findall(text), WORD.findall(output)
            assert len(new_words) == len(words) + nlpaug_count(len(words), 0.3), (text, output)
            remaining = iter(new_words)  # the text's words in order, with the new ones between them
            assert all(word in remaining for word in words), (text, output)
            assert re.sub(r"[\w\s]", "", output) == re.sub(r"[\w\s]", "", text), (text, output)


@pytest.mark.parametrize("model", MODELS)
def test_nlpaug_substitute_stopwords(models, model):
    """Stopwords the model's vocabulary lacks (given when the augmenter is built) come back as they were;
    then nlpaug's own test_substitute_stopwords (test/augmenter/word/test_context_word_embs.py): stopwords
    set on the augmenter after it is built ("brown" is not in the vocabulary), checked with the
    augmenter's tokenizer over 20 draws."""
    for stopwords in (["zorblax", "fox"], ["🙂 fox", "zorblax"]):  # unknown words and a phrase, given when built
        protected = contextual_word_embs_aug(models[model], action="substitute", aug_p=1.0, stopwords=stopwords)
        for output in seeded(protected, UNKNOWN_WORD_TEXTS[:1] * 8, 0):  # aug_p=1: every other word changes
            assert no_new_special_token(model, UNKNOWN_WORD_TEXTS[0], output), output
            (words, gaps), (new_words, new_gaps) = words_and_gaps(UNKNOWN_WORD_TEXTS[0]), words_and_gaps(output)
            assert new_gaps == gaps and new_words[1:3] == ["zorblax", "fox"], output
            assert all(old != new for i, (old, new) in enumerate(zip(words, new_words)) if i not in (1, 2)), output
    text = "The quick brown fox jumps over the lazy dog"
    augmenter = contextual_word_embs_aug(models[model], action="substitute")
    stopwords = [t.lower() for t in text.split(" ")[:3]]
    augmenter.stopwords = stopwords
    for _ in range(20):
        augmented_cnt = 0
        augmented_text = augmenter.augment(text)[0]
        for token, augmented_token in zip(augmenter.tokenizer(text), augmenter.tokenizer(augmented_text)):
            if token.lower() in stopwords and len(token) > 3:
                assert token.lower() == augmented_token, augmented_text
            else:
                augmented_cnt += 1
        assert augmented_cnt > 0
        assert no_new_special_token(model, text, augmented_text), augmented_text


@pytest.mark.parametrize("model", MODELS)
def test_seeded_output_is_reproducible(models, model):
    augmenter = contextual_word_embs_aug(models[model], aug_p=0.5)
    first, again = seeded(augmenter, UNKNOWN_WORD_TEXTS, 7), seeded(augmenter, UNKNOWN_WORD_TEXTS, 7)
    assert first == again and first != UNKNOWN_WORD_TEXTS


# --- item 15: the length of a text RareAugmenter augments is bounded ------------------------------

LONG_WORDS = "the quick cat jumped over the lazy dog and the big red bird flew over the old house".split()


def long_text(characters: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(LONG_WORDS) for _ in range(characters // 4))[:characters]


@pytest.mark.parametrize("method", ["random_swap", "random_delete", "contextual"])
def test_only_the_head_of_a_long_text_is_augmented(models, method):
    text = long_text(400)
    cut = text.rfind(" ", 0, 61)  # the last whitespace within the first 60 characters
    kwargs = {"model_path": str(models["bert"])} if method == "contextual" else {}
    augmenter = RareAugmenter(method, seed=1, max_chars=60, aug_p=0.5, **kwargs)
    variants = augmenter.augment([text], n=3)[0]
    assert len(set(variants)) == 3
    for variant in variants:
        head = variant[:len(variant) - (len(text) - cut)]
        assert variant == head + text[cut:] and head != text[:cut]
        assert len(WORD.findall(head)) < len(WORD.findall(text[:cut])) if method == "random_delete" else \
            len(WORD.findall(head)) == len(WORD.findall(text[:cut]))  # the head's words only


def test_a_protected_phrase_across_the_cut_stays_whole():
    text = "a b c d e f g h the lazy dog ran over the big red house and the old tree"
    limit = text.index("lazy dog") + 6  # the cut would fall between "lazy" and "dog"
    augmenter = RareAugmenter("random_swap", seed=2, max_chars=limit, aug_p=1.0)
    for variant in augmenter.augment([text], n=5, protect={"lazy dog"})[0]:
        assert variant.endswith(text[text.index("lazy dog"):]) and variant != text


def test_a_huge_text_takes_bounded_time():
    import time
    text = long_text(1_000_000)
    augmenter = RareAugmenter("random_swap", seed=3)
    start = time.perf_counter()
    variants = augmenter.augment([text], n=2)[0]
    assert time.perf_counter() - start < 5  # it took 39 s (single process, 2 cores shared) before the bound
    from rarekit.augment.augmenter import MAX_CHARS
    assert all(variant.endswith(text[MAX_CHARS:]) and variant != text for variant in variants)


def test_max_chars_must_be_positive():
    for bad in (0, -1, 2.5, "10"):
        with pytest.raises(ValueError, match="max_chars"):
            RareAugmenter("random_swap", max_chars=bad)


# --- item 21: augment_minority's progress bar only on a terminal ---------------------------------

def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    import sys
    from rarekit.augment import augment_minority
    texts, labels = [long_text(80, seed) for seed in range(6)], [0, 0, 0, 0, 1, 1]
    augment_minority(texts, labels, augmenter="random_swap", seed=0)  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    augment_minority(texts, labels, augmenter="random_swap", seed=0)
    assert "augmenting" in capsys.readouterr().err
    augment_minority(texts, labels, augmenter="random_swap", seed=0, progress=False)
    assert capsys.readouterr().err == ""


# --- item 14: augment_minority refuses a sampling_strategy too large for memory ------------------

@pytest.mark.parametrize("requested", [10**13, 2**64])
def test_augment_minority_refuses_a_huge_sampling_strategy(requested):
    from rarekit.augment import augment_minority
    with pytest.raises(ValueError, match=rf"sampling_strategy asks for {requested:,} samples of class 1"):
        augment_minority(["a b c"] * 3 + ["d e"], [0, 0, 0, 1], {0: 3, 1: requested}, "random_swap", progress=False)


class _WithoutOffsets:
    """A tokenizer without offset mappings, as transformers' Python ("slow") tokenizers are: asking for them
    raises NotImplementedError; plain encoding works."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, **options):
        if options.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return self.tokenizer(text, **options)


@pytest.mark.parametrize("model", MODELS)
def test_a_tokenizer_without_offsets_finds_the_same_head(models, model):
    """The words that fit the model's length are the same with and without offset mappings (a slow tokenizer
    took every word of a long text, and the masks past the model's length stayed unfilled)."""
    import types

    from rarekit.augment.contextual import head_words
    from rarekit.augment.masked_lm import MaskedLM

    lm = MaskedLM(str(models[model]))
    slow = types.SimpleNamespace(tokenizer=_WithoutOffsets(lm.tokenizer))
    text = " ".join(["the quick fox jumped over the lazy dog, and zorblax ran!"] * 40)
    for max_tokens in (1, 7, 50, 128, 10_000):
        fast_words = [match.span() for match in head_words(lm, text, max_tokens)]
        slow_words = [match.span() for match in head_words(slow, text, max_tokens)]
        assert slow_words == fast_words, max_tokens
    assert 0 < len(head_words(lm, text, 50)) < len(WORD.findall(text))  # the head is a real cut
