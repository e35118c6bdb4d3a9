"""The text side of ``rarekit demo``: sparse TF-IDF features and augmentation within a budget.

Features are scikit-learn's ``TfidfVectorizer`` rows, kept as a scipy CSR matrix: the demo's model
reads them through an ``EmbeddingBag`` (see :class:`rarekit.study.demo.DemoModel`), so no dense
rows × vocabulary matrix is ever built. Augmentation follows ``RandomOverSampler("auto")`` (each class
up to the majority count) but within an :class:`AugmentationBudget`.
"""
from __future__ import annotations

import difflib
import math
import re
import time
from dataclasses import dataclass

import numpy as np

from rarekit.study.datasets import Split

WORD = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern
SAMPLE_TEXTS = 32  # at most this many texts are augmented once to time the augmenter before the full run,
SAMPLE_CHARS = 2_000  # each cut to this many characters (one timed call stays short whatever the texts),
SAMPLE_BATCH = 8  # this many a call (the masked-LM augmenters batch texts),
SAMPLE_SHARE = 0.1  # until the timing has used this share of the time budget
EXAMPLE_CHARS = 1_000  # the report's example text is cut to this many characters (at a word's end), then augmented


@dataclass(frozen=True)
class AugmentationBudget:
    """At most ``per_text`` generated texts per original text of a class and ``total`` over all
    classes (each class's share scaled down alike when the classes ask for more), within ``seconds``."""

    per_text: int = 4
    total: int = 20_000
    seconds: float = float("inf")


class OverBudget(Exception):
    """A method that cannot finish within its budget; the message says why."""


def tfidf_features(train_texts: list[str], test_texts: list[str], max_features: int | None, name: str = "data"):
    """``(vectorizer, X_train, X_test)``: sublinear TF-IDF, L2-normalized rows, float32 CSR matrices,
    over the ``max_features`` most frequent words of the training texts (of the data set ``name``)."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as error:
        raise ImportError("the text demo needs scikit-learn: pip install rarekit[demo]") from error
    vectorizer = TfidfVectorizer(sublinear_tf=True, max_features=max_features, dtype=np.float32)
    if not any(WORD.search(text) for text in train_texts):
        raise ValueError(f"{name}: no training text holds a word of two or more letters or digits, and TF-IDF "
                         f"features are such words (scikit-learn's token pattern {WORD.pattern}); "
                         f"e.g. {train_texts[0][:80]!r}")
    return vectorizer, vectorizer.fit_transform(train_texts), vectorizer.transform(test_texts)


def planned_gains(train_counts: np.ndarray, budget: AugmentationBudget) -> np.ndarray:
    """Texts to generate per class: up to the majority count (``RandomOverSampler("auto")``), at most
    ``budget.per_text`` per original, then all scaled by ``budget.total / sum`` if the sum is larger."""
    gains = np.minimum(train_counts.max() - train_counts, train_counts * budget.per_text).astype(np.int64)
    if gains.sum() > budget.total:
        gains = np.floor(gains * (budget.total / gains.sum())).astype(np.int64)
    return gains


def augment_within_budget(split: Split, augmenter, budget: AugmentationBudget, seed: int,
                          progress: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(texts, labels, generated per class)``: the training texts followed by the planned variants.
    Raises :class:`OverBudget` when :func:`projected_seconds` exceeds ``budget.seconds``."""
    from rarekit.augment import augment_minority

    train_counts = np.bincount(split.y_train, minlength=len(split.class_names))
    gains = planned_gains(train_counts, budget)
    if gains.sum() == 0:
        return list(split.x_train), split.y_train, gains
    if math.isfinite(budget.seconds):
        projected, characters, sampled = projected_seconds(split, gains, augmenter, budget.seconds, seed)
        if projected > budget.seconds:
            raise OverBudget(f"generating {int(gains.sum()):,} texts from {characters:,.0f} characters would take "
                             f"~{projected:.0f} s (timed on {sampled} sample texts), over the augmentation time budget "
                             f"of {budget.seconds:g} s (lower --augment-max or --augment-per-text)")
    targets = {int(label): int(train_counts[label] + gain) for label, gain in enumerate(gains) if gain}
    texts, labels = augment_minority(split.x_train, split.y_train, targets, augmenter=augmenter, seed=seed,
                                     progress=progress)
    return list(texts), np.asarray(labels, dtype=np.int64), gains


def projected_seconds(split: Split, gains: np.ndarray, augmenter, budget_seconds: float,
                      seed: int) -> tuple[float, float, int]:
    """``(seconds, characters, texts timed)``: the time to generate ``gains[c]`` variants of the texts of
    each class c, as the time per character of variants of up to :data:`SAMPLE_TEXTS` texts of those
    classes, each cut to :data:`SAMPLE_CHARS` characters, times the characters the variants are made
    from (Σ_c gains[c] · the mean length of c's texts, each counted up to the ``max_chars`` that the
    augmenter changes): a long text counts at its length, and no timed call is longer than a cut
    text. The timing stops once it has used :data:`SAMPLE_SHARE` of ``budget_seconds``."""
    lengths = np.array([min(len(text), augmenter.max_chars) for text in split.x_train], dtype=np.float64)
    rows = np.bincount(split.y_train, minlength=len(gains))
    mean_length = np.bincount(split.y_train, lengths, len(gains)) / np.maximum(rows, 1)
    characters = float(gains @ mean_length)
    gaining = np.flatnonzero(gains[split.y_train] > 0)
    sample = np.random.default_rng(seed).permutation(gaining)[:SAMPLE_TEXTS]
    elapsed, timed_characters, timed = 0.0, 0, 0
    for start in range(0, len(sample), SAMPLE_BATCH):
        texts = [split.x_train[index][:SAMPLE_CHARS] for index in sample[start:start + SAMPLE_BATCH]]
        began = time.perf_counter()
        augmenter.augment(texts, n=1)
        elapsed += time.perf_counter() - began
        timed_characters += sum(len(text) for text in texts)
        timed += len(texts)
        if elapsed > SAMPLE_SHARE * budget_seconds:
            break
    return elapsed / max(timed_characters, 1) * characters, characters, timed


def marked_changes(original: str, variant: str) -> str:
    """``variant`` with the words that differ from ``original`` in **bold**: position by position when
    both have as many words (swaps, substitutions), else along a word-level ``difflib`` alignment, with
    deleted words ~~struck~~."""
    before, after = original.split(), variant.split()
    if len(before) == len(after):
        return " ".join(new if new == old else f"**{new}**" for old, new in zip(before, after))
    marked = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            marked += after[j1:j2]
        else:
            marked += [f"~~{word}~~" for word in before[i1:i2] if tag == "delete"]
            marked += [f"**{word}**" for word in after[j1:j2]]
    return " ".join(marked)


def augmentation_example(split: Split, augmenter, variants: int = 2) -> dict:
    """A training text of the rarest class that has test samples, and ``variants`` of it with the
    changed words marked, for the report."""
    train_counts = np.bincount(split.y_train, minlength=len(split.class_names))
    test_counts = np.bincount(split.y_test, minlength=len(split.class_names))
    candidates = np.flatnonzero((train_counts > 0) & (test_counts > 0))
    if candidates.size == 0:
        candidates = np.flatnonzero(train_counts > 0)
    label = int(candidates[np.argmin(train_counts[candidates])])
    text = split.x_train[int(np.flatnonzero(split.y_train == label)[0])]
    original = shortened(text, EXAMPLE_CHARS, ellipsis="")  # augmenting it stays cheap
    made = augmenter.augment([original], n=variants)[0]
    return {"class": split.class_names[label], "training_samples": int(train_counts[label]),
            "test_samples": int(test_counts[label]), "original": original, "original_characters": len(text),
            "variants": made, "marked_variants": [marked_changes(original, variant) for variant in made]}


def shortened(text: str, limit: int, ellipsis: str = " …") -> str:
    """``text`` if it has at most ``limit`` characters, else its longest start of whole words within
    ``limit`` characters (its first ``limit`` characters when the first word is longer), then ``ellipsis``."""
    if len(text) <= limit:
        return text
    words = re.match(rf"(?s)(.{{0,{limit}}})\s", text)  # the longest start followed by a space
    kept = words.group(1).rstrip() if words and words.group(1).strip() else text[:limit]
    return kept + ellipsis


__all__ = ["AugmentationBudget", "OverBudget", "augment_within_budget", "augmentation_example", "marked_changes",
           "planned_gains", "shortened", "tfidf_features"]
