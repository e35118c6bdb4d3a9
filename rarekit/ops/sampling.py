"""The resampling index kernels ``rarekit::class_buckets``, ``rarekit::draw_from_buckets`` and its
in-place form ``rarekit::draw_from_buckets_into``: fake kernels and dispatch. Output sizes never depend
on data (``total`` is an argument), so the ops trace under ``torch.compile`` without graph breaks.

Inconsistent ``offsets``/``draw_counts`` raise the same ValueError on every device and path. On CUDA
that check copies them to the host (one synchronization); ``check=False`` skips it there, and an output
that would fall outside ``order`` is then INT64_MIN, which every index op rejects (csrc/cuda/sampling.cu).
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference

if _backend._C is not None:
    @torch.library.register_fake("rarekit::class_buckets")
    def _class_buckets_fake(codes, num_classes):
        return codes.new_empty(codes.shape, dtype=torch.int64), codes.new_empty((num_classes + 1,), dtype=torch.int64)

    @torch.library.register_fake("rarekit::draw_from_buckets")
    def _draw_from_buckets_fake(order, offsets, draw_counts, total, seed, replacement, check=True):
        return order.new_empty((total,))

    @torch.library.register_fake("rarekit::draw_from_buckets_into")
    def _draw_from_buckets_into_fake(order, offsets, draw_counts, seed, replacement, out, check=True):
        return None


def class_buckets(codes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, offsets)``: the positions of ``codes`` stably sorted by code, and the bucket starts."""
    if _backend.native(codes.device):
        return torch.ops.rarekit.class_buckets(codes, num_classes)
    return reference.class_buckets(codes, num_classes)


def _raise_inconsistent_draws(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, total: int,
                              replacement: bool) -> None:
    """The reference path's form of the kernels' ``checked_draw_ends`` (csrc/cpu/sampling.cpp), with
    their messages: raises ValueError unless the draws stay inside ``order``. One host synchronization."""
    prefix = "rarekit.draw_from_buckets:"
    reference.check_index_vectors(prefix, order=order, offsets=offsets, draw_counts=draw_counts)
    if offsets.numel() != draw_counts.numel() + 1:
        raise ValueError(f"{prefix} offsets must have one entry more than draw_counts ({draw_counts.numel()} "
                         f"buckets), got {offsets.numel()}")
    if total < 0:
        raise ValueError(f"{prefix} total must be >= 0, got {total}")
    offsets, draw_counts = offsets.cpu(), draw_counts.cpu()
    if offsets[0] != 0:
        raise ValueError(f"{prefix} offsets[0] must be 0, got {int(offsets[0])}")
    buckets = draw_counts.numel()
    if offsets[buckets] > order.numel():
        raise ValueError(f"{prefix} offsets[{buckets}] = {int(offsets[buckets])} exceeds the length of order "
                         f"({order.numel()})")
    sizes = offsets.diff()
    bad = torch.nonzero(sizes < 0)
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"{prefix} offsets must be non-decreasing, got offsets[{b}] = {int(offsets[b])} > "
                         f"offsets[{b + 1}] = {int(offsets[b + 1])}")
    bad = torch.nonzero(draw_counts < 0)
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"{prefix} draw_counts must be >= 0, got draw_counts[{b}] = {int(draw_counts[b])}")
    impossible = (draw_counts > 0) & (sizes == 0) if replacement else draw_counts > sizes
    bad = torch.nonzero(impossible)
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"{prefix} draw_counts[{b}] = {int(draw_counts[b])} draws "
                         f"{'with' if replacement else 'without'} replacement from a bucket of {int(sizes[b])}")
    drawn = sum(int(value) for value in draw_counts.tolist()) if buckets else 0  # Python ints: no overflow
    if drawn != total:
        raise ValueError(f"{prefix} draw_counts.sum() = {drawn} must equal the number of outputs, {total}")


def draw_from_buckets(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, total: int, seed: int,
                      replacement: bool, check: bool = True) -> torch.Tensor:
    """``draw_counts[b]`` random entries of each bucket of ``order``; ``seed`` is a signed 64-bit int.
    ``check``: validate ``offsets`` and ``draw_counts`` (always on CPU; on CUDA one host sync)."""
    if _backend.native(order.device):
        return torch.ops.rarekit.draw_from_buckets(order, offsets, draw_counts, total, seed, replacement, check)
    if check or order.device.type == "cpu":  # as the kernels: always on CPU
        _raise_inconsistent_draws(order, offsets, draw_counts, total, replacement)
    return reference.draw_from_buckets(order, offsets, draw_counts, total, seed, replacement)


def draw_from_buckets_into(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, seed: int,
                           replacement: bool, out: torch.Tensor, check: bool = True) -> None:
    """:func:`draw_from_buckets` written into the contiguous int64 ``out`` (``out.numel()`` draws)."""
    if _backend.native(order.device):
        torch.ops.rarekit.draw_from_buckets_into(order, offsets, draw_counts, seed, replacement, out, check)
    else:
        if out.dtype != torch.int64 or out.dim() != 1 or not out.is_contiguous() or out.device != order.device:
            raise (TypeError if out.dtype != torch.int64 else ValueError)(
                f"rarekit.draw_from_buckets_into: out must be a contiguous 1-D int64 tensor on {order.device}, got "
                f"{out.dtype}, shape {tuple(out.shape)}, contiguous={out.is_contiguous()}, on {out.device}")
        out.copy_(draw_from_buckets(order, offsets, draw_counts, out.numel(), seed, replacement, check))
