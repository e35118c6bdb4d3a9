"""Binary and multi-label losses on the fused sigmoid kernels (one pass forward, one backward).

- :func:`binary_cross_entropy_with_logits` and :class:`BCEWithLogitsLoss`: torch's, plus focal
  (Lin et al. 2017) and asymmetric (Ridnik et al. 2021) terms;
- :func:`sigmoid_focal_loss`: ``torchvision.ops.sigmoid_focal_loss``'s drop-in;
- :class:`AsymmetricLoss`: ASL, timm's ``AsymmetricLossMultiLabel`` formula.

With p = σ(x), q = 1 - p, p_m = max(p - clip, 0), r = 1 - p_m, α₊ = α and α₋ = 1 - α (both 1 without α)::

    ℓ = -w [α₊ pw y q^γ₊ log p + α₋ (1 - y) p_m^γ₋ log r]

log p and log q are log-sigmoids in float32 (float64 for float64 inputs): finite for any finite logit in
every dtype. torchvision's and timm's losses write the focal factor through p_t = p y + (1 - p_m)(1 - y)
and so differ from ℓ for soft targets; :func:`sigmoid_focal_loss` and :class:`AsymmetricLoss` follow
their formulas for every target in [0, 1].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rarekit.counting import is_real_number
from rarekit.losses._options import REDUCTIONS
from rarekit.ops.sigmoid import REDUCTION_CODES, sigmoid_loss

_EXTRAS = ("focal_gamma", "focal_alpha", "gamma_neg", "clip")


def _check_number(value, name: str, high: float = math.inf) -> float:
    """A real number in [0, high); refuses NaN, inf and bools."""
    if not is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0 <= value < high:
        raise ValueError(f"{name} must be in [0, {high}), got {name}={value}")
    return float(value)


def _check_operand(value, name: str, input: torch.Tensor) -> torch.Tensor | None:
    """weight, pos_weight or a tensor alpha: a floating-point tensor on the input's device that
    broadcasts to the input's shape (torch's BCE keeps the input's shape), not requiring grad."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
    shape, target_shape = tuple(value.shape), tuple(input.shape)
    if len(shape) > len(target_shape) or any(size not in (1, full) for size, full in
                                             zip(reversed(shape), reversed(target_shape))):
        raise ValueError(f"{name} of shape {shape} does not broadcast to the input's shape {target_shape}")
    if value.device != input.device:
        raise ValueError(f"{name} is on {value.device} but the input is on {input.device}")
    if value.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"rarekit.binary_cross_entropy_with_logits is not differentiable with respect to "
                           f"`{name}` (as torch's BCE): pass {name}.detach()")
    return value


def _sigmoid_family(input, target, weight, pos_weight, alpha, gamma_pos, gamma_neg, clip, pt_form,
                    reduction) -> torch.Tensor:
    if not isinstance(input, torch.Tensor) or not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor (logits), got "
                        f"{input.dtype if isinstance(input, torch.Tensor) else type(input).__name__}")
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        raise TypeError(f"target must be a floating-point tensor of probabilities in [0, 1], got "
                        f"{target.dtype if isinstance(target, torch.Tensor) else type(target).__name__}")
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but the input is on {input.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    gamma_pos = _check_number(gamma_pos, "focal_gamma")
    gamma_neg = _check_number(gamma_neg, "gamma_neg")
    clip = _check_number(0.0 if clip is None else clip, "clip", high=1.0)
    weight = _check_operand(weight, "weight", input)
    pos_weight = _check_operand(pos_weight, "pos_weight", input)
    alpha_tensor = None
    if isinstance(alpha, torch.Tensor):
        alpha_tensor, alpha = _check_operand(alpha, "focal_alpha", input), None
    elif alpha is not None:
        if not is_real_number(alpha) or not -math.inf < alpha < math.inf:
            raise ValueError(f"focal_alpha must be a finite number, a tensor or None, got {alpha!r}")
        alpha = float(alpha)
    result_dtype = target.dtype  # torch's BCE returns the target's dtype when the two differ
    if target.dtype != input.dtype:
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    loss = sigmoid_loss(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos, gamma_neg, clip, pt_form,
                        REDUCTION_CODES[reduction])
    return loss.to(result_dtype)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                     *, pos_weight: torch.Tensor | None = None, reduction: str = "mean",
                                     focal_gamma: float = 0.0, focal_alpha: float | torch.Tensor | None = None,
                                     gamma_neg: float | None = None, clip: float = 0.0) -> torch.Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits`` with focal and asymmetric terms::

        ℓ = -w [α pw y (1-p)^γ₊ log p + (1-α) (1-y) p_m^γ₋ log(1-p_m)],  p = σ(x), p_m = max(p - clip, 0)

    ``focal_gamma`` γ₊ (and γ₋ unless ``gamma_neg`` is given); ``focal_alpha`` α, a number or a tensor
    that broadcasts like ``pos_weight`` (None: no α factor, not 1/2); ``clip``: ASL's probability margin
    on the negatives. ``weight`` and ``pos_weight`` broadcast to the input as in torch; targets are
    probabilities (soft targets follow ℓ, linear in y). With the defaults it is torch's loss: values,
    gradients (input and target), reductions (the mean divides by numel) and result dtype. One pass
    forward (which also writes the input's gradient when only it needs one) and one backward.
    """
    return _sigmoid_family(input, target, weight, pos_weight, focal_alpha, focal_gamma,
                           focal_gamma if gamma_neg is None else gamma_neg, clip, False, reduction)


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> torch.Tensor:
    """Drop-in for ``torchvision.ops.sigmoid_focal_loss`` (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"), same arguments and result::

        ℓ = α_t (1 - p_t)^γ BCE(x, y),  p_t = p y + (1 - p)(1 - y),  α_t = α y + (1 - α)(1 - y)

    ``alpha < 0`` means no α factor, as torchvision. ``reduction="mean"`` averages over every element."""
    if not is_real_number(alpha) or not -math.inf < alpha < math.inf:
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    return _sigmoid_family(inputs, targets, None, None, alpha if alpha >= 0 else None, gamma, gamma, 0.0, True,
                           reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Drop-in for ``torch.nn.BCEWithLogitsLoss`` (same arguments, ``weight`` and ``pos_weight``
    buffers, state_dict) on the fused kernels; ``**extras`` are :func:`binary_cross_entropy_with_logits`'s
    keywords ``focal_gamma``, ``focal_alpha`` (a tensor one is a buffer), ``gamma_neg`` and ``clip``."""

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, reduce=None, reduction: str = "mean",
                 pos_weight: torch.Tensor | None = None, **extras):
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        unknown = set(extras) - set(_EXTRAS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        for name in ("focal_gamma", "gamma_neg"):
            if extras.get(name) is not None:
                _check_number(extras[name], name)
        _check_number(extras.get("clip") or 0.0, "clip", high=1.0)
        focal_alpha = extras.pop("focal_alpha", None)
        if isinstance(focal_alpha, torch.Tensor):
            self.register_buffer("focal_alpha", focal_alpha)
        else:
            self.focal_alpha = focal_alpha
        self.extras = extras

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                reduction=self.reduction, focal_alpha=self.focal_alpha,
                                                **self.extras)


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss for multi-label classification (ASL; Ridnik et al. 2021, "Asymmetric Loss For
    Multi-Label Classification"), the formula of timm's ``AsymmetricLossMultiLabel`` (with
    ``disable_torch_grad_focal_loss=False``)::

        ℓ = -(1 - p_t)^g [y log p + (1 - y) log(1 - p_m)],  p_m = max(p - clip, 0),
        p_t = p y + (1 - p_m)(1 - y),  g = γ₊ y + γ₋ (1 - y)

    with log p a log-sigmoid, where timm clamps p and 1 - p_m at eps = 1e-8 (the two agree wherever the
    clamp does not bind). timm returns the sum, ``-loss.sum()``: that is ``reduction="sum"``; the default
    ``"mean"`` divides it by the number of elements. timm's default γ₊ is 1; the paper's (and ours) 0."""

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float | None = 0.05,
                 reduction: str = "mean"):
        super().__init__()
        self.gamma_pos = _check_number(gamma_pos, "gamma_pos")
        self.gamma_neg = _check_number(gamma_neg, "gamma_neg")
        self.clip = _check_number(0.0 if clip is None else clip, "clip", high=1.0)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _sigmoid_family(input, target, None, None, None, self.gamma_pos, self.gamma_neg, self.clip, True,
                               self.reduction)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, reduction={self.reduction!r}"
