"""Counting class and token frequencies: :func:`count`, the streaming :class:`TokenCounter`, :func:`rare_ids`."""
from __future__ import annotations

import math
import numbers
import os
import threading
from collections.abc import Iterable, Mapping
from typing import overload

import numpy as np
import torch
from tqdm.auto import tqdm

from rarekit import ops
from rarekit._files import atomic_output

UPDATE_FROM_BATCH_IDS = 1 << 20  # ids per update() call in TokenCounter.update_from
ID_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32)
INT64_MAX = (1 << 63) - 1


def as_ids(ids, name: str = "ids") -> torch.Tensor:
    """``ids`` as an integer tensor (tensors pass through; lists and arrays are converted)."""
    if not isinstance(ids, torch.Tensor):
        if isinstance(ids, np.ndarray) and ids.dtype == np.uint64:
            ids = ids.view(np.int64)  # ids >= 2^63 turn negative here and are reported below
            as_uint64 = True
        else:
            as_uint64 = False
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a tensor or array of integer ids, got {type(ids).__name__}") from error
        if ids.numel() == 0 and ids.is_floating_point():  # [] converts to float: an empty list has no dtype
            ids = ids.long()
    else:
        as_uint64 = ids.dtype == torch.uint64
        if as_uint64:
            ids = ids.view(torch.int64)
    if as_uint64:
        _check_fits_int64(ids, name)
    if ids.dtype not in ID_DTYPES:
        raise TypeError(f"{name} must have an integer dtype ({', '.join(str(d) for d in ID_DTYPES)}), got {ids.dtype}")
    return ids


def _check_fits_int64(ids: torch.Tensor, name: str) -> None:
    """``ids``: uint64 ids viewed as int64; raises ValueError naming the first one >= 2^63 (negative here)."""
    too_large = (ids < 0).reshape(-1)
    if bool(too_large.any()):
        position = int(too_large.nonzero()[0, 0])
        value = int(ids.reshape(-1)[position]) + (1 << 64)
        raise ValueError(f"{name} are uint64 and {name}[{position}] = {value} does not fit int64 (ids must be < 2^63)")


def count(ids, num_bins: int | None = None, *, ignore_index: int | None = -100,
          weights: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Histogram of integer ids: ``counts[b] = Σ_i [ids_i = b]`` (or ``Σ_i [ids_i = b] · weights_i``).

    ``torch.bincount`` of the ids other than ``ignore_index``, with a fixed length: ids outside
    ``[0, num_bins)`` raise (or are dropped with ``check=False``). :class:`TokenCounter` follows the same
    rule with the same defaults.

    Args:
        ids: integer ids of any shape (uint8, int8, int16, int32, int64, uint16, uint32), any strides.
        num_bins: output length; ``None`` takes ``max(ids) + 1``, which reads the maximum back to the
            host (one synchronization on CUDA).
        ignore_index: an id value to skip: ``-100`` (the padding of PyTorch's losses) by default,
            ``None`` to count every id.
        weights: per-id float weights, of the shape of ``ids``; the result is then a
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
        if weights.shape != ids.shape:
            raise ValueError(f"weights must have the shape of ids (one value per id): ids has shape "
                             f"{tuple(ids.shape)}, weights {tuple(weights.shape)}")
        if weights.device != ids.device:
            raise ValueError(f"weights must be on the device of ids ({ids.device}), got {weights.device}")
    if num_bins is None:
        largest = max_id(ids, ignore_index, default=None)
        if largest is not None and largest < 0 and check:
            raise ValueError(f"rarekit.count: num_bins=None takes max(ids) + 1, but every id is negative "
                             f"(max(ids) = {largest}); ids must lie in [0, num_bins)"
                             f"{' or equal ignore_index' if ignore_index is not None else ''}")
        num_bins = 0 if largest is None else max(largest + 1, 0)
    elif not is_integer(num_bins) or not 0 <= num_bins <= INT64_MAX:
        raise ValueError(f"num_bins must be a non-negative integer below 2^63, or None, got {num_bins!r}")
    return ops.count(ids, int(num_bins), ignore_index, weights, check)


@overload
def max_id(ids: torch.Tensor, ignore_index: int | None = None, default: int = -1) -> int: ...
@overload
def max_id(ids: torch.Tensor, ignore_index: int | None = None, *, default: None) -> int | None: ...
def max_id(ids: torch.Tensor, ignore_index: int | None = None, default: int | None = -1) -> int | None:
    """The largest id other than ``ignore_index`` (``default`` when there is none); reads back to the host."""
    if ids.numel() == 0:
        return default
    if ignore_index is None:
        return int(ids.max())
    wide = ids.long()  # compared as uint8, -100 would equal id 156
    low = torch.iinfo(torch.int64).min  # ignored ids drop out of the max without a masked copy
    largest = int(torch.where(wide == ignore_index, low, wide).max())
    return default if largest == low else largest  # every id ignored (INT64_MIN itself is no valid id)


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
    if ignore_index is not None and not -INT64_MAX - 1 <= ignore_index <= INT64_MAX:
        raise ValueError(f"ignore_index must fit int64, got {ignore_index!r}")
    return None if ignore_index is None else int(ignore_index)


def is_integer(value) -> bool:
    """True for Python and numpy ints, False for bools and the rest."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def is_real_number(value) -> bool:
    """True for Python and numpy ints and floats (NaN and inf included), False for bools and the rest."""
    return type(value) in (int, float) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _check_threshold(value, name: str) -> None:
    if value is not None and (not is_real_number(value) or value < 0
                              or not is_integer(value) and not math.isfinite(value)):  # ints of any size are finite
        raise ValueError(f"{name} must be a finite non-negative number or None, got {value!r}")


def _comparable(threshold):
    """``threshold`` in a form torch compares counts with: an integer past int64, above every count, as inf."""
    return math.inf if is_integer(threshold) and threshold > INT64_MAX else threshold


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
        candidate &= counts >= _comparable(min_count)
    if max_count is not None:
        candidate &= counts <= _comparable(max_count)
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

    Each :meth:`update` adds :func:`count` of its ids, with the same rule and defaults: ids equal to
    ``ignore_index`` are skipped, and an id outside ``[0, num_bins)`` raises ValueError naming it (on
    CUDA, one host synchronization per update), or, with ``check=False``, is dropped, and then
    :meth:`update` never synchronizes with the host. :meth:`update` and :meth:`merge` may be called from
    several threads at once: each adds under a lock (the counting itself runs outside it), so no count
    is lost.

    Args:
        num_bins: the number of ids (vocabulary size or number of classes).
        ignore_index: an id value to skip: ``-100`` (the padding of PyTorch's losses) by default,
            ``None`` to count every id.
        check: raise for ids outside ``[0, num_bins)`` (default), or drop them (``False``).
        device: where the counts live and the counting runs (``None``: the default device).
    """

    def __init__(self, num_bins: int, *, ignore_index: int | None = -100, check: bool = True, device=None):
        if not is_integer(num_bins) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        if not isinstance(check, bool):
            raise TypeError(f"check must be a bool, got {check!r}")
        self.num_bins = int(num_bins)
        self.ignore_index = checked_ignore_index(ignore_index)
        self.check = check
        self._counts = torch.zeros(self.num_bins, dtype=torch.int64, device=device)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"check": True, **state})  # counters pickled before check existed
        self._lock = threading.Lock()

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
        return (f"TokenCounter(num_bins={self.num_bins}, ignore_index={self.ignore_index}, check={self.check}, "
                f"device={self.device})")

    def update(self, ids) -> TokenCounter:
        """Adds the ids of ``ids`` (tensor, array or list of any shape). Returns self.

        With ``check=False``, ids already on the counter's CUDA device are counted asynchronously, with
        no host synchronization. An id out of range raises before anything is added.
        """
        ids = as_ids(ids).to(self.device)
        try:
            added = count(ids, self.num_bins, ignore_index=self.ignore_index, check=self.check)
        except ValueError as error:
            raise ValueError(f"TokenCounter(num_bins={self.num_bins}).update: {error}") from None
        with self._lock:  # `+=` from two threads at once would lose counts
            self._counts += added
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
        added = other.counts.to(self.device)
        with self._lock:
            self._counts += added
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

    def load_state_dict(self, state_dict: Mapping) -> TokenCounter:
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
        counts = as_counts(counts, "state_dict['counts']").to(self.device, torch.int64, copy=True)
        with self._lock:
            self._counts = counts
        return self

    def save(self, path) -> None:
        """Writes the state to ``path`` with ``torch.save`` (counts on the CPU), through a temporary file
        in the same folder renamed into place: a failed write (disk full, ...) leaves the old file whole."""
        with self._lock:
            state = {**self.state_dict(), "counts": self._counts.cpu()}
        with atomic_output(path) as temporary:
            torch.save(state, temporary)

    @classmethod
    def load(cls, path, *, num_bins: int | None = None, device=None) -> TokenCounter:
        """A counter read from a file written by :meth:`save`, with its counts on ``device``.

        The file is read with ``weights_only=True`` and memory-mapped, and its contents are checked
        before anything is allocated: ValueError names the file and the problem (empty, truncated or
        not a saved counter, counts of the wrong length or dtype, or a vocabulary of other than
        ``num_bins`` ids when ``num_bins`` is given).
        """
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: the file is empty, not a saved TokenCounter")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... for bad files
            raise ValueError(f"{path}: cannot read a saved TokenCounter: the file is truncated or not written by "
                             f"TokenCounter.save ({type(error).__name__}: {error})") from error
        if (not isinstance(state, Mapping) or set(state) != {"num_bins", "ignore_index", "counts"}
                or not is_integer(state["num_bins"])
                or not (state["ignore_index"] is None or is_integer(state["ignore_index"]))):
            raise ValueError(f"{path} does not hold a saved TokenCounter (expected keys num_bins, ignore_index, "
                             f"counts, got {sorted(state) if isinstance(state, Mapping) else type(state).__name__})")
        counts = state["counts"]
        if not isinstance(counts, torch.Tensor) or counts.dtype != torch.int64 or counts.dim() != 1:
            raise ValueError(f"{path}: counts must be a 1-D int64 tensor, got "
                             f"{counts.dtype if isinstance(counts, torch.Tensor) else type(counts).__name__} "
                             f"{tuple(getattr(counts, 'shape', ()))}")
        if counts.numel() != state["num_bins"]:
            raise ValueError(f"{path}: inconsistent file: num_bins = {state['num_bins']} but counts has "
                             f"{counts.numel()} entries")
        if num_bins is not None and num_bins != state["num_bins"]:
            raise ValueError(f"{path}: wrong vocabulary size: the file counts {state['num_bins']} ids, "
                             f"expected num_bins={num_bins}")
        return cls(state["num_bins"], ignore_index=state["ignore_index"], device=device).load_state_dict(state)

    def _check_compatible(self, num_bins, ignore_index, name: str) -> None:
        if (num_bins, ignore_index) != (self.num_bins, self.ignore_index):
            raise ValueError(f"{name} has num_bins={num_bins!r}, ignore_index={ignore_index!r}; this counter has "
                             f"num_bins={self.num_bins}, ignore_index={self.ignore_index}")
