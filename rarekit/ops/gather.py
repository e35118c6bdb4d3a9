"""The row gather ``rarekit::gather_rows``: fake kernel and dispatch. ``out[j] = source[indices[j]]`` for
rows of any dtype, copied as bytes by one multi-threaded kernel (CPU) or one grid-stride kernel (CUDA).
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference

if _backend._C is not None:
    @torch.library.register_fake("rarekit::gather_rows")
    def _gather_rows_fake(source, indices, check=True):
        return source.new_empty((indices.shape[0], *source.shape[1:]))


def gather_rows(source: torch.Tensor, indices: torch.Tensor, check: bool = True) -> torch.Tensor:
    """``source[indices]`` along the first dimension into a fresh contiguous tensor. IndexError for an index
    outside ``[0, len(source))``; on CUDA ``check=False`` skips that check (one host synchronization) and
    leaves such rows zero."""
    if source.requires_grad and torch.is_grad_enabled():  # the op has no backward: keep the graph exact
        return source.index_select(0, indices)
    if _backend.native(source.device):
        return torch.ops.rarekit.gather_rows(source, indices, check)
    return reference.gather_rows(source, indices)
