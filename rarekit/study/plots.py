"""The study's per-class recall chart (:func:`plot_class_recall`)."""
from __future__ import annotations

import numpy as np

from rarekit._files import atomic_output
from rarekit.plots import figure_class

MAX_RECALL_CLASSES = 60  # the recall plot shows every class up to this many; beyond, the two ends


def plot_class_recall(recalls: dict, train_counts, names, path, title: str = ""):
    """Saves a bar chart of each method's per-class recall (``recalls``: method -> one recall per class,
    ``None`` for a class without test samples, drawn as no bar) to ``path``. Classes are ordered by
    training count, labelled "name (n train=…)"; past :data:`MAX_RECALL_CLASSES` classes only the
    most frequent and the rarest half of that many are drawn, so the figure stays bounded.
    Returns the ``Figure``."""
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
    for position in positions[untested] if recalls else ():
        axes.text(position + 0.4 - width / 2, 0.02, "n/a (no test samples)", rotation=90, ha="center", va="bottom",
                  fontsize=7, color="0.4")
    axes.set_xticks(positions + 0.4 - width / 2, [f"{names[c]} (n train={train_counts[c]})" for c in order],
                    rotation=90 if len(order) > 12 else 0, fontsize=7)
    axes.set(ylabel="test recall", ylim=(0, 1.05), title=f"Per-class recall by method: {title}".rstrip(": "))
    if recalls:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="methods")
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110)
    return figure
