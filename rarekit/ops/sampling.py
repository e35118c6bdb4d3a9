"""The resampling index kernels ``rarekit::class_buckets``, ``rarekit::draw_from_buckets`` and its
in-place form ``rarekit::draw_from_buckets_into``: fake kernels and dispatch. Output sizes never depend
on data (``total`` is an argument), so the ops trace under ``torch.compile`` without graph breaks.
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference

if _backend._C is not None:
    @torch.library.register_fake("rarekit::class_buckets")
    def _class_buckets_fake(codes, num_classes):
        return codes.new_empty(codes.shape, dtype=torch.int64), codes.new_empty((num_classes + 1,), dtype=torch.int64)

    @torch.library.register_fake("rarekit::draw_from_buckets")
    def _draw_from_buckets_fake(order, offsets, draw_counts, total, seed, replacement):
        return order.new_empty((total,))

    @torch.library.register_fake("rarekit::draw_from_buckets_into")
    def _draw_from_buckets_into_fake(order, offsets, draw_counts, seed, replacement, out):
        return None


def class_buckets(codes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, offsets)``: the positions of ``codes`` stably sorted by code, and the bucket starts."""
    if _backend.native(codes.device):
        return torch.ops.rarekit.class_buckets(codes, num_classes)
    return reference.class_buckets(codes, num_classes)


def draw_from_buckets(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, total: int, seed: int,
                      replacement: bool) -> torch.Tensor:
    """``draw_counts[b]`` random entries of each bucket of ``order``; ``seed`` is a signed 64-bit int."""
    if _backend.native(order.device):
        return torch.ops.rarekit.draw_from_buckets(order, offsets, draw_counts, total, seed, replacement)
    return reference.draw_from_buckets(order, offsets, draw_counts, total, seed, replacement)


def draw_from_buckets_into(order: torch.Tensor, offsets: torch.Tensor, draw_counts: torch.Tensor, seed: int,
                           replacement: bool, out: torch.Tensor) -> None:
    """:func:`draw_from_buckets` written into the contiguous int64 ``out`` (``out.numel()`` draws)."""
    if _backend.native(order.device):
        torch.ops.rarekit.draw_from_buckets_into(order, offsets, draw_counts, seed, replacement, out)
    else:
        out.copy_(reference.draw_from_buckets(order, offsets, draw_counts, out.numel(), seed, replacement))
