"""Plots of class and token frequencies: :func:`plot_frequencies` (needs ``pip install rarekit[plot]``)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rarekit.counting import as_counts, is_real_number


def plot_frequencies(counts, path, rare: float | None = None):
    """Saves a log-log rank-frequency (Zipf) plot of the seen ids of ``counts`` to ``path``.

    Sorted by count, the ``r``-th most frequent id of natural text has a count close to ``C / r^s``
    with ``s ≈ 1`` (Zipf 1949, "Human Behavior and the Principle of Least Effort"): a straight line of
    slope ``-s`` here. ``rare``, a count threshold, marks the rare tail, the seen ids counted at most
    ``rare`` times: a dashed line at that count, the tail's ranks shaded, and their number and share of
    all tokens in the legend. The image format follows the suffix of ``path`` (``.png``, ``.svg``, ...).

    Returns the matplotlib ``Figure``.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("rarekit.plot_frequencies needs matplotlib: pip install rarekit[plot]") from error
    counts = as_counts(counts)
    if rare is not None and (not is_real_number(rare) or not math.isfinite(rare) or rare <= 0):
        raise ValueError(f"rare must be a positive count threshold or None, got {rare!r}")
    frequencies = np.sort(counts[counts > 0].double().cpu().numpy())[::-1]
    if frequencies.size == 0:
        raise ValueError(f"counts has no seen id to plot (all {counts.numel()} counts are 0)")
    ranks = np.arange(1, frequencies.size + 1)

    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.subplots()
    axes.loglog(ranks, frequencies, marker=".", markersize=3, linewidth=1, label=f"{frequencies.size:,} seen ids")
    if rare is not None:
        tail = frequencies <= rare
        share = frequencies[tail].sum() / frequencies.sum()
        axes.axhline(rare, color="C3", linestyle="--",
                     label=f"rare: count ≤ {rare:g} ({int(tail.sum()):,} ids, {share:.2%} of tokens)")
        if tail.any():
            axes.axvspan(ranks[tail][0], ranks[-1], color="C3", alpha=0.1)
    axes.set(xlabel="rank", ylabel="count", title="Rank-frequency (Zipf) plot")
    axes.legend()
    figure.savefig(Path(path))
    return figure
