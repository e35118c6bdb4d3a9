"""The vocabulary-parallel cross-entropy's row math: what one shard contributes, how the shards'
contributions combine, and the shard's gradient given the combined row terms.

Rank r holds the logits z'_k = z_k + a_k of the classes k in its range [start_r, start_r + V_r). Per
row it sends, with c_r = max_k z'_k (0 where that max is -inf: a fully masked shard) and the local
log-probabilities L_k = z'_k - lse_r of one ``log_softmax`` pass (lse_r = c_r + log s_r)::

    m_r = max_k z'_k               log s_r = log Σ_k exp(z'_k - c_r) = -max_k L_k
    d_r = z'_y - c_r               (the rank owning the target y; 0 elsewhere)
    p_r = Σ_k v'_k (lse_r - z'_k) = -Σ_k v'_k L_k   (label smoothing only; v'_k = w_k in "pytorch"
                                                     mode with weights, else 1)

An ignored row sends (-inf, 0, 0, 0), as an empty shard does. Every rank combines the gathered (m, log s, d, p) of all ranks, in rank order, into the global row
statistics: M = max_r m_r, log_sum = log Σ_r exp((m_r - M) + log s_r), lse = M + log_sum, and

    z'_y - M = d_o + (c_o - M)                            o = the target's owner
    Σ_k v'_k (lse - z'_k) = Σ_r p_r + V'_r ((M - c_r) + (log_sum - log s_r)),   V'_r = Σ_{k in r} v'_k

a sum of terms >= 0 (lse >= lse_r): no V·lse - Σ z_k cancellation and no log of an underflowed
probability. An empty shard sends (-inf, 0, 0, 0) and adds nothing. From there the loss and the
gradient coefficients are those of the single-process kernel (``csrc/include/rarekit/cross_entropy_math.h``),
whose row-term layout (max_logit, coef_p, coef_y, coef_v) they keep::

    ∂loss/∂z'_k = coef_p exp(z'_k - M) - coef_v v'_k - [k = y] coef_y

which is the contract of the kernels' ``cross_entropy_backward``: :func:`local_gradient` calls it where
it is built. The shard's statistics come from the kernels' ``vocab_parallel_statistics`` (one pass over
the logits, the single-process forward's; :func:`shard_statistics`), or from :func:`local_statistics`
where it is not built. The combination is vectorized torch over the rows in the accumulator dtype
(float32; float64 for float64): O(N W), no pass over the logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rarekit import _backend
from rarekit.ops.cross_entropy import accumulator_dtype
from rarekit.ops.vocab_parallel import statistics_count

@dataclass(frozen=True)
class LossOptions:
    """The loss keywords the row math needs (validated by the callers)."""

    ignore_index: int
    label_smoothing: float
    target_weighted: bool
    focal_gamma: float
    z_loss: float

    @property
    def statistics(self) -> int:
        """Rows of the per-rank statistics block: m, log s, d, and p with label smoothing."""
        return statistics_count(self.label_smoothing)


def smoothing_vector(weight: torch.Tensor | None, options: LossOptions) -> torch.Tensor | None:
    """v' over the classes of ``weight`` (a shard's slice or the whole vector): the weights in
    "pytorch" mode, None (all ones) otherwise."""
    return weight if weight is not None and not options.target_weighted else None


def local_statistics(logits: torch.Tensor, local_target: torch.Tensor, smoothing: torch.Tensor | None,
                     options: LossOptions, accumulate: torch.dtype) -> torch.Tensor:
    """The (statistics, rows) block (m, log s, d[, p]) of one shard's (rows, V_r) logits z' (adjustment
    already added), in the ``accumulate`` dtype; ``local_target`` is y - start_r, outside [0, V_r)
    where another rank owns y or the row is ignored."""
    rows, classes = logits.shape
    block = logits.new_zeros((options.statistics, rows), dtype=accumulate)
    if classes == 0:
        block[0] = -torch.inf
        return block
    z = logits.to(accumulate)
    top = z.amax(1)
    masked = top == -torch.inf
    log_probs = torch.log_softmax(z, 1)  # (z' - c) - log s per element, the argmax's exactly -log s
    block[0] = top
    block[1] = torch.where(masked, -torch.inf, -log_probs.amax(1))
    owned = (local_target >= 0) & (local_target < classes)
    picked = z.gather(1, torch.where(owned, local_target, 0)[:, None]).squeeze(1)
    block[2] = torch.where(owned, picked - torch.where(masked, 0.0, top), 0.0)
    if options.label_smoothing > 0:
        spread = -(log_probs @ smoothing.to(accumulate)) if smoothing is not None else -log_probs.sum(1)
        block[3] = torch.where(masked, torch.inf, spread)
    ignored = local_target == -2
    block[:, ignored] = 0.0
    block[0, ignored] = -torch.inf
    return block


def shard_statistics(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                     adjustment: torch.Tensor | None, start: int, options: LossOptions) -> torch.Tensor:
    """The (statistics, rows) block of a shard's (rows, V_r) logits z (z' = z + ``adjustment``) whose first
    class is ``start``; ``target`` holds global ids, ``weight`` and ``adjustment`` are the shard's slices.
    The compiled ``vocab_parallel_statistics`` (one pass over the logits) where it serves the device,
    else :func:`local_statistics` chunk by chunk."""
    if _backend.native(logits.device):
        return torch.ops.rarekit.vocab_parallel_statistics(logits, target, weight, adjustment, start,
                                                           options.ignore_index, options.label_smoothing,
                                                           options.target_weighted)
    rows, classes = logits.shape
    accumulate = accumulator_dtype(logits)
    local_target = local_target_of(target, start, classes, options.ignore_index)
    smoothing = smoothing_vector(weight, options)
    statistics = logits.new_empty((options.statistics, rows), dtype=accumulate)
    for chunk in row_chunks(rows, classes):
        z = logits[chunk] if adjustment is None else torch.add(logits[chunk].to(accumulate), adjustment.to(accumulate))
        statistics[:, chunk] = local_statistics(z, local_target[chunk], smoothing, options, accumulate)
    return statistics


def row_chunks(rows: int, classes: int, budget: int = 2**20):
    """Row slices of at most ``budget`` elements (at least one row each): a shard's logits are read
    chunk by chunk, so the temporaries stay small and in cache."""
    step = max(1, budget // max(classes, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def local_target_of(target: torch.Tensor, start: int, classes: int, ignore_index: int) -> torch.Tensor:
    """y - start where this shard owns y; -1 where another shard does, -2 on ignored rows."""
    shifted = target.long() - start
    owned = (shifted >= 0) & (shifted < classes)
    return torch.where(target == ignore_index, -2, torch.where(owned, shifted, -1))


@dataclass(frozen=True)
class RowResult:
    """The combined statistics: per-row losses (0 on ignored rows) and the (rows, 4) row terms."""

    losses: torch.Tensor
    row_terms: torch.Tensor


def combine_statistics(gathered: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       sizes: tuple[int, ...], options: LossOptions) -> RowResult:
    """Losses and row terms from the ranks' (world, statistics, rows) blocks, in rank order.

    ``target`` holds global ids (validated: in range or ignore_index), ``weight`` the full (V,)
    class weights or None, ``sizes`` the shards' V_r."""
    m, log_s, d = gathered[:, 0], gathered[:, 1], gathered[:, 2]
    accumulate = gathered.dtype
    classes = sum(sizes)
    valid = target != options.ignore_index
    safe_target = torch.where(valid, target, 0)
    ends = torch.tensor(sizes, device=target.device).cumsum(0)
    owner = torch.searchsorted(ends, safe_target, right=True).clamp_(max=len(sizes) - 1)[None]
    top = m.amax(0)
    top = torch.where(top == -torch.inf, 0.0, top)  # every logit -inf: the kernel's convention
    log_sum = torch.exp((m - top) + log_s).sum(0).log()
    shift = torch.where(m == -torch.inf, 0.0, m)
    log_p_target = (d.gather(0, owner)[0] + (shift.gather(0, owner)[0] - top)) - log_sum
    w_y = weight.to(accumulate)[safe_target] if weight is not None else torch.ones_like(log_sum)
    eps = options.label_smoothing
    u = (1 - eps) * w_y
    base = u * -log_p_target
    smooth_scale = w_y if options.target_weighted else 1.0
    v_total = smooth_scale * classes
    if eps > 0:
        smoothing = smoothing_vector(weight, options)
        if smoothing is not None:
            shard_totals = torch.stack([part.sum() for part in smoothing.to(accumulate).split(sizes)])
            v_total = smoothing.to(accumulate).sum()
        else:
            shard_totals = torch.tensor(sizes, dtype=accumulate, device=target.device)
        spread = (gathered[:, 3] + shard_totals[:, None] * ((top - shift) + (log_sum - log_s))).sum(0)
        base = base + (eps / classes) * (smooth_scale * spread)
    focal: torch.Tensor | float = 1.0
    base_slope: torch.Tensor | float = 0.0
    if options.focal_gamma != 0:
        gamma = options.focal_gamma
        log_p = log_p_target.clamp(max=0)  # an approximate log can overshoot 0 (NaN stays NaN)
        one_minus_p = -torch.expm1(log_p)
        focal = one_minus_p.pow(gamma)
        slope = torch.where(one_minus_p > 0, gamma * one_minus_p.pow(gamma - 1) * log_p.exp(), 0.0)
        base_slope = torch.where(slope != 0, base * slope, 0.0)
    lse = top + log_sum
    z_term = options.z_loss * w_y
    losses = torch.where(valid, focal * base + z_term * lse * lse, 0.0)
    row_terms = torch.stack([
        top,
        (focal * (u + (eps / classes) * v_total) + base_slope + 2 * z_term * lse) * torch.exp(-log_sum),
        focal * u + base_slope,
        focal * (eps / classes) * smooth_scale * torch.ones_like(log_sum),
    ], 1)
    row_terms[:, 1:].masked_fill_(~valid[:, None], 0.0)  # ignored rows: a zero gradient
    return RowResult(losses, row_terms)


def reference_gradient(logits: torch.Tensor, local_target: torch.Tensor, smoothing: torch.Tensor | None,
                       row_terms: torch.Tensor, upstream: torch.Tensor, options: LossOptions,
                       adjustment: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """The torch form of :func:`local_gradient` for a chunk of rows, written into ``out`` (accumulator dtype)."""
    accumulate = row_terms.dtype
    scale = upstream.to(accumulate)[:, None] * row_terms[:, 1:]
    if adjustment is not None:  # z' rounded once, then shifted (as the forward and the kernel)
        torch.add(logits, adjustment.to(accumulate), out=out).sub_(row_terms[:, :1])
    else:
        torch.sub(logits, row_terms[:, :1], out=out)
    out.exp_().mul_(scale[:, :1])
    if options.label_smoothing > 0:
        if smoothing is not None:
            out.addr_(scale[:, 2], smoothing.to(accumulate), alpha=-1)
        else:
            out.sub_(scale[:, 2:])
    owned = local_target >= 0
    out.scatter_add_(1, torch.where(owned, local_target, 0)[:, None], torch.where(owned, -scale[:, 1], 0.0)[:, None])
    return out


def local_gradient(logits: torch.Tensor, local_target: torch.Tensor, smoothing: torch.Tensor | None,
                   row_terms: torch.Tensor, upstream: torch.Tensor, options: LossOptions,
                   adjustment: torch.Tensor | None = None) -> torch.Tensor:
    """The shard's gradient ``upstream_i · (coef_p exp(z'_ik - M) - coef_v v'_k - [k = y_i] coef_y)`` of
    (rows, V_r) logits z (z' = z + ``adjustment``), a new tensor in the logits dtype.

    The compiled kernels' ``cross_entropy_backward`` computes exactly this from row terms, so it serves
    where built: rows whose target another rank owns get target 0 and coef_y = 0, ignored rows target -1
    (its ignore_index here: a zero row). Otherwise :func:`reference_gradient`, chunk by chunk."""
    rows, classes = logits.shape
    if _backend.native(logits.device) and classes > 0:
        owned = local_target >= 0
        coef_y = torch.where(owned, row_terms[:, 2], 0.0)[:, None]
        kernel_target = torch.where(owned, local_target, torch.where(local_target == -1, 0, -1))
        return torch.ops.rarekit.cross_entropy_backward(
            upstream, logits, kernel_target, smoothing if options.label_smoothing > 0 else None, adjustment, None,
            torch.cat([row_terms[:, :2], coef_y, row_terms[:, 3:]], 1), -1, options.label_smoothing,
            options.target_weighted, options.focal_gamma, options.z_loss)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if classes == 0:  # an empty shard
        return grad
    _backend.advise_huge_pages(grad)
    exact = logits.dtype == row_terms.dtype
    for chunk in row_chunks(rows, classes):
        out = grad[chunk] if exact else torch.empty(grad[chunk].shape, dtype=row_terms.dtype, device=grad.device)
        reference_gradient(logits[chunk], local_target[chunk], smoothing, row_terms[chunk], upstream[chunk], options,
                           adjustment, out)
        if not exact:
            grad[chunk] = out
    return grad
