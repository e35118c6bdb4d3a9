"""``rarekit::count``: fake kernel, autograd (gradient with respect to ``weights``) and dispatch."""
from __future__ import annotations

import torch

from rarekit import _backend, reference
from rarekit.ops._checks import first_out_of_range

if _backend._C is not None:
    @torch.library.register_fake("rarekit::count")
    def _count_fake(ids, num_bins, ignore_index, weights, check):
        if weights is None:
            return ids.new_empty((num_bins,), dtype=torch.int64)
        return ids.new_empty((num_bins,), dtype=torch.float64 if weights.dtype == torch.float64 else torch.float32)

    def _count_setup_context(ctx, inputs, output):
        ids, num_bins, ignore_index, weights, _ = inputs
        ctx.save_for_backward(ids)
        ctx.num_bins, ctx.ignore_index = num_bins, ignore_index
        ctx.weights_dtype = None if weights is None else weights.dtype

    def _count_backward(ctx, grad_counts):
        """d counts[b] / d w_i = [ids_i = b]: gather the output gradient at each kept id."""
        if ctx.weights_dtype is None or not ctx.needs_input_grad[3]:
            return None, None, None, None, None
        (ids,) = ctx.saved_tensors
        flat = ids.long()
        keep = (flat >= 0) & (flat < ctx.num_bins)
        if ctx.ignore_index is not None:
            keep &= flat != ctx.ignore_index
        grad = grad_counts[flat.clamp(0, max(ctx.num_bins - 1, 0))] if ctx.num_bins else torch.zeros_like(flat, dtype=grad_counts.dtype)
        return None, None, None, torch.where(keep, grad, 0).to(ctx.weights_dtype), None

    torch.library.register_autograd("rarekit::count", _count_backward, setup_context=_count_setup_context)


def _raise_first_out_of_range(ids: torch.Tensor, num_bins: int, ignore_index: int | None) -> None:
    """The reference path's check, with the compiled kernels' message (one host sync)."""
    found = first_out_of_range(ids, num_bins, ignore_index)
    if found is not None:
        position, value = found
        raise ValueError(
            f"rarekit.count: ids must lie in [0, num_bins={num_bins})"
            f"{' or equal ignore_index' if ignore_index is not None else ''}; found ids[{position}] = "
            f"{value} (pass check=False to drop such ids)")


def count(ids: torch.Tensor, num_bins: int, ignore_index: int | None, weights: torch.Tensor | None,
          check: bool) -> torch.Tensor:
    if _backend.native(ids.device):
        return torch.ops.rarekit.count(ids, num_bins, ignore_index, weights, check)
    if check:
        _raise_first_out_of_range(ids, num_bins, ignore_index)
    return reference.count(ids, num_bins, ignore_index, weights)
