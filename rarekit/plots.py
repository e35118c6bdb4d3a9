"""Plots of class and token frequencies (:func:`plot_frequencies`) and per-class recall
(:func:`plot_class_recall`); they need ``pip install rarekit[plot]``."""
from __future__ import annotations

import math

import numpy as np

from rarekit._files import atomic_output
from rarekit.counting import as_counts, is_real_number


MAX_NAMED = 50  # class names label the axis up to this many classes; ranks beyond
MAX_RECALL_CLASSES = 60  # the recall plot shows every class up to this many; beyond, the two ends


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("rarekit's plots need matplotlib: pip install rarekit[plot]") from error
    return Figure


def plot_frequencies(counts, path, rare: float | None = None, *, names=None, unit: str = "ids",
                     title: str | None = None):
    """Saves a log-log rank-frequency (Zipf) plot of the seen ids of ``counts`` to ``path``.

    Sorted by count, the ``r``-th most frequent id of natural text has a count close to ``C / r^s``
    with ``s ≈ 1`` (Zipf 1949, "Human Behavior and the Principle of Least Effort"): a straight line of
    slope ``-s`` here. ``rare``, a count threshold, marks the rare tail, the seen ids counted at most
    ``rare`` times: a dashed line at that count, the tail's ranks shaded, and their number and share of
    all tokens in the legend. The image format follows the suffix of ``path`` (``.png``, ``.svg``, ...);
    the file is written through a temporary file and a rename.

    ``names`` (one per id, e.g. class names) labels the axis with them, most frequent first, when at
    most :data:`MAX_NAMED` ids are seen; ``unit`` names the ids in the legend and axis ("classes");
    ``title`` replaces the default title.

    Returns the matplotlib ``Figure``.
    """
    Figure = _figure()
    counts = as_counts(counts)
    if rare is not None and (not is_real_number(rare) or not math.isfinite(rare) or rare <= 0):
        raise ValueError(f"rare must be a positive count threshold or None, got {rare!r}")
    if names is not None and len(names) != counts.numel():
        raise ValueError(f"names must have one entry per count ({counts.numel()}), got {len(names)}")
    values = counts.double().cpu().numpy()
    order = np.argsort(-values, kind="stable")
    order = order[values[order] > 0]
    frequencies = values[order]
    if frequencies.size == 0:
        raise ValueError(f"counts has no seen id to plot (all {counts.numel()} counts are 0)")
    ranks = np.arange(1, frequencies.size + 1)

    figure = Figure(figsize=(max(6.4, 0.22 * frequencies.size) if names is not None and
                             frequencies.size <= MAX_NAMED else 6.4, 4.8), layout="constrained")
    axes = figure.subplots()
    label = f"{frequencies.size:,} seen {unit}" if unit == "ids" else f"{frequencies.size:,} {unit}"
    axes.loglog(ranks, frequencies, marker=".", markersize=3, linewidth=1, label=label)
    if names is not None and frequencies.size <= MAX_NAMED:
        axes.set_xscale("linear")
        axes.set_xticks(ranks, [str(names[i]) for i in order], rotation=90, fontsize=7)
        axes.set_xlabel(f"{unit} (most frequent first)")
    else:
        axes.set_xlabel("rank" if unit == "ids" else f"rank of the {unit}")
    if rare is not None:
        tail = frequencies <= rare
        share = frequencies[tail].sum() / frequencies.sum()
        axes.axhline(rare, color="C3", linestyle="--",
                     label=f"rare: count ≤ {rare:g} ({int(tail.sum()):,} {unit}, {share:.2%} of tokens)")
        if tail.any():
            axes.axvspan(ranks[tail][0], ranks[-1], color="C3", alpha=0.1)
    axes.set(ylabel="count", title=title or "Rank-frequency (Zipf) plot")
    axes.legend()
    with atomic_output(path) as temporary:
        figure.savefig(temporary)
    return figure


def plot_class_recall(recalls: dict, train_counts, names, path, title: str = ""):
    """Saves a bar chart of each method's per-class recall (``recalls``: method -> one recall per class,
    ``None`` for a class without test samples, drawn as no bar) to ``path``. Classes are ordered by
    training count, labelled "name (n train=…)"; past :data:`MAX_RECALL_CLASSES` classes only the
    most frequent and the rarest half of that many are drawn, so the figure stays bounded.
    Returns the ``Figure``."""
    Figure = _figure()
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
