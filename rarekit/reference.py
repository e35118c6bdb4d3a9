"""Pure-PyTorch references: the readable, vectorized specification of every rarekit op.

The compiled kernels are tested against these, and they serve every op when the extension is
not built (see :func:`rarekit.backend_info`). No Python loops over rows or classes.
"""
from __future__ import annotations

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
        values = torch.ones_like(bins)
    else:
        values = weights.reshape(-1).to(torch.float64 if weights.dtype == torch.float64 else torch.float32)
    totals = torch.zeros(num_bins + 1, dtype=values.dtype, device=ids.device)
    return totals.scatter_add_(0, bins, values)[:num_bins]
