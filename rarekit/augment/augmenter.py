"""Augmented variants of texts for rare classes and rare tokens: :class:`RareAugmenter`,
:func:`augment_minority`, :func:`augment_rare_tokens`.

Duplicating the samples of a rare class teaches a model little; variants put its words, and rare
tokens, in new contexts. The methods (``RareAugmenter(method=...)``):

==================  ===========================================================================
``"contextual"``    a masked language model substitutes (or inserts) words: rarekit's batched
                    implementation on transformers 4.x or 5.x (bert, distilbert, roberta, any local
                    folder; see :mod:`rarekit.augment.nlpaug_compat` for why not nlpaug's)
``"synonym"``       WordNet synonyms (nlpaug ``SynonymAug``; needs nltk and its WordNet data)
``"random_swap"``   swaps neighbouring words (nlpaug ``RandomWordAug(action="swap")``)
``"random_delete"`` deletes words (nlpaug ``RandomWordAug(action="delete")``)
``"spelling"``      common misspellings (nlpaug ``SpellingAug``, dictionary shipped with nlpaug)
``"keyboard"``      keyboard-distance typos (nlpaug ``KeyboardAug``)
``"ocr"``           OCR confusions such as ``0``/``O`` (nlpaug ``OcrAug``)
an nlpaug augmenter any ``nlpaug`` text augmenter, used as it is
==================  ===========================================================================

Only ``"contextual"`` needs a model, and only ``"synonym"`` data beyond the packages; nothing is ever
downloaded during a run except a model named by hub id. Needs ``pip install rarekit[augment]`` (nlpaug
and transformers), imported on first use.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
import random
import re
import sys

import numpy as np
import torch

from rarekit.augment.contextual import (ACTIONS, SPECIAL_TOKENS, Edit, apply_plans, edit_options, head_words,
                                        literal_spans)
from rarekit.augment.masked_lm import MaskedLM, as_device, check_model_options, import_optional
from rarekit.augment.nlpaug_compat import contextual_word_embs_aug, sort_spelling_dictionary
from rarekit.augment.protection import (NLPAUG_TOKEN_RE, PROTECTION_CACHE, Protection, comparison_key,
                                        protection_for, stopwords_for)
from rarekit.counting import is_integer, is_real_number

__all__ = ["RareAugmenter", "contextual_word_embs_aug"]

METHODS = ("contextual", "synonym", "random_swap", "random_delete", "spelling", "keyboard", "ocr")
MAX_ROUNDS = 5  # generation rounds per augment() call: the first, then retries of missing or rejected variants
MAX_WORDS = 10  # words changed per variant at most (nlpaug's aug_max)
MAX_CHARS = 10_000  # characters of a text augmented at most (the head; the rest is kept as it is)
LAST_SPACE_RE = re.compile(r"\s\S*\Z")  # the last whitespace of a string
FRAGMENT = "##"  # a WordPiece continuation such as "##ing"
WORDNET_DATA = (("corpora/wordnet",), ("corpora/omw-1.4",),
                ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"))
WORDNET_INSTALL = ("pip install nltk\n    python -m nltk.downloader wordnet omw-1.4 averaged_perceptron_tagger_eng\n"
                   "(on a machine without network, copy an nltk_data folder and set NLTK_DATA to it)")


class RareAugmenter:
    """Makes augmented variants of texts, batched and reproducible.

    Args:
        method: one of :data:`METHODS` (see the module docstring) or an nlpaug augmenter instance.
        model_path: the masked language model of ``"contextual"``: a local folder (nothing is
            downloaded) or a hub name.
        action: ``"substitute"`` replaces words, ``"insert"`` inserts new ones (``"contextual"`` only).
        aug_p: the share of words changed per variant (at least 1, at most :data:`MAX_WORDS`).
        device: where the masked language model runs; ``"cuda"`` batches its inference on the GPU;
            ``None`` takes ``"cuda"`` when available.
        batch_size: texts per forward pass of the masked language model.
        top_k: contextual words are drawn among the ``top_k`` most likely whole words.
        seed: makes the variants reproducible: two augmenters with one seed give the same variants for
            the same calls. The global ``random``, numpy and torch generators, which nlpaug draws from,
            are seeded for each call and restored after it (so not thread-safe).
        max_chars: only the head of a longer text is augmented: its first ``max_chars`` characters, cut
            at the last whitespace within them (so no word, protected phrase or special token is split;
            inside a word only when they hold no whitespace). The rest is appended to each variant as
            it is, and ``aug_p`` counts the words of the head. This bounds the time a text takes,
            whatever its length.

    :meth:`augment` guarantees, for every method:

    - the words of ``protect`` are never changed (nlpaug's ``stopwords``, and a check of each variant);
    - no special token (``[SEP]``, ``[UNK]``, ``<s>``, ``<mask>``, ... and the model's own) and no ``##``
      word-piece fragment appears in a variant unless the text had it (then it is kept as it is,
      like a protected word). ``"contextual"`` draws whole
      words only and changes nothing else of the text, so words its model does not know stay as they
      are; rejected variants are drawn again;
    - the variants of a text differ from each other and from the text (compared on words and
      punctuation) wherever the method can manage it within :data:`MAX_ROUNDS` rounds of draws. It
      cannot for a text with nothing to change: a single word for ``"random_swap"`` or
      ``"random_delete"``, no word in the spelling dictionary, every word protected, an empty text,
      or fewer distinct variants than ``n``. Such a text gets repeats of its variants, or copies of
      itself, so that every text always has exactly ``n``.

    ``"contextual"`` masks the chosen words of a variant together and fills every mask of a batch in
    one forward pass (nlpaug fills one position per pass), each drawn from the model's probabilities
    among the ``top_k`` most likely whole words, never the word it replaces. Only the head of a text
    longer than the model's maximum length is changed.

    A user-given nlpaug augmenter is used as it is: ``protect`` and the special-token rule are then
    enforced only by rejecting variants, and its own outputs decide what can be reached.
    """

    def __init__(self, method="contextual", *, model_path: str = "bert-base-uncased", action: str = "substitute",
                 aug_p: float = 0.15, device="cpu", batch_size: int = 32, top_k: int | None = 100,
                 seed: int | None = None, max_chars: int = MAX_CHARS):
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"method must be one of {METHODS} or an nlpaug augmenter, got {method!r}")
        elif not _is_nlpaug_augmenter(method):
            raise TypeError(f"method must be one of {METHODS} or an nlpaug augmenter, got {type(method).__name__}")
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        if not is_real_number(aug_p) or not 0 < aug_p <= 1:
            raise ValueError(f"aug_p must be a number in (0, 1], got {aug_p!r}")
        check_model_options(top_k, batch_size)
        if seed is not None and not is_integer(seed):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        if not is_integer(max_chars) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        self.max_chars = int(max_chars)
        self.method = method
        self.model_path = model_path
        self.action = action
        self.aug_p = float(aug_p)
        self.device = str(as_device(device)) if device is not None else \
            ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        self.top_k = top_k
        self.seed = seed
        self._rng = random.Random(seed)
        self._augmenters: dict[frozenset, object] = {}
        self._masked_lm: MaskedLM | None = None
        special = SPECIAL_TOKENS
        if method == "contextual":
            self._masked_lm = MaskedLM(model_path, device=self.device, top_k=top_k, batch_size=self.batch_size)
            special += self._masked_lm.special_tokens
        elif isinstance(method, str):
            self._nlpaug_augmenter(frozenset())  # fail now on a missing package or missing WordNet data
        self._forbidden = tuple(dict.fromkeys(special + (FRAGMENT,)))

    def __repr__(self) -> str:
        method = self.method if isinstance(self.method, str) else type(self.method).__name__
        model = f", model_path={self.model_path!r}, action={self.action!r}, device={self.device!r}" \
            if self._masked_lm is not None else ""
        return f"RareAugmenter({method!r}{model}, aug_p={self.aug_p}, seed={self.seed})"

    def augment(self, texts, n: int = 1, protect=None) -> list[list[str]]:
        """``n`` variants of each text of ``texts`` (a sequence of strings): ``result[i]`` lists those of
        ``texts[i]``. ``protect`` is a set of words (or phrases) never changed; a word matches whole
        words of the text, case-sensitively. See the class docstring for what is guaranteed."""
        texts = as_texts(texts)
        if not is_integer(n) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        protect = _as_protect(protect)
        literal = {token for token in self._forbidden if any(token in text for text in texts)}
        protection = protection_for(protect | literal)  # special tokens written in a text stay as they are
        parts = [head_and_tail(text, self.max_chars, protection) for text in texts]
        variants = self._augment_heads([head for head, _ in parts], n, protection)
        return [[variant + tail for variant in found] for found, (_, tail) in zip(variants, parts)]

    def _augment_heads(self, texts: list[str], n: int, protection: Protection) -> list[list[str]]:
        """:meth:`augment` of texts of at most ``max_chars`` characters."""
        variants: list[list[str]] = [[] for _ in texts]
        spare: list[list[str]] = [[] for _ in texts]  # valid, distinct from the text, repeating another variant
        keys = [comparison_key(text) for text in texts]
        seen = [{key} for key in keys]
        for _ in range(MAX_ROUNDS):
            pending = [i for i, text in enumerate(texts) if text.strip() for _ in range(n - len(variants[i]))]
            if not pending:
                break
            outputs = self._generate([texts[i] for i in pending], protection)
            for i, output in zip(pending, outputs):
                if not isinstance(output, str) or not self._acceptable(texts[i], output, protection):
                    continue
                key = comparison_key(output)
                if key not in seen[i]:
                    seen[i].add(key)
                    variants[i].append(output)
                elif key != keys[i]:
                    spare[i].append(output)
        for text, found, extra in zip(texts, variants, spare):
            found += (extra + [text] * n)[:n - len(found)]
        return variants

    # generation

    def _generate(self, texts: list[str], protection: Protection) -> list[str]:
        seed = self._rng.getrandbits(63)
        if self._masked_lm is not None:
            return self._contextual(self._masked_lm, texts, protection, random.Random(seed),
                                    torch.Generator().manual_seed(seed))
        augmenter = self.method if not isinstance(self.method, str) else self._nlpaug_augmenter(protection.phrases)
        on_cuda = "cuda" in str(getattr(augmenter, "device", "")) and torch.cuda.is_available()
        with _seeded_globals(seed, range(torch.cuda.device_count()) if on_cuda else ()):
            outputs = augmenter.augment(list(texts))
        if not isinstance(outputs, list) or len(outputs) != len(texts):
            raise RuntimeError(f"{type(augmenter).__name__}.augment returned "
                               f"{len(outputs) if isinstance(outputs, list) else type(outputs).__name__} outputs "
                               f"for {len(texts)} texts; RareAugmenter needs one text out per text in")
        return outputs

    def _acceptable(self, text: str, output: str, protection: Protection) -> bool:
        """No special token or fragment the text did not have; every protected word as often as in the text."""
        if any(output.count(token) > text.count(token) for token in self._forbidden):
            return False
        return not protection.phrases or protection.counts(output) == protection.counts(text)

    def _nlpaug_augmenter(self, protect: frozenset):
        """The nlpaug augmenter of a built-in method with ``protect`` as its stopwords (cached per set)."""
        if protect not in self._augmenters:
            if len(self._augmenters) >= PROTECTION_CACHE:
                del self._augmenters[next(iter(self._augmenters))]
            self._augmenters[protect] = self._build_nlpaug(stopwords_for(protect))
        return self._augmenters[protect]

    def _build_nlpaug(self, stopwords: set | None):
        purpose = f"RareAugmenter(method={self.method!r})"
        if self.method == "synonym":
            check_wordnet()
        common = {"stopwords": stopwords, "tokenizer": NLPAUG_TOKEN_RE.findall}
        if self.method in ("keyboard", "ocr"):
            nac = import_optional("nlpaug.augmenter.char", purpose)
            make = nac.KeyboardAug if self.method == "keyboard" else nac.OcrAug
            return make(aug_word_p=self.aug_p, **common)
        naw = import_optional("nlpaug.augmenter.word", purpose)
        if self.method == "synonym":
            return naw.SynonymAug(aug_src="wordnet", aug_p=self.aug_p, **common)
        if self.method == "spelling":
            augmenter = naw.SpellingAug(aug_p=self.aug_p, **common)
            sort_spelling_dictionary(augmenter)
            return augmenter
        action = {"random_swap": "swap", "random_delete": "delete"}[self.method]
        return naw.RandomWordAug(action=action, aug_p=self.aug_p, **common)

    # contextual: rarekit's masked-LM augmentation

    def _contextual(self, lm: MaskedLM, texts: list[str], protection: Protection, rng: random.Random,
                    generator: torch.Generator) -> list[str]:
        """Picks the edits of every text, masks them all at once, fills every mask in one batched pass
        (each mask independently), and writes the words into the original text."""
        return apply_plans(lm, texts, [self._plan(lm, text, protection, rng) for text in texts], generator)

    def _plan(self, lm: MaskedLM, text: str, protection: Protection, rng: random.Random) -> list[Edit]:
        """The edits of one variant: ``ceil(aug_p · words)`` (1 to MAX_WORDS) words to substitute, or
        places to insert at, drawn among the words the model sees (with room for the masks), never in a
        protected word or phrase or a special token."""
        words = head_words(lm, text, lm.max_tokens - 2 - MAX_WORDS)
        options = edit_options(words, protection.spans(text) + literal_spans(text, self._forbidden), self.action)
        count = min(MAX_WORDS, max(1, math.ceil(self.aug_p * len(words))))
        return sorted(rng.sample(options, min(count, len(options))))

    def _reseeded(self, seed: int) -> RareAugmenter:
        """This augmenter (sharing its model and nlpaug augmenters) with a fresh generator seeded by ``seed``."""
        clone = copy.copy(self)
        clone.seed = seed
        clone._rng = random.Random(seed)
        return clone


def head_and_tail(text: str, max_chars: int, protection: Protection) -> tuple[str, str]:
    """``text`` as ``(head, tail)``: the head holds at most ``max_chars`` characters and ends before the
    last whitespace within them, or before a protected phrase or special token that would span the cut
    (at ``max_chars`` if there is no whitespace)."""
    if len(text) <= max_chars:
        return text, ""
    last_space = LAST_SPACE_RE.search(text, 0, max_chars + 1)
    cut = last_space.start() if last_space is not None and last_space.start() > 0 else max_chars
    if protection.phrases:
        reach = cut + max(len(phrase) for phrase in protection.phrases)
        cut = min([cut] + [match.start() for match in protection.matches(text[:reach])
                           if match.start() < cut < match.end()])
    return text[:cut], text[cut:]


def _is_nlpaug_augmenter(value) -> bool:
    base = sys.modules.get("nlpaug.base_augmenter")  # an nlpaug augmenter exists only if nlpaug was imported
    return base is not None and isinstance(value, base.Augmenter)


def as_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, got one str (wrap it in a list)")
    try:
        texts = list(texts)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}") from error
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a str, got {type(text).__name__}")
    return texts


def as_words(value, name: str) -> list[str]:
    """``value`` as a list of stripped, non-empty strings; a lone str is refused (it is iterable)."""
    words = as_texts(value, name)
    for word in words:
        if not word.strip():
            raise ValueError(f"{name} must hold non-empty strings, got {word!r}")
    return [word.strip() for word in words]


def _as_protect(protect) -> frozenset:
    return frozenset() if protect is None else frozenset(as_words(protect, "protect"))


@contextlib.contextmanager
def _seeded_globals(seed: int, cuda_devices=()):
    """Seeds Python's ``random``, numpy's and torch's global generators (nlpaug draws from them) and
    restores their states afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def check_wordnet() -> None:
    """Raises unless nltk and the data ``"synonym"`` reads (WordNet, the Open Multilingual Wordnet, the
    POS tagger) are installed. It looks with ``nltk.data.find`` and never downloads: nlpaug would
    download them on the fly, inside a training job."""
    try:
        nltk = importlib.import_module("nltk")
    except ImportError as error:
        raise ImportError(f"RareAugmenter(method='synonym') needs nltk and its WordNet data; install them with\n"
                          f"    {WORDNET_INSTALL}") from error
    missing = []
    for names in WORDNET_DATA:
        for name in names:
            try:
                nltk.data.find(name)
                break
            except LookupError:
                continue
        else:
            missing.append(names[0])
    if missing:
        raise LookupError(f"RareAugmenter(method='synonym') needs nltk data that is not installed: "
                          f"{', '.join(missing)}. rarekit does not download it during a run; install it once with\n"
                          f"    {WORDNET_INSTALL}")
