"""The argument checks and reduction helpers shared by the cross-entropy losses (:func:`rarekit.cross_entropy`,
:func:`rarekit.linear_cross_entropy`)."""
from __future__ import annotations

import math

import torch

from rarekit import ops
from rarekit.counting import checked_ignore_index

REDUCTIONS = ("mean", "sum", "none")
SMOOTHING_MODES = ("pytorch", "target_weighted")


def class_vector(value, name: str, classes: int, device: torch.device) -> torch.Tensor | None:
    """A per-class vector argument (``weight``, ``logit_adjustment``): None, or a floating-point
    tensor of shape (classes,) on ``device``."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape ({classes},), got "
                        f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
    if value.shape != (classes,):
        raise ValueError(f"{name} must have shape ({classes},) (one value per class), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the inputs are on {device}")
    return value


def target_margin_vector(value, classes: int, device: torch.device) -> torch.Tensor | None:
    """``target_margin`` m (LDAM, Cao et al. 2019: z'_y = z_y + a_y - m_y): None, or a finite floating-point
    (classes,) tensor on ``device`` that does not require grad (the losses are not differentiable in it)."""
    margin = class_vector(value, "target_margin", classes, device)
    if margin is None:
        return None
    if margin.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("rarekit's cross-entropy losses are not differentiable with respect to `target_margin` "
                           "(it is a fixed per-class margin, as `weight`): pass target_margin.detach()")
    if not torch.compiler.is_compiling():
        bad = ~torch.isfinite(margin)
        if bool(bad.any()):
            raise ValueError(f"target_margin must be finite, found target_margin[{int(bad.nonzero()[0, 0])}] = "
                             f"{margin[bad][0].item()}")
    return margin


def check_loss_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, ignore_index) -> int:
    """Validates the keywords shared by :func:`cross_entropy` and ``linear_cross_entropy``; returns
    ``ignore_index`` as an int."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if smoothing_mode not in SMOOTHING_MODES:
        raise ValueError(f"smoothing_mode must be one of {SMOOTHING_MODES}, got {smoothing_mode!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    for name, value in (("focal_gamma", focal_gamma), ("z_loss", z_loss)):
        if not 0 <= value < math.inf:  # also refuses NaN; plain comparisons trace under torch.compile(dynamic=True)
            raise ValueError(f"{name} must be finite and >= 0, got {name}={value}")
    ignore_index = checked_ignore_index(ignore_index)
    if ignore_index is None:
        raise TypeError("ignore_index must be an integer, got None")
    return ignore_index


def mean_divisor(target: torch.Tensor, weight: torch.Tensor | None, classes: int, ignore_index: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Σ w_y over the targets other than ``ignore_index`` (their count without weights), torch's
    divisor of ``reduction="mean"``; stays on the device."""
    if weight is None:
        return (target != ignore_index).sum().to(dtype)
    if target.numel() > classes:  # Σ_c w_c n_c from one counting pass over the targets (out-of-range
        # ones are left out: they raise in the loss, or make it NaN with check=False)
        counts = ops.count(target.reshape(-1), classes, ignore_index, None, False)
        return (counts.double() @ weight.double()).to(dtype)
    valid = target != ignore_index
    return (weight.to(dtype)[torch.where(valid, target, 0).long().clamp(0, classes - 1)] * valid).sum()


def refuse_differentiable_weight(weight) -> None:
    """torch's nll_loss is not differentiable in the class weights and refuses them; so does rarekit
    rather than return a partial gradient."""
    if isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("rarekit.cross_entropy is not differentiable with respect to `weight` (as torch's "
                           "nll_loss): pass weight.detach(), or learn a logit_adjustment instead")


def nan_if_zero(divisor: torch.Tensor) -> torch.Tensor:
    """0, or NaN when Σ w_y = 0: torch divides its nll and smoothing sums by Σ w_y separately, so its
    mean is 0/0 = NaN then even where the smoothing sum is not 0 (and ours would be inf)."""
    return 0.0 / divisor
