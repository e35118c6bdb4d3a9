"""Argument checks the reference path shares with the compiled kernels' error messages."""
from __future__ import annotations

import torch


def first_out_of_range(values: torch.Tensor, high: int, ignore_index: int | None) -> tuple[int, int] | None:
    """(position, value) of the first value of the flattened ``values`` outside [0, high) that is not
    ``ignore_index``, or None. One host synchronization."""
    flat = values.reshape(-1).long()
    bad = (flat < 0) | (flat >= high)
    if ignore_index is not None:
        bad &= flat != ignore_index
    if not bool(bad.any()):
        return None
    position = int(bad.nonzero()[0, 0])
    return position, int(flat[position])
