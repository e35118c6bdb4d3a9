"""Counting class and token frequencies: :func:`count`."""
from __future__ import annotations

import numpy as np
import torch

from rarekit import ops

ID_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32)


def as_ids(ids, name: str = "ids") -> torch.Tensor:
    """``ids`` as an integer tensor (tensors pass through; lists and arrays are converted)."""
    if not isinstance(ids, torch.Tensor):
        if isinstance(ids, np.ndarray) and ids.dtype == np.uint64:
            ids = ids.astype(np.int64)
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a tensor or array of integer ids, got {type(ids).__name__}") from error
    if ids.dtype not in ID_DTYPES:
        raise TypeError(f"{name} must have an integer dtype ({', '.join(str(d) for d in ID_DTYPES)}), got {ids.dtype}")
    return ids


def count(ids, num_bins: int | None = None, *, ignore_index: int | None = None,
          weights: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Histogram of integer ids: ``counts[b] = Σ_i [ids_i = b]`` (or ``Σ_i [ids_i = b] · weights_i``).

    Args:
        ids: integer ids of any shape (uint8, int8, int16, int32, int64, uint16, uint32), any strides.
        num_bins: output length; ``None`` takes ``max(ids) + 1``, which reads the maximum back to the
            host (one synchronization on CUDA).
        ignore_index: an id value to skip (e.g. ``-100`` padding).
        weights: per-id float weights, same number of elements as ``ids``; the result is then a
            float sum (float64 for float64 weights, float32 otherwise) and is differentiable in them.
        check: raise ``ValueError`` naming the first id outside ``[0, num_bins)`` that is not
            ``ignore_index``. On CUDA this synchronizes once; ``check=False`` drops such ids instead
            and never synchronizes when ``num_bins`` is given.

    Returns:
        int64 counts of length ``num_bins`` (exact), or the weighted sums. On CPU, weighted sums do
        not depend on the thread count.
    """
    ids = as_ids(ids)
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
            raise TypeError(f"weights must be a floating-point tensor, got "
                            f"{weights.dtype if isinstance(weights, torch.Tensor) else type(weights).__name__}")
        if weights.numel() != ids.numel():
            raise ValueError(f"weights must have one value per id: ids has {ids.numel()} elements, "
                             f"weights has {weights.numel()} (shape {tuple(weights.shape)})")
        if weights.device != ids.device:
            raise ValueError(f"weights must be on the device of ids ({ids.device}), got {weights.device}")
    if num_bins is None:
        num_bins = max_id(ids, ignore_index) + 1
    elif isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 0:
        raise ValueError(f"num_bins must be a non-negative integer or None, got {num_bins!r}")
    return ops.count(ids, int(num_bins), ignore_index, weights, check)


def max_id(ids: torch.Tensor, ignore_index: int | None = None) -> int:
    """The largest id other than ``ignore_index`` (-1 when there is none); reads back to the host."""
    if ignore_index is not None:
        ids = torch.where(ids == ignore_index, -1, ids.long())
    return int(ids.max()) if ids.numel() else -1
