"""The text side of ``rarekit demo``: sparse TF-IDF features and augmentation within a budget.

Features are scikit-learn's ``TfidfVectorizer`` rows, kept as a scipy CSR matrix: the demo's model
reads them through an ``EmbeddingBag`` (see :class:`rarekit.study.demo.DemoModel`), so no dense
rows × vocabulary matrix is ever built. Augmentation follows ``RandomOverSampler("auto")`` (each class
up to the majority count) but within an :class:`AugmentationBudget`.
"""
from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass

import numpy as np

from rarekit.study.datasets import Split

WORD = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern
SAMPLE_TEXTS = 32  # texts augmented once to time the augmenter before the full run


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
    Raises :class:`OverBudget` when timing :data:`SAMPLE_TEXTS` texts projects past ``budget.seconds``."""
    from rarekit.augment import augment_minority

    train_counts = np.bincount(split.y_train, minlength=len(split.class_names))
    gains = planned_gains(train_counts, budget)
    if gains.sum() == 0:
        return list(split.x_train), split.y_train, gains
    sample = list(split.x_train[:SAMPLE_TEXTS])
    start = time.perf_counter()
    augmenter.augment(sample, n=1)
    projected = (time.perf_counter() - start) / len(sample) * gains.sum()
    if projected > budget.seconds:
        raise OverBudget(f"generating {int(gains.sum()):,} texts would take ~{projected:.0f} s, over the "
                         f"augmentation time budget of {budget.seconds:g} s (lower --augment-max)")
    targets = {int(label): int(train_counts[label] + gain) for label, gain in enumerate(gains) if gain}
    texts, labels = augment_minority(split.x_train, split.y_train, targets, augmenter=augmenter, seed=seed,
                                     progress=progress)
    return list(texts), np.asarray(labels, dtype=np.int64), gains


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
    original = split.x_train[int(np.flatnonzero(split.y_train == label)[0])]
    made = augmenter.augment([original], n=variants)[0]
    return {"class": split.class_names[label], "training_samples": int(train_counts[label]),
            "test_samples": int(test_counts[label]), "original": original, "variants": made,
            "marked_variants": [marked_changes(original, variant) for variant in made]}


__all__ = ["AugmentationBudget", "OverBudget", "augment_within_budget", "augmentation_example", "marked_changes",
           "planned_gains", "tfidf_features"]
