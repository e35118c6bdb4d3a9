"""Pure-PyTorch references: the readable, vectorized specification of every rarekit op.

The compiled kernels are tested against these, and they serve every op when the extension is
not built (see :func:`rarekit.backend_info`). No Python loops over rows or classes.
"""
from __future__ import annotations

import math

import torch


def count(ids: torch.Tensor, num_bins: int, ignore_index: int | None = None,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    """``counts[b] = Σ_i [ids_i = b] · w_i`` over ids in ``[0, num_bins)`` other than ``ignore_index``.

    Ids outside the range are dropped. int64 counts without weights; float sums with them
    (float64 for float64 weights, float32 otherwise).
    """
    flat = ids.reshape(-1).long()
    keep = (flat >= 0) & (flat < num_bins)
    if ignore_index is not None:
        keep &= flat != ignore_index
    bins = torch.where(keep, flat, num_bins)  # dropped ids land in one spare bin, cut below
    if weights is None:
        return torch.zeros(num_bins + 1, dtype=torch.int64, device=ids.device).scatter_add_(
            0, bins, torch.ones_like(bins))[:num_bins]
    sums = torch.zeros(num_bins + 1, dtype=torch.float64, device=ids.device)
    sums.scatter_add_(0, bins, weights.reshape(-1).to(torch.float64))  # float64, like the kernels
    return sums[:num_bins].to(torch.float64 if weights.dtype == torch.float64 else torch.float32)


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                       logit_adjustment: torch.Tensor | None = None, ignore_index: int = -100,
                       label_smoothing: float = 0.0, target_weighted: bool = False, focal_gamma: float = 0.0,
                       z_loss: float = 0.0, target_margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row loss of the cross-entropy family for (rows, C) logits, in float32 (float64 for float64
    logits); 0 on ignored rows.

    With z' = z + a, less the target margin on the target (z'_y = z_y + a_y - m_y: LDAM, Cao et al. 2019),
    lse = log Σ_k exp z'_k and p = softmax(z')::

        B    = (1-ε) w_y (lse - z'_y) + (ε/C) Σ_k v_k (lse - z'_k)
               v_k = w_k (torch's label smoothing) or w_y (``target_weighted``)
        loss = (1 - p_y)^γ B + ζ w_y lse²

    (focal loss: Lin et al. 2017; logit adjustment: Menon et al. 2021; z-loss: Chowdhery et al. 2022).
    """
    accumulator = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(accumulator)
    if logit_adjustment is not None:
        z = z + logit_adjustment.to(accumulator)
    classes = z.shape[1]
    valid = target != ignore_index
    in_range = (target >= 0) & (target < classes)  # other targets give NaN (the callers check them)
    safe_target = torch.where(valid & in_range, target, 0).long()
    if target_margin is not None:
        margin = torch.where(valid & in_range, target_margin.to(accumulator)[safe_target], 0.0)
        z = z.scatter_add(1, safe_target[:, None], -margin[:, None])  # z'_y - m_y, the other logits as they are
    class_weight = weight.to(accumulator) if weight is not None else z.new_ones(classes)
    w_y = class_weight[safe_target]
    lse = torch.logsumexp(z, dim=1)
    log_p = torch.log_softmax(z, dim=1)  # (z - max) - log Σ exp(z - max): exact for large logits, unlike z - lse
    nll = -log_p.gather(1, safe_target[:, None]).squeeze(1)
    loss = (1 - label_smoothing) * w_y * nll
    if label_smoothing > 0:
        smooth = -log_p.sum(1) * w_y if target_weighted else -(log_p * class_weight).sum(1)
        loss = loss + (label_smoothing / classes) * smooth
    if focal_gamma != 0:
        loss = (-torch.expm1(-nll)).pow(focal_gamma) * loss
    if z_loss != 0:
        loss = loss + z_loss * w_y * lse.square()
    return torch.where(valid, torch.where(in_range, loss, float("nan")), 0.0)


def soft_target_cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                   label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-row loss for class-probability targets, as torch: ``-Σ_k w_k q_k log p_k`` with
    ``q = (1-ε) target + ε/C``."""
    accumulator = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_p = torch.log_softmax(logits.to(accumulator), dim=1)
    q = target.to(accumulator) * (1 - label_smoothing) + label_smoothing / logits.shape[1]
    if weight is not None:
        q = q * weight.to(accumulator)
    return -(q * log_p).sum(1)


GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment, 2^64 / φ
MIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def as_int64(value: int) -> int:
    """A 64-bit pattern as the signed int64 torch stores (two's complement)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function (Steele, Lea & Flood 2014) on int64 bit patterns; products wrap mod 2^64."""
    z = (z ^ shift_right(z, 30)) * as_int64(MIX_MULTIPLIERS[0])
    z = (z ^ shift_right(z, 27)) * as_int64(MIX_MULTIPLIERS[1])
    return z ^ shift_right(z, 31)


def random_bits(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """The ``counters``-th outputs of splitmix64 started at ``mix64(seed)``: ``mix64(mix64(seed) + (c + 1) γ)``."""
    base = mix64(torch.tensor(as_int64(seed), dtype=torch.int64, device=counters.device))
    return mix64(base + (counters + 1) * as_int64(GOLDEN_GAMMA))


def bounded(bits: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``floor(u n)`` with ``u = (bits >>> 11) 2^-53 ∈ [0, 1)``: uniform on ``[0, n)`` up to a 2^-53 relative bias."""
    u = shift_right(bits, 11).double() * 2.0**-53
    return (u * n.double()).long().minimum(n - 1)


def class_buckets(codes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of positions by code: ``order`` lists the positions of code 0, then code 1, ...;
    codes outside ``[0, num_classes)`` come last. Bucket ``c`` is ``order[offsets[c]:offsets[c + 1]]``."""
    wide = codes.long()
    buckets = torch.where((wide >= 0) & (wide < num_classes), wide, num_classes)
    sorted_buckets, order = torch.sort(buckets, stable=True)
    offsets = torch.searchsorted(sorted_buckets, torch.arange(num_classes + 1, device=codes.device))
    return order, offsets


def draw_from_buckets(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, total: int, seed: int,
                      replacement: bool) -> torch.Tensor:
    """``draw_counts[b]`` entries of bucket ``b`` of ``order`` (see :func:`class_buckets`), bucket after bucket.

    Output ``j`` falls in bucket ``b``, of size ``n_b``, at rank ``r`` within the bucket's draws.

    - with replacement: ``order[offsets[b] + bounded(random_bits(seed, j), n_b)]``;
    - without: the bucket's positions ``p`` ranked by ``(random_bits(seed, order[p]) >>> 1, p)``, the
      ``r``-th of them; a bucket drawn in full is kept in its order.
    """
    draw_ends = draw_counts.cumsum(0)
    outputs = torch.arange(total, device=order.device)
    bucket = torch.searchsorted(draw_ends, outputs, right=True)
    start = offsets[bucket]
    size = offsets[bucket + 1] - start
    if replacement:
        return order[start + bounded(random_bits(seed, outputs), size)]
    keys = shift_right(random_bits(seed, order), 1)
    by_key = torch.sort(keys, stable=True).indices
    bucket_of_position = torch.searchsorted(offsets[1:], by_key, right=True)
    ranked = by_key[torch.sort(bucket_of_position, stable=True).indices]  # by (bucket, key, position)
    rank = outputs - (draw_ends - draw_counts)[bucket]
    in_full = draw_counts[bucket] == size
    return order[torch.where(in_full, start + rank, ranked[start + rank])]


def gather_rows(source: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``source[indices]`` along the first dimension, with the kernels' argument checks and messages."""
    if source.dim() == 0:
        raise ValueError("rarekit.gather_rows: source must have a row dimension, got a 0-d tensor")
    if indices.dim() != 1:
        raise ValueError(f"rarekit.gather_rows: indices must be 1-D, got shape {tuple(indices.shape)}")
    if indices.dtype != torch.int64:
        raise TypeError(f"rarekit.gather_rows: indices must be int64, got {indices.dtype}")
    if indices.device != source.device:
        raise ValueError(f"rarekit.gather_rows: indices must be on the device of source ({source.device}), got "
                         f"{indices.device}")
    outside = (indices < 0) | (indices >= source.shape[0])
    if bool(outside.any()):
        position = int(outside.nonzero()[0, 0])
        raise IndexError(f"rarekit.gather_rows: indices[{position}] = {int(indices[position])} is outside the "
                         f"{source.shape[0]} rows of source")
    return source.index_select(0, indices)


def repeat_rows(source: torch.Tensor, repeats: torch.Tensor, total: int, check: bool = True) -> torch.Tensor:
    """``source[b]`` ``repeats[b]`` times, row after row (``total`` rows): ``torch.repeat_interleave`` along
    the first dimension, with the kernels' argument checks and messages (``check``: the values of
    ``repeats``, one host synchronization on CUDA)."""
    prefix = "rarekit.repeat_rows_into:"
    if source.dim() == 0:
        raise ValueError(f"{prefix} source must have a row dimension, got a 0-d tensor")
    if repeats.dtype != torch.int64:
        raise TypeError(f"{prefix} repeats must be int64, got {repeats.dtype}")
    if repeats.dim() != 1 or repeats.numel() != source.shape[0]:
        raise ValueError(f"{prefix} repeats must be 1-D with one entry per row of source ({source.shape[0]}), got "
                         f"shape {tuple(repeats.shape)}")
    if repeats.device != source.device:
        raise ValueError(f"{prefix} repeats must be on the device of source ({source.device}), got {repeats.device}")
    if check:
        negative = (repeats < 0).nonzero()
        if negative.numel():
            b = int(negative[0, 0])
            raise ValueError(f"{prefix} repeats must be >= 0, got repeats[{b}] = {int(repeats[b])}")
        ends = repeats.cumsum(0)  # of values >= 0: a negative end is an int64 overflow
        overflow = bool((ends < 0).any())
        summed = int(ends[-1]) if ends.numel() else 0
        if overflow or summed != total:
            raise ValueError(f"{prefix} repeats.sum() = {'more than 2^63 - 1' if overflow else summed} must equal "
                             f"the {total} rows of out")
    return source.repeat_interleave(repeats, dim=0, output_size=total)


def check_index_vectors(prefix: str, **tensors: torch.Tensor) -> None:
    """The kernels' check of index arguments: each a 1-D int64 tensor (TypeError, ValueError)."""
    for name, tensor in tensors.items():
        if tensor.dtype != torch.int64:
            raise TypeError(f"{prefix} {name} must be a 1-D int64 tensor, got {tensor.dtype}")
        if tensor.dim() != 1:
            raise ValueError(f"{prefix} {name} must be a 1-D int64 tensor, got shape {tuple(tensor.shape)}")


def gather_segments_into(values: torch.Tensor, starts: torch.Tensor, out_offsets: torch.Tensor, out: torch.Tensor,
                         check: bool = True) -> None:
    """``out[out_offsets[j]:out_offsets[j + 1]] = values[starts[j]:starts[j] + out_offsets[j + 1] - out_offsets[j]]``
    for every j, with the kernels' checks and messages (``check``: of the values of ``starts`` and
    ``out_offsets``, one host synchronization on CUDA; unchecked, ill-formed segments are not written)."""
    prefix = "rarekit.gather_segments_into:"
    if values.dim() == 0:
        raise ValueError(f"{prefix} values must have a row dimension, got a 0-d tensor")
    check_index_vectors(prefix, starts=starts, out_offsets=out_offsets)
    if out_offsets.numel() != starts.numel() + 1:
        raise ValueError(f"{prefix} out_offsets must have one entry more than starts ({starts.numel()}), got "
                         f"{out_offsets.numel()}")
    to, end = out_offsets[:-1], out_offsets[1:]
    lengths = end - to
    bad = (to < 0) | (end < to) | (end > out.shape[0]) | (starts < 0) | (starts > values.shape[0] - lengths)
    if check and bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise ValueError(f"{prefix} segment {j} (out_offsets[{j}] = {int(to[j])}, out_offsets[{j + 1}] = "
                         f"{int(end[j])}, starts[{j}] = {int(starts[j])}) must be an increasing range inside the "
                         f"{out.shape[0]} rows of out, copied from inside the {values.shape[0]} rows of values")
    lengths = torch.where(bad, 0, lengths)
    destinations = torch.arange(int(lengths.sum()), device=values.device) \
        + torch.repeat_interleave(to - (lengths.cumsum(0) - lengths), lengths)
    def byte_rows(tensor):  # index_put has no kernel for some dtypes (uint16): rows are copied as bytes
        return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:])).view(torch.uint8)

    byte_rows(out)[destinations] = byte_rows(values)[destinations + torch.repeat_interleave(starts - to, lengths)]


def linear_cross_entropy_rows(hidden: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                              bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                              logit_adjustment: torch.Tensor | None = None, ignore_index: int = -100,
                              label_smoothing: float = 0.0, target_weighted: bool = False, focal_gamma: float = 0.0,
                              z_loss: float = 0.0, softcap: float | None = None,
                              target_margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row loss of the fused linear + cross-entropy for (rows, D) hidden states: the
    :func:`cross_entropy_rows` of ``z = hidden @ classifierᵀ + bias``, soft-capped to ``s · tanh(z / s)``
    when ``softcap = s`` (Gemma 2)."""
    logits = torch.nn.functional.linear(hidden, classifier, bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return cross_entropy_rows(logits, target, weight, logit_adjustment, ignore_index, label_smoothing,
                              target_weighted, focal_gamma, z_loss, target_margin)
