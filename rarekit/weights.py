"""Per-class loss weights and margins from class counts: :func:`class_weights`, :func:`ldam_margins`."""
from __future__ import annotations

import math

import torch

from rarekit.counting import as_counts, is_real_number

SCHEMES = ("inverse", "inverse_sqrt", "effective_number", "median_frequency", "log", "uniform")
NORMALIZATIONS = ("mean", "sum", None)
ZERO_COUNT_POLICIES = ("max", "zero", "pseudocount", "error")


def class_weights(counts, scheme: str = "inverse", *, beta: float = 0.999, power: float = 1.0,
                  normalize: str | None = "mean", clip=None, zero_count: str = "max",
                  log_offset: float = 1.02) -> torch.Tensor:
    """Per-class weights ``w`` (float32, on the device of ``counts``) for a weighted loss.

    With ``n_c`` the count of class ``c``, ``N = Σ_c n_c`` and ``p_c = n_c / N``, the schemes are

    - ``"inverse"``: ``w_c = 1 / n_c``;
    - ``"inverse_sqrt"``: ``w_c = 1 / √n_c`` (Mahajan et al. 2018, "Exploring the Limits of Weakly
      Supervised Pretraining");
    - ``"effective_number"``: ``w_c = (1 - β) / (1 - β^n_c)``, the inverse effective number of samples
      (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"); ``β = 0`` is
      uniform, ``β → 1`` tends to inverse frequency;
    - ``"median_frequency"``: ``w_c = median_k(n_k) / n_c``, the median over the seen classes (Eigen &
      Fergus 2015, "Predicting Depth, Surface Normals and Semantic Labels with a Common Multi-Scale
      Convolutional Architecture");
    - ``"log"``: ``w_c = 1 / ln(log_offset + p_c)``, the default ``log_offset = 1.02`` keeping the
      weights between ``1/ln 2.02 ≈ 1.4`` and ``1/ln 1.02 ≈ 50`` (Paszke et al. 2016, "ENet");
    - ``"uniform"``: ``w_c = 1``.

    The weights are then raised to ``power`` (``w_c ← w_c^power``: ``0.5`` softens, ``0`` is uniform)
    and normalized over the seen classes (``n_c > 0``): ``"mean"`` divides by their mean, so that they
    average 1 and a weighted loss keeps its scale; ``"sum"`` makes them sum to 1; ``None`` keeps them.
    ``clip`` then bounds them: a number is an upper bound, a pair ``(low, high)`` bounds both sides
    (either may be ``None``).

    Unseen classes (``n_c = 0``) follow ``zero_count``, never giving inf or NaN: ``"max"`` gives them
    the largest weight of a seen class, ``"zero"`` gives 0, ``"pseudocount"`` weighs them as if seen
    once (``n_c = 1``; they stay out of the normalization), and ``"error"`` raises ``ValueError``.
    """
    counts = as_counts(counts).double()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if zero_count not in ZERO_COUNT_POLICIES:
        raise ValueError(f"zero_count must be one of {ZERO_COUNT_POLICIES}, got {zero_count!r}")
    if not is_real_number(beta) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    if not is_real_number(power) or not math.isfinite(power) or power < 0:
        raise ValueError(f"power must be a finite non-negative number, got {power!r}")
    if not is_real_number(log_offset) or not math.isfinite(log_offset) or log_offset < 1:
        raise ValueError(f"log_offset must be a finite number ≥ 1 (every weight is then positive), "
                         f"got {log_offset!r}")
    low, high = _clip_bounds(clip)

    seen = counts > 0
    if not bool(seen.any()):
        raise ValueError(f"counts has no seen class (all {counts.numel()} counts are 0)")
    if zero_count == "error" and not bool(seen.all()):
        unseen = (~seen).nonzero().flatten()
        raise ValueError(f"counts has {unseen.numel()} unseen classes (count 0), e.g. ids {unseen[:5].tolist()}; "
                         "pass zero_count='max', 'zero' or 'pseudocount' to weigh them")

    log_weights = power * _log_raw_weights(torch.where(seen, counts, 1.0), counts, seen, scheme, beta, log_offset)
    if normalize is not None:  # the largest seen weight becomes 1 before exp: no overflow
        log_weights = log_weights - log_weights[seen].max()
    weights = log_weights.exp()
    if normalize == "mean":
        weights = weights / weights[seen].mean()
    elif normalize == "sum":
        weights = weights / weights[seen].sum()
    if low is not None or high is not None:
        weights = weights.clamp(min=low, max=high)
    if zero_count == "max":
        weights = torch.where(seen, weights, weights[seen].max())
    elif zero_count == "zero":
        weights = torch.where(seen, weights, 0.0)
    weights = weights.float()
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"the {scheme!r} weights overflow float32 with power={power}, normalize={normalize!r} "
                         f"and zero_count={zero_count!r}; pass a smaller power or normalize='mean'")
    return weights


def ldam_margins(class_counts, max_margin: float = 0.5) -> torch.Tensor:
    """Per-class LDAM margins ``m`` (float32, (C,), on the device of ``class_counts``) for
    :class:`rarekit.LDAMLoss` or ``cross_entropy(..., target_margin=m)``.

    ``m_c ∝ n_c^(-1/4)``, scaled so that the largest margin is ``max_margin``:
    ``m_c = max_margin · (n_min / n_c)^(1/4)`` (Cao et al. 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", who use ``max_margin = 0.5``). Rare classes get the larger
    margins.

    A class never seen (``n_c = 0``) gets the largest margin, ``max_margin``, and ``n_min`` is the
    smallest *seen* count, so the seen classes' margins are those they would have without it. A margin
    acts only on the rows whose target is its class, so an unseen class's margin leaves the loss on the
    counted data unchanged; should the class turn up, it is treated as the rarest. Counts may be floats
    (e.g. weighted counts); all zero, or none at all, raise ``ValueError``.
    """
    counts = as_counts(class_counts, "class_counts").double()
    if counts.numel() == 0:
        raise ValueError("class_counts must hold one count per class, got an empty sequence")
    if not bool((counts > 0).any()):
        raise ValueError(f"class_counts has no seen class (all {counts.numel()} counts are 0)")
    if not is_real_number(max_margin):
        raise TypeError(f"max_margin must be a number, got {type(max_margin).__name__}")
    if not 0 < max_margin < math.inf:
        raise ValueError(f"max_margin must be a finite number > 0, got {max_margin!r}")
    seen = counts > 0
    log_counts = torch.where(seen, counts, 1.0).log()
    # (n_min / n_c)^(1/4) in logs: exactly 1 for the rarest seen class, no overflow for huge counts
    ratios = torch.where(seen, torch.exp(0.25 * (log_counts[seen].min() - log_counts)), 1.0)
    return (max_margin * ratios).float()


def _log_raw_weights(effective_counts: torch.Tensor, counts: torch.Tensor, seen: torch.Tensor, scheme: str,
                     beta: float, log_offset: float) -> torch.Tensor:
    """``ln w_c`` of ``scheme`` before power and normalization, ``effective_counts`` being the counts
    with the unseen ones replaced by 1."""
    n = effective_counts
    if scheme == "inverse":
        return -n.log()
    if scheme == "inverse_sqrt":
        return -0.5 * n.log()
    if scheme == "effective_number":  # 1 - β^n = -expm1(n ln β), exact for β near 1
        log_beta = torch.tensor(beta, dtype=torch.float64, device=n.device).log()
        return math.log1p(-beta) - torch.log(-torch.expm1(n * log_beta))
    if scheme == "median_frequency":
        ordered = counts[seen].sort().values
        middle = ordered.numel()
        median = (ordered[(middle - 1) // 2] + ordered[middle // 2]) / 2
        return median.log() - n.log()
    if scheme == "log":  # ln(c + p) = log1p((c - 1) + p), exact for c = 1 and small p
        share = n / counts.sum()
        return -torch.log(torch.log1p((log_offset - 1) + share))
    return torch.zeros_like(n)  # uniform


def _clip_bounds(clip) -> tuple[float | None, float | None]:
    """``clip`` as ``(low, high)``: ``None``, an upper bound, or a pair of bounds (either may be ``None``)."""
    if clip is None:
        return None, None
    if is_real_number(clip):
        low, high = None, clip
    elif isinstance(clip, (tuple, list)) and len(clip) == 2:
        low, high = clip
    else:
        raise ValueError(f"clip must be None, an upper bound or a (low, high) pair, got {clip!r}")
    for bound in (low, high):
        if bound is not None and (not is_real_number(bound) or not math.isfinite(bound) or bound < 0):
            raise ValueError(f"clip bounds must be finite non-negative numbers or None, got {clip!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"clip low bound must not exceed the high bound, got {clip!r}")
    return low, high
