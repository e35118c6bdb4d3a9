"""Counting class and token frequencies: :func:`count`, the streaming :class:`TokenCounter`, :func:`rare_ids`."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from rarekit import ops

UPDATE_FROM_BATCH_IDS = 1 << 20  # ids per update() call in TokenCounter.update_from
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
        if ids.numel() == 0 and ids.is_floating_point():  # [] converts to float: an empty list has no dtype
            ids = ids.long()
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
    ignore_index = checked_ignore_index(ignore_index)
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
    elif not is_integer(num_bins) or num_bins < 0:
        raise ValueError(f"num_bins must be a non-negative integer or None, got {num_bins!r}")
    return ops.count(ids, int(num_bins), ignore_index, weights, check)


def max_id(ids: torch.Tensor, ignore_index: int | None = None) -> int:
    """The largest id other than ``ignore_index`` (-1 when there is none); reads back to the host."""
    if ignore_index is not None:
        ids = torch.where(ids == ignore_index, -1, ids.long())
    return int(ids.max()) if ids.numel() else -1


def as_counts(counts, name: str = "counts") -> torch.Tensor:
    """``counts`` as a 1-D tensor of finite, non-negative counts (integer or float); reads back to the host."""
    if not isinstance(counts, torch.Tensor):
        try:
            counts = torch.as_tensor(counts)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a 1-D tensor or array of counts, got {type(counts).__name__}") from error
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{name} must have an integer or floating-point dtype, got {counts.dtype}")
    if counts.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few torch ops support these
        counts = counts.long()
    if counts.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one count per id), got shape {tuple(counts.shape)}")
    invalid = ~torch.isfinite(counts) | (counts < 0) if counts.is_floating_point() else counts < 0
    if bool(invalid.any()):
        position = int(invalid.nonzero()[0, 0])
        raise ValueError(f"{name} must be finite and non-negative, got {name}[{position}] = {counts[position].item()}")
    return counts


def checked_ignore_index(ignore_index) -> int | None:
    """``ignore_index`` as an int, or None; anything else raises TypeError naming it."""
    if ignore_index is not None and not is_integer(ignore_index):
        raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    return None if ignore_index is None else int(ignore_index)


def is_integer(value) -> bool:
    """True for Python and numpy ints, False for bools and the rest."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real_number(value) -> bool:
    """True for Python and numpy ints and floats (NaN and inf included), False for bools and the rest."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_threshold(value, name: str) -> None:
    if value is not None and (not is_real_number(value) or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a finite non-negative number or None, got {value!r}")


def rare_ids(counts, *, min_count: float | None = None, max_count: float | None = None,
             quantile: float | None = None, bottom_k: int | None = None) -> torch.Tensor:
    """The ids of rare classes, ascending (int64, on the device of ``counts``).

    ``min_count`` and ``max_count`` keep the candidates ``min_count ≤ counts[i] ≤ max_count`` (pass
    ``min_count=1`` to leave out unseen ids). Among them, ``quantile=q`` keeps those whose count is at
    most the lower ``q``-quantile of the candidates' counts (ties included), and ``bottom_k=k`` the
    ``k`` with the smallest counts (ties broken by the smaller id). Give at least one criterion, and
    at most one of ``quantile`` and ``bottom_k``.
    """
    counts = as_counts(counts)
    _check_threshold(min_count, "min_count")
    _check_threshold(max_count, "max_count")
    if all(value is None for value in (min_count, max_count, quantile, bottom_k)):
        raise ValueError("rare_ids needs at least one of min_count, max_count, quantile, bottom_k")
    if quantile is not None and bottom_k is not None:
        raise ValueError(f"give quantile or bottom_k, not both (got quantile={quantile!r}, bottom_k={bottom_k!r})")
    if min_count is not None and max_count is not None and min_count > max_count:
        raise ValueError(f"min_count ({min_count!r}) must not exceed max_count ({max_count!r})")
    if quantile is not None and (not is_real_number(quantile) or not 0 <= quantile <= 1):
        raise ValueError(f"quantile must be a number in [0, 1], got {quantile!r}")
    if bottom_k is not None and (not is_integer(bottom_k)
                                 or bottom_k < 0):
        raise ValueError(f"bottom_k must be a non-negative integer, got {bottom_k!r}")

    candidate = torch.ones_like(counts, dtype=torch.bool)
    if min_count is not None:
        candidate &= counts >= min_count
    if max_count is not None:
        candidate &= counts <= max_count
    ids = candidate.nonzero().flatten()
    if ids.numel() == 0:
        return ids
    candidate_counts = counts[ids]
    if quantile is not None:
        threshold = candidate_counts.sort().values[math.floor(quantile * (ids.numel() - 1))]
        ids = ids[candidate_counts <= threshold]
    elif bottom_k is not None:
        rarest_first = candidate_counts.sort(stable=True).indices[:bottom_k]
        ids = ids[rarest_first].sort().values
    return ids


class TokenCounter:
    """Counts ids as a stream: ``counts[b]`` = number of ids equal to ``b`` over every :meth:`update`.

    Ids outside ``[0, num_bins)`` and ids equal to ``ignore_index`` are dropped silently: :meth:`update`
    never checks the range, so on CUDA it never synchronizes with the host. Pass ``ignore_index=None``
    to count every id in range.

    Args:
        num_bins: the number of ids (vocabulary size or number of classes).
        ignore_index: an id value to skip (``-100``, the PyTorch loss padding, by default).
        device: where the counts live and the counting runs (``None``: the default device).
    """

    def __init__(self, num_bins: int, *, ignore_index: int | None = -100, device=None):
        if not is_integer(num_bins) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.ignore_index = checked_ignore_index(ignore_index)
        self._counts = torch.zeros(self.num_bins, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self._counts.device

    @property
    def counts(self) -> torch.Tensor:
        """A copy of the int64 counts, length ``num_bins``."""
        return self._counts.clone()

    @property
    def total(self) -> int:
        """The number of ids counted so far (reads back to the host)."""
        return int(self._counts.sum())

    def __repr__(self) -> str:
        return f"TokenCounter(num_bins={self.num_bins}, ignore_index={self.ignore_index}, device={self.device})"

    def update(self, ids) -> TokenCounter:
        """Adds the ids of ``ids`` (tensor, array or list of any shape). Returns self.

        Ids already on the counter's CUDA device are counted asynchronously, with no host synchronization.
        """
        ids = as_ids(ids).to(self.device)
        self._counts += count(ids, self.num_bins, ignore_index=self.ignore_index, check=False)
        return self

    def update_from(self, sequences: Iterable, progress: bool = True) -> TokenCounter:
        """Adds every id sequence of ``sequences`` (lists, arrays or tensors, e.g. a ``datasets`` column),
        with a tqdm progress bar unless ``progress=False``. Returns self.

        Consecutive sequences of one dtype and device are concatenated into one :meth:`update` call of
        about ``UPDATE_FROM_BATCH_IDS`` ids, so that short sequences cost one kernel launch per batch.
        """
        batch: list[torch.Tensor] = []
        batch_size = 0
        for index, sequence in enumerate(tqdm(sequences, desc="counting", unit="seq", disable=not progress)):
            ids = as_ids(sequence, name=f"sequences[{index}]").reshape(-1)
            if batch and (ids.dtype != batch[0].dtype or ids.device != batch[0].device):
                self.update(torch.cat(batch))
                batch, batch_size = [], 0
            batch.append(ids)
            batch_size += ids.numel()
            if batch_size >= UPDATE_FROM_BATCH_IDS:
                self.update(torch.cat(batch))
                batch, batch_size = [], 0
        if batch:
            self.update(torch.cat(batch))
        return self

    def merge(self, other: TokenCounter) -> TokenCounter:
        """Adds the counts of ``other`` (same ``num_bins`` and ``ignore_index``) into this counter. Returns self."""
        if not isinstance(other, TokenCounter):
            raise TypeError(f"other must be a TokenCounter, got {type(other).__name__}")
        self._check_compatible(other.num_bins, other.ignore_index, "other")
        self._counts += other._counts.to(self.device)
        return self

    def all_reduce(self, group=None) -> TokenCounter:
        """Sums the counts over the ranks of ``group`` (the default group if ``None``) with
        ``torch.distributed.all_reduce``; every rank then holds the global counts. Returns self, unchanged
        when ``torch.distributed`` is not initialized or the world size is 1 (as torchmetrics does), so
        the same code runs in and out of a distributed job."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        if torch.distributed.get_world_size(group) == 1:
            return self
        torch.distributed.all_reduce(self._counts, op=torch.distributed.ReduceOp.SUM, group=group)
        return self

    def state_dict(self) -> dict:
        """``{"num_bins", "ignore_index", "counts"}``; ``counts`` is a copy."""
        return {"num_bins": self.num_bins, "ignore_index": self.ignore_index, "counts": self.counts}

    def load_state_dict(self, state_dict: dict) -> TokenCounter:
        """Replaces the counts with a copy of ``state_dict["counts"]`` (same ``num_bins`` and ``ignore_index``)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [key for key in ("num_bins", "ignore_index", "counts") if key not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing keys {missing}")
        self._check_compatible(state_dict["num_bins"], state_dict["ignore_index"], "state_dict")
        counts = state_dict["counts"]
        if (not isinstance(counts, torch.Tensor) or counts.is_floating_point() or counts.is_complex()
                or counts.dtype == torch.bool or counts.shape != (self.num_bins,)):
            raise ValueError(f"state_dict['counts'] must be an integer tensor of shape ({self.num_bins},), got "
                             f"{counts.dtype if isinstance(counts, torch.Tensor) else type(counts).__name__} "
                             f"{tuple(getattr(counts, 'shape', ()))}")
        self._counts = as_counts(counts, "state_dict['counts']").to(self.device, torch.int64, copy=True)
        return self

    def save(self, path) -> None:
        """Writes the state to ``path`` with ``torch.save`` (counts on the CPU)."""
        torch.save({**self.state_dict(), "counts": self._counts.cpu()}, path)

    @classmethod
    def load(cls, path, *, device=None) -> TokenCounter:
        """A counter read from a file written by :meth:`save`, with its counts on ``device``."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or "num_bins" not in state or "ignore_index" not in state:
            raise ValueError(f"{path} does not hold a saved TokenCounter")
        return cls(state["num_bins"], ignore_index=state["ignore_index"], device=device).load_state_dict(state)

    def _check_compatible(self, num_bins, ignore_index, name: str) -> None:
        if (num_bins, ignore_index) != (self.num_bins, self.ignore_index):
            raise ValueError(f"{name} has num_bins={num_bins!r}, ignore_index={ignore_index!r}; this counter has "
                             f"num_bins={self.num_bins}, ignore_index={self.ignore_index}")
