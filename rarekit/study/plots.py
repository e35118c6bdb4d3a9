"""The study's per-class recall chart (:func:`plot_class_recall`)."""
from __future__ import annotations

import textwrap

import numpy as np

from rarekit._files import atomic_output
from rarekit.plots import figure_class
from rarekit.study.text import shortened

MAX_RECALL_CLASSES = 60  # the recall plot shows every class up to this many; beyond, the two ends
MAX_NAME_CHARS = 40  # class names are cut to this many characters under the bars
LABEL_GAP = 12  # pixels at least between neighbouring horizontal labels (about two characters)
WRAP_CHARS = 16  # horizontal labels wrap names at this many characters


def label_classes(figure, axes, positions, names: list[str], train_counts) -> None:
    """Labels the bars with each class's name and training count: horizontally, the name wrapped at
    :data:`WRAP_CHARS` characters above "n train=…", where neighbouring labels keep :data:`LABEL_GAP`
    pixels apart once drawn; else on one vertical line each."""
    axes.set_xticks(positions, [f"{textwrap.fill(name, WRAP_CHARS)}\nn train={count}"
                                for name, count in zip(names, train_counts)], fontsize=7)
    figure.draw_without_rendering()  # lays the figure out, so that the labels' extents are the drawn ones
    boxes = [label.get_window_extent() for label in axes.get_xticklabels()]
    if any(left.x1 + LABEL_GAP > right.x0 for left, right in zip(boxes, boxes[1:])):
        axes.set_xticks(positions, [f"{name} (n train={count})" for name, count in zip(names, train_counts)],
                        rotation=90, fontsize=7)


def plot_class_recall(recalls: dict, train_counts, names, path, title: str = ""):
    """Saves a bar chart of each method's per-class recall (``recalls``: method -> one recall per class,
    ``None`` for a class without test samples, drawn as no bar) to ``path``. Classes are ordered by
    training count, labelled with the name and "n train=…" (see :func:`label_classes`); past
    :data:`MAX_RECALL_CLASSES` classes only the most frequent and the rarest half of that many are
    drawn, so the figure stays bounded. Returns the ``Figure``."""
    Figure = figure_class()
    train_counts = np.asarray(train_counts)
    order = np.argsort(-train_counts, kind="stable")
    if len(order) > MAX_RECALL_CLASSES:
        order = np.concatenate([order[:MAX_RECALL_CLASSES // 2], order[-MAX_RECALL_CLASSES // 2:]])
        title += f" (the {MAX_RECALL_CLASSES // 2} most frequent and {MAX_RECALL_CLASSES // 2} rarest of {len(names):,} classes)"
    positions = np.arange(len(order))
    width = 0.8 / max(len(recalls), 1)
    figure = Figure(figsize=(max(8.0, len(order) * 0.3), 5.0), layout="constrained")
    axes = figure.subplots()
    untested = np.ones(len(order), dtype=bool)
    for index, (method, per_class) in enumerate(recalls.items()):
        heights = np.array([np.nan if per_class[c] is None else per_class[c] for c in order], dtype=float)
        untested &= np.isnan(heights)
        axes.bar(positions + index * width, heights, width, label=method)
    centers = positions + 0.4 - width / 2  # of each class's group of bars
    for center in centers[untested] if recalls else ():
        axes.text(center, 0.02, "n/a (no test samples)", rotation=90, ha="center", va="bottom", fontsize=7,
                  color="0.4")
    axes.set(ylabel="test recall", xlim=(centers[0] - 0.6, centers[-1] + 0.6), ylim=(0, 1.05),
             title=f"Per-class recall by method: {title}".rstrip(": "))
    if recalls:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="methods")
    label_classes(figure, axes, centers, [shortened(str(names[c]), MAX_NAME_CHARS) for c in order],
                  train_counts[order])  # last: the layout it measures is the final one
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110)
    return figure
