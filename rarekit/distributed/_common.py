"""What the vocabulary-parallel losses share: the checks of their replicated inputs, the reductions,
and the autograd paths they refuse."""
from __future__ import annotations

import torch

from rarekit.distributed._shards import PREFIX
from rarekit.distributed._statistics import LossOptions, local_target_of, smoothing_vector
from rarekit.losses._options import mean_divisor, nan_if_zero, refuse_differentiable_weight


def check_replicated(target, weight, logit_adjustment, rows_shape: tuple[int, ...] | None = None) -> None:
    """The inputs every rank holds whole (same values everywhere): checked locally, so every rank
    raises alike. Their lengths and equality across ranks are checked in the exchange."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{PREFIX} target must be a tensor of global class ids, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{PREFIX} target must hold integer class indices (global ids), got {target.dtype}")
    if rows_shape is None and target.dim() != 1:
        raise ValueError(f"{PREFIX} target must have shape (N,), got {tuple(target.shape)}")
    if rows_shape is not None and tuple(target.shape) != rows_shape:
        raise ValueError(f"{PREFIX} target must have shape {rows_shape} (hidden's shape without its last "
                         f"dimension), got {tuple(target.shape)}")
    for name, vector in (("weight", weight), ("logit_adjustment", logit_adjustment)):
        if vector is None:
            continue
        if not isinstance(vector, torch.Tensor) or not vector.is_floating_point():
            raise TypeError(f"{PREFIX} {name} must be a floating-point tensor over the whole vocabulary, got "
                            f"{vector.dtype if isinstance(vector, torch.Tensor) else type(vector).__name__}")
        if vector.dim() != 1:
            raise ValueError(f"{PREFIX} {name} must be 1-D, one value per class of the whole vocabulary, got shape "
                             f"{tuple(vector.shape)}")
        if vector.device != target.device:
            raise ValueError(f"{PREFIX} {name} is on {vector.device} but target is on {target.device}")
    refuse_differentiable_weight(weight)
    if logit_adjustment is not None and logit_adjustment.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{PREFIX} a logit_adjustment that requires grad is not supported: its gradient spans "
                           "the vocabulary and would need a collective in the backward. Learn the adjustment as a "
                           "sharded bias instead (add it to the logits, or pass it as `bias` of the fused loss)")


def class_slice(vector: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    """This shard's slice of a full-vocabulary vector. A vector too short for it (a wrong length,
    which the exchange reports on every rank) gives zeros meanwhile."""
    if vector is None:
        return None
    if vector.numel() < start + size:
        return vector.new_zeros(size)
    return vector[start:start + size]


def shard_view(target: torch.Tensor, weight, adjustment, start: int, size: int, options: LossOptions):
    """This shard's view of the replicated inputs: (local targets, see ``local_target_of``; its slice of
    the logit adjustment; v' over its classes, see ``smoothing_vector``)."""
    return (local_target_of(target, start, size, options.ignore_index), class_slice(adjustment, start, size),
            smoothing_vector(class_slice(weight, start, size), options))


def reduce_losses(losses: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, classes: int,
                  ignore_index: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """``reduction`` of the per-row losses as :func:`rarekit.cross_entropy`: "mean" divides by the
    global Σ w_y (NaN when every row is ignored), "sum" adds, "none" returns them."""
    if reduction == "none":
        return losses.to(dtype)
    total = losses.sum()
    if reduction == "sum":
        return total.to(dtype)
    divisor = mean_divisor(target, weight, classes, ignore_index, losses.dtype)
    return (total / divisor + nan_if_zero(divisor)).to(dtype)


def refuse_forward_ad() -> None:
    raise RuntimeError(f"{PREFIX} forward-mode AD (dual tensors, torch.func.jvp) is not supported by the "
                       "vocabulary-parallel losses")
