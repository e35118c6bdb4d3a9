"""Data for the demo: real, offline, shipped inside pip packages, plus the user's own files.

* :func:`digits_long_tailed` — scikit-learn's bundled digits (1,797 8x8 images, 10 classes); the
  training split is made long-tailed with an exponential profile, n_c = n_max · ρ^(-c/(K-1)), as
  CIFAR-10-LT is (Cao et al. 2019, LDAM); the test split stays balanced.
* :func:`chatterbot_topics` — the English part of the ``chatterbot-corpus`` package (BSD licence):
  2,026 dialogues under 21 topic labels, from 1,050 (tech_support) down to 1 (health).
* :func:`load_table` / :func:`load_arrays` — ``.csv``/``.tsv``/``.jsonl`` text files and ``.npz``
  arrays, with clear errors for bad files.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Split:
    """A train/test split; ``x`` is a float array (rows, features) or a list of texts; ``notes`` say
what was left out of the data file and why (for the output and the report)."""

    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    class_names: list[str]
    notes: list[str] = field(default_factory=list)


def split_per_class(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with ``test_fraction`` of each class in the test split (at least one
    test sample per class that has two or more samples)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within
    classes, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    n_test = np.where(sizes >= 2, np.maximum(1, np.round(sizes * test_fraction)), 0).astype(int)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    is_test = rank < np.repeat(n_test, sizes)
    return np.sort(order[~is_test]), np.sort(order[is_test])


def testable_split(labels: np.ndarray, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_per_class` with a quarter of each class tested; refuses data where no class has the
    two rows that a training and a test sample need."""
    train, test = split_per_class(labels, test_fraction=0.25, seed=seed)
    if test.size == 0:
        raise ValueError(f"{name}: each of its {len(np.unique(labels))} classes has a single row, so none can be "
                         "tested: a class needs two rows or more (one to train on, one to test on)")
    return train, test


def long_tail_indices(labels: np.ndarray, imbalance_ratio: float, seed: int) -> np.ndarray:
    """Indices keeping n_c = n_max · ρ^(-c/(K-1)) samples of class c (classes in sorted order)."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exponent = np.arange(len(classes)) / max(len(classes) - 1, 1)
    keep = np.maximum(1, np.round(sizes.min() * imbalance_ratio ** -exponent)).astype(int)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    _, starts = np.unique(labels[order], return_index=True)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    return np.sort(order[rank < np.repeat(keep, sizes)])


def digits_long_tailed(imbalance_ratio: float = 50.0, seed: int = 0) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train, test = split_per_class(y, test_fraction=0.2, seed=seed)
    train = train[long_tail_indices(y[train], imbalance_ratio, seed)]
    return Split(f"digits-LT (imbalance {imbalance_ratio:g}:1)", x[train], y[train], x[test], y[test],
                 [str(digit) for digit in range(10)])


def chatterbot_topics(seed: int = 0) -> Split:
    """Each dialogue (its lines joined) is a text; its file's topic is the label."""
    try:
        import chatterbot_corpus
        import yaml
    except ImportError as error:
        raise ImportError("the text demo needs the corpus: pip install rarekit[demo]") from error
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    texts, topics = [], []
    for path in sorted(folder.glob("*.yml")):
        dialogues = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []
        texts += [" ".join(str(line) for line in dialogue) for dialogue in dialogues]
        topics += [path.stem] * len(dialogues)
    return text_split("chatterbot-corpus topics", texts, topics, seed)


def text_split(name: str, texts: list[str], labels: list, seed: int) -> Split:
    class_names, y = np.unique(np.asarray([str(label) for label in labels]), return_inverse=True)
    if len(class_names) < 2:
        raise ValueError(f"{name}: the labels must hold at least two classes, found {len(class_names)} "
                         f"({class_names.tolist()})")
    train, test = testable_split(y, name, seed)
    return Split(name, [texts[i] for i in train], y[train], [texts[i] for i in test], y[test], class_names.tolist())


def load_table(path: str | Path, text_col: str, label_col: str, seed: int = 0) -> Split:
    """A ``.csv``, ``.tsv`` or ``.jsonl`` file with a text column and a label column."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"--data: no such file: {path}")
    readers = {".csv": lambda: pd.read_csv(path), ".tsv": lambda: pd.read_csv(path, sep="\t"),
               ".jsonl": lambda: pd.read_json(path, lines=True)}
    if path.suffix not in readers:
        raise ValueError(f"--data: expected a .csv, .tsv, .jsonl or .npz file, got {path.name}")
    try:
        table = readers[path.suffix]()
    except (pd.errors.EmptyDataError, ValueError) as error:
        raise ValueError(f"--data: {path.name} is empty or unreadable ({error})") from error
    if table.empty:
        raise ValueError(f"--data: {path.name} has no rows")
    for flag, column in (("--text-col", text_col), ("--label-col", label_col)):
        if column not in table.columns:
            raise ValueError(f"--data: {path.name} has no column {column!r} ({flag}); columns: {list(table.columns)}")
    no_text, no_label = table[text_col].isna(), table[label_col].isna()
    dropped = no_text | no_label
    reasons = [f"{int(rows.sum())} without a {what} in column {column!r}" for rows, what, column in
               ((no_text, "text", text_col), (no_label, "label", label_col)) if rows.any()]
    if dropped.all():
        raise ValueError(f"--data: no row of {path.name} has both a text and a label ({'; '.join(reasons)})")
    notes = [f"{path.name}: {int(dropped.sum())} of {len(table)} rows left out ({'; '.join(reasons)}); the study "
             f"uses the other {int((~dropped).sum())}"] if dropped.any() else []
    table = table[~dropped]
    split = text_split(path.name, table[text_col].astype(str).tolist(), table[label_col].tolist(), seed)
    split.notes += notes
    return split


def load_arrays(path: str | Path, seed: int = 0) -> Split:
    """A ``.npz`` file with a numeric 2-D ``X`` of finite values and labels ``y`` (integers, strings or
    finite numbers); an empty, truncated or non-``.npz`` file is refused with the reason."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--data: no such file: {path}")
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError(f"--data: {path.name} holds a single .npy array, not an .npz archive of X and y "
                             "(save with np.savez(path, X=..., y=...))")
        with arrays:
            missing = {"X", "y"} - set(arrays.files)
            if missing:
                raise ValueError(f"--data: {path.name} must hold arrays X and y; missing {sorted(missing)}")
            x, labels = arrays["X"], arrays["y"]
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"--data: {path.name} is not a readable .npz file (empty or truncated?): {error}") from error
    except ValueError as error:
        if str(error).startswith("--data:"):
            raise
        raise ValueError(f"--data: {path.name} is not a readable .npz file (empty or truncated?): {error}") from error
    if x.dtype.kind not in "biuf":
        raise ValueError(f"--data: X in {path.name} must be numeric, got dtype {x.dtype}")
    if x.ndim != 2 or labels.ndim != 1 or len(x) != len(labels) or len(x) == 0:
        raise ValueError(f"--data: X must be (rows, features) with one label per row; got X {x.shape}, y {labels.shape}")
    if labels.dtype.kind not in "biufUS":
        raise ValueError(f"--data: y in {path.name} must hold integers, strings or numbers, got dtype {labels.dtype}")
    for name, values in (("X", x), ("y", labels)):
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
            raise ValueError(f"--data: {name} in {path.name} holds NaN or infinite values "
                             f"({int((~np.isfinite(values)).sum())} of them; the first in row {row})")
    class_names, y = np.unique(labels.astype(str), return_inverse=True)
    if len(class_names) < 2:
        raise ValueError(f"--data: y in {path.name} must hold at least two classes, found {class_names.tolist()}")
    train, test = testable_split(y, f"--data: {path.name}", seed)
    x = x.astype(np.float32)
    return Split(path.name, x[train], y[train], x[test], y[test], class_names.tolist())


def describe(split: Split) -> dict:
    counts = np.bincount(split.y_train, minlength=len(split.class_names))
    return {"name": split.name, "train": int(len(split.y_train)), "test": int(len(split.y_test)),
            "classes": len(split.class_names), "train_counts": dict(zip(split.class_names, counts.tolist())),
            "imbalance_ratio": float(counts.max() / max(counts[counts > 0].min(), 1)), "notes": split.notes}


__all__ = ["Split", "chatterbot_topics", "describe", "digits_long_tailed", "load_arrays", "load_table"]
