"""Plots of class and token frequencies (:func:`plot_frequencies`); they need ``pip install rarekit[plot]``."""
from __future__ import annotations

import math

import numpy as np

from rarekit._files import atomic_output
from rarekit.counting import as_counts, is_real_number


MAX_NAMED = 50  # class names label the axis up to this many classes; ranks beyond


def figure_class():
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
    Figure = figure_class()
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
