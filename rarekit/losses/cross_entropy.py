"""Losses for imbalanced classes on the fused cross-entropy kernels.

:func:`cross_entropy` is ``torch.nn.functional.cross_entropy`` with the same semantics, plus
imbalance-aware extras: focal loss, logit adjustment, z-loss, target-weighted smoothing and an
inplace backward. The modules are thin wrappers around it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import forward_ad

from rarekit import _backend, ops
from rarekit.counting import as_counts, is_real_number
from rarekit.losses._options import (check_loss_options, class_vector, mean_divisor, nan_if_zero,
                                     refuse_differentiable_weight, target_margin_vector)

def _rows_view(logits: torch.Tensor, target: torch.Tensor):
    """(rows, C) logits and (rows,) targets for (C,), (N, C) or (N, C, d1, ...) inputs; the shape of
    a ``reduction="none"`` result."""
    if logits.dim() == 2 and target.dim() == 1 and target.shape[0] == logits.shape[0]:  # the common case, first
        return logits, target, (logits.shape[0],)
    if logits.dim() == 1:
        if target.dim() != 0:
            raise ValueError(f"target must be a scalar class index for unbatched (C,) logits, got shape {tuple(target.shape)}")
        return logits.unsqueeze(0), target.reshape(1), ()
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if logits.dim() == 2:
        return logits, target, expected
    classes = logits.shape[1]
    return logits.movedim(1, -1).reshape(-1, classes), target.reshape(-1), expected


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                  smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                  logit_adjustment: torch.Tensor | None = None, target_margin: torch.Tensor | None = None,
                  z_loss: float = 0.0, sample_weight: torch.Tensor | None = None, inplace_backward: bool = False,
                  check: bool = True) -> torch.Tensor:
    """Fused weighted cross-entropy with ``torch.nn.functional.cross_entropy`` semantics.

    For each non-ignored row with logits z, target y, ``logit_adjustment`` a and ``target_margin`` m
    (z'_k = z_k + a_k for k ≠ y, z'_y = z_y + a_y - m_y), class weights w, smoothing ε over C classes,
    lse = log Σ_k exp z'_k and p = softmax(z')::

        B    = (1-ε) w_y (lse - z'_y) + (ε/C) Σ_k v_k (lse - z'_k)
        loss = (1 - p_y)^γ · B + ζ · w_y · lse²

    * ``smoothing_mode="pytorch"``: v_k = w_k, as torch, so up-weighted rare classes also attract
      smoothing mass from every row (pytorch/pytorch#104776). ``"target_weighted"``: v_k = w_y, i.e.
      the whole smoothed row loss is scaled by its target's weight.
    * ``focal_gamma`` γ: focal loss (Lin et al. 2017); ``logit_adjustment``: e.g. τ log π (Menon et
      al. 2021); ``z_loss`` ζ: PaLM's z-loss (Chowdhery et al. 2022), scaled by w_y like the row.
    * ``target_margin`` m (C,), finite: LDAM's label-dependent margin (Cao et al. 2019, e.g. m_c ∝ n_c^(-1/4)),
      subtracted from the target's logit only (the smoothing sum sees z'_y too). Fused: no extra pass over
      the logits. Not differentiable (a ``target_margin`` that requires grad raises, as ``weight``).
    * ``sample_weight`` s (the target's shape, >= 0): each row's loss is multiplied by its s_i (per-sample
      or per-token weights); the ``"mean"`` divisor stays torch's Σ w_y, so s is a per-row rescaling, as
      ``weight`` is in torch's BCE. Costs one multiply per row, no pass over the logits.
    * ``reduction="mean"`` divides by Σ w_y over the non-ignored targets, exactly as torch (NaN when
      every target is ignored); ``"sum"`` adds the rows; ``"none"`` returns them (0 where ignored).

    Accumulates in float32 whatever the logits dtype (bf16/fp16 logits with an fp32 weight work) and
    returns the loss in the logits dtype. Probability targets (same shape as the logits) follow
    torch's semantics but are not fused. ``inplace_backward=True`` writes the gradient into the
    logits during the forward (no second (N, C) buffer); autograd raises if anything else saved the
    logits. Targets outside [0, C) other than ``ignore_index`` raise ``IndexError``; on CUDA that
    check synchronizes once, and ``check=False`` skips it (such rows then give NaN).

    A ``"mean"`` or ``"sum"`` loss of float32/float64 logits with up to 1024 classes is computed in one pass
    that also writes its gradient (``rarekit::cross_entropy_reduced``), which the backward hands to autograd.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got "
                        f"{logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    ignore_index = check_loss_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, ignore_index)
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension, got a scalar")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    refuse_differentiable_weight(weight)
    if inplace_backward:
        _check_inplace_allowed(logits)
    if sample_weight is not None and (target.is_floating_point() or inplace_backward):
        raise ValueError("sample_weight needs class-index targets and inplace_backward=False (the inplace "
                         "kernel writes the gradient with one scale for every row)")
    if target.is_floating_point():
        if ignore_index >= 0:  # as torch, which reserves negative values for "no ignore_index"
            raise ValueError(f"ignore_index={ignore_index} is not supported with probability (floating-point) "
                             "targets")
        if smoothing_mode != "pytorch":
            raise ValueError(f"smoothing_mode={smoothing_mode!r} needs class-index targets; probability targets "
                             "follow torch's smoothing")
        if target_margin is not None:
            raise ValueError("target_margin needs class-index targets (it shifts the target class's logit)")
        return _soft_target_cross_entropy(logits, target, weight, reduction, label_smoothing,
                                          focal_gamma, logit_adjustment, z_loss, inplace_backward)
    if target.dtype == torch.bool:
        raise TypeError("target must hold integer class indices (or class probabilities), got torch.bool")
    rows_logits, rows_target, none_shape = _rows_view(logits, target)
    if rows_logits.shape[1] == 0 and rows_logits.shape[0] > 0:
        raise ValueError(f"logits must have at least one class, got shape {tuple(logits.shape)}")
    classes, device = rows_logits.shape[1], logits.device
    weight = class_vector(weight, "weight", classes, device)
    logit_adjustment = class_vector(logit_adjustment, "logit_adjustment", classes, device)
    target_margin = target_margin_vector(target_margin, classes, device)
    config = (ignore_index, float(label_smoothing), smoothing_mode == "target_weighted",
              float(focal_gamma), float(z_loss))
    if reduction != "none" and not inplace_backward and _reduced_in_one_pass(rows_logits, sample_weight):
        if sample_weight is not None:
            sample_weight = _row_weights(sample_weight, none_shape, logits.device, ops.accumulator_dtype(rows_logits))
        return ops.cross_entropy_reduced(rows_logits, rows_target, weight, logit_adjustment, target_margin,
                                         sample_weight, reduction, config, check)
    divisor = None
    if reduction == "mean":
        divisor = mean_divisor(rows_target, weight, rows_logits.shape[1], ignore_index,
                               ops.accumulator_dtype(rows_logits))
    if inplace_backward:
        if rows_logits.data_ptr() != logits.data_ptr() or not logits.is_contiguous():
            raise ValueError("inplace_backward=True needs contiguous (N, C) logits")
        scale = (1.0 / divisor).reshape(1) if divisor is not None else logits.new_ones(
            1, dtype=ops.accumulator_dtype(logits))
        loss = ops.cross_entropy_inplace(rows_logits, rows_target, weight, logit_adjustment, scale, reduction,
                                         config, check, target_margin)
        if divisor is not None:  # reduction="mean"
            loss = loss + nan_if_zero(divisor)
        return (loss.reshape(none_shape) if reduction == "none" else loss).to(logits.dtype)
    losses = ops.cross_entropy_rows(rows_logits, rows_target, weight, logit_adjustment, *config, check,
                                    target_margin)
    if sample_weight is not None:
        losses = losses * _row_weights(sample_weight, none_shape, logits.device, losses.dtype)
    if reduction == "none":
        return losses.reshape(none_shape).to(logits.dtype)
    total = losses.sum()
    return (total if divisor is None else total / divisor + nan_if_zero(divisor)).to(logits.dtype)


# Up to this many classes, a reduced loss writes its gradient in the forward's pass over the logits (one read
# of the logits, one write of the gradient, no per-row terms): measured on 2 CPU threads (fp32, weighted,
# fwd+bwd) it is faster than the per-row-terms backward at C = 2 ... 100 and for small batches. Larger
# vocabularies keep that backward: the gradient buffer is then not held from the forward to the backward.
_ONE_PASS_MAX_CLASSES = 1024
_ONE_PASS_DTYPES = (torch.float32, torch.float64)


def _reduced_in_one_pass(rows_logits: torch.Tensor, sample_weight) -> bool:
    """Whether a "mean"/"sum" loss takes ``rarekit::cross_entropy_reduced``: compiled kernels, float32 or float64
    logits (a bf16/fp16 gradient times a grad_output other than 1 would be rounded twice), few classes, no
    functorch transform and no forward-mode AD level (they keep the per-row op, whose jvp and vmap rules they
    need), and no ``sample_weight`` that requires grad (the per-row path differentiates it)."""
    return (rows_logits.shape[1] <= _ONE_PASS_MAX_CLASSES and rows_logits.dtype in _ONE_PASS_DTYPES
            and (rows_logits.is_cpu or _backend.native(rows_logits.device)) and _backend._C is not None
            and not _backend._force_reference
            and (torch.compiler.is_compiling() or (not torch._C._are_functorch_transforms_active()
                                                   and forward_ad._current_level < 0))
            and not (isinstance(sample_weight, torch.Tensor) and sample_weight.requires_grad))


def _row_weights(sample_weight, shape: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``sample_weight`` checked (floating point, of the target's shape, on the device, >= 0) and flattened
    to one value per row in ``dtype``."""
    if not isinstance(sample_weight, torch.Tensor) or not sample_weight.is_floating_point():
        raise TypeError(f"sample_weight must be a floating-point tensor of the target's shape {shape}, got "
                        f"{sample_weight.dtype if isinstance(sample_weight, torch.Tensor) else type(sample_weight).__name__}")
    if tuple(sample_weight.shape) != shape:
        raise ValueError(f"sample_weight must have the target's shape {shape} (one weight per row), got "
                         f"{tuple(sample_weight.shape)}")
    if sample_weight.device != device:
        raise ValueError(f"sample_weight is on {sample_weight.device} but the inputs are on {device}")
    if not torch.compiler.is_compiling():
        bad = ~((sample_weight >= 0) & (sample_weight < math.inf))  # NaN is bad too
        if bool(bad.any()):
            raise ValueError(f"sample_weight must be finite and >= 0, found {sample_weight[bad].flatten()[0].item()}")
    return sample_weight.reshape(-1).to(dtype)


def _check_inplace_allowed(logits: torch.Tensor) -> None:
    """inplace_backward overwrites the logits: refused where torch refuses an in-place op, under
    torch.compile (the overwrite is a side effect the compiled graph cannot carry) and under torch.func
    transforms (wrapped logits have no buffer of their own)."""
    if torch.compiler.is_compiling():
        raise ValueError("inplace_backward=True is not supported under torch.compile; the compiled "
                         "cross-entropy already avoids the second (N, C) buffer where it can")
    if torch._C._functorch.is_functorch_wrapped_tensor(logits):
        raise ValueError("inplace_backward=True is not supported under torch.func transforms (grad, vmap, jvp, "
                         "...): their logits are wrappers without a buffer to overwrite; pass inplace_backward=False")
    if logits.requires_grad and torch.is_grad_enabled():
        if logits.is_leaf:
            raise RuntimeError("inplace_backward=True: a leaf Variable that requires grad is being used in an "
                               "in-place operation (the logits would be overwritten by their gradient)")
        base = logits._base
        if base is not None and base.is_leaf and base.requires_grad:
            raise RuntimeError("inplace_backward=True: a view of a leaf Variable that requires grad is being used "
                               "in an in-place operation")


def _soft_target_cross_entropy(logits, target, weight, reduction, label_smoothing, focal_gamma,
                               logit_adjustment, z_loss, inplace_backward):
    from rarekit import reference

    if focal_gamma or logit_adjustment is not None or z_loss or inplace_backward:
        raise ValueError("probability targets support weight, reduction and label_smoothing only; "
                         "focal_gamma, logit_adjustment, z_loss and inplace_backward need class-index targets")
    if target.shape != logits.shape:
        raise ValueError(f"probability targets must have the shape of the logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    flat_logits = logits.unsqueeze(0) if logits.dim() == 1 else logits.movedim(1, -1).reshape(-1, logits.shape[1])
    flat_target = target.unsqueeze(0) if target.dim() == 1 else target.movedim(1, -1).reshape(-1, target.shape[1])
    weight = class_vector(weight, "weight", flat_logits.shape[1], logits.device)
    losses = reference.soft_target_cross_entropy_rows(flat_logits, flat_target, weight, label_smoothing)
    if reduction == "none":
        return losses.reshape(logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else ()).to(logits.dtype)
    total = losses.sum()
    return (total if reduction == "sum" else total / losses.numel()).to(logits.dtype)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` (same keywords, ``weight`` buffer, state_dict) on
    the fused kernels; ``**extras`` are :func:`cross_entropy`'s keywords (``focal_gamma``,
    ``smoothing_mode``, ``z_loss``, ``inplace_backward``, ``check``, ...); ``logit_adjustment`` and
    ``target_margin`` are buffers."""

    logit_adjustment: torch.Tensor | None  # buffers
    target_margin: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, **extras):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        unknown = set(extras) - {"smoothing_mode", "focal_gamma", "logit_adjustment", "target_margin", "z_loss",
                                 "inplace_backward", "check"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        for name in ("logit_adjustment", "target_margin"):
            vector = extras.pop(name, None)
            self.register_buffer(name, vector, persistent=vector is not None)
        self.extras = extras

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing, logit_adjustment=self.logit_adjustment,
                             target_margin=self.target_margin, **self.extras)


class FocalLoss(CrossEntropyLoss):
    """FL = -α_y (1 - p_y)^γ log p_y (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    ``alpha``: per-class weights α (the ``weight`` buffer), or None. The mean divides by Σ α_y."""

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, **extras):
        if not is_real_number(gamma) or not 0 <= gamma < math.inf:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        super().__init__(alpha, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                         focal_gamma=gamma, **extras)
        self.gamma = gamma


def log_prior(class_counts) -> torch.Tensor:
    """log π_k = log(n_k / Σ n); classes never seen count as 1, so the offset stays finite."""
    counts = as_counts(class_counts, "class_counts").double().cpu()
    if counts.numel() == 0:
        raise ValueError("class_counts must hold one count per class, got an empty sequence")
    counts = counts.clamp(min=1)
    return (counts / counts.sum()).log().float()


class LogitAdjustedLoss(CrossEntropyLoss):
    """Cross-entropy on logits + τ log π (Menon et al. 2021, "Long-tail learning via logit
    adjustment"); τ = 1 is Balanced Softmax (Ren et al. 2020). π is the training class prior."""

    def __init__(self, class_counts, tau: float = 1.0, weight: torch.Tensor | None = None, **kwargs):
        if not is_real_number(tau) or not math.isfinite(tau):
            raise ValueError(f"tau must be a finite number, got {tau!r}")
        super().__init__(weight, logit_adjustment=tau * log_prior(class_counts), **kwargs)
        self.tau = tau


class ClassBalancedLoss(CrossEntropyLoss):
    """Class-balanced loss (Cui et al. 2019): weights (1-β)/(1-β^n_y), normalized to mean 1, on
    cross-entropy (``loss="ce"``) or focal loss (``loss="focal"``, with ``gamma``)."""

    def __init__(self, class_counts, beta: float = 0.999, loss: str = "ce", gamma: float = 2.0, **kwargs):
        from rarekit.weights import class_weights

        if loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', got {loss!r}")
        weight = class_weights(torch.as_tensor(class_counts), "effective_number", beta=beta).float()
        super().__init__(weight, focal_gamma=gamma if loss == "focal" else 0.0, **kwargs)
        self.beta, self.loss = beta, loss


class LDAMLoss(CrossEntropyLoss):
    """LDAM loss (Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
    Loss"): cross-entropy after the target logit gives up a margin that grows as its class gets rarer::

        ℓ = w_y · (log Σ_k exp s·z'_k − s·z'_y),   z'_k = z_k − [k = y] · m_y,
        m = ldam_margins(class_counts, max_margin)

    computed as ``cross_entropy(s · z, y, w, target_margin=s · m)`` on the fused kernel, as Cao et al.'s
    reference code scales the margin-adjusted logits by s. The other keywords (``reduction``,
    ``ignore_index``, ``label_smoothing``, ``focal_gamma``, ``logit_adjustment``, ...) are
    :class:`CrossEntropyLoss`'s and act on the scaled logits.

    ``scale`` s defaults to 1, for the plain linear heads most models have: their logits are not
    bounded, so the margins are in logit units already, and multiplying unbounded logits by 30 would
    sharpen the softmax and scale the gradients thirtyfold. Cao et al. use s = 30 because their LDAM
    head is normalized (cosine logits in [-1, 1]); pass ``scale=30`` with such a head.

    Deferred re-weighting (DRW, Cao et al.: class-balanced weights, effective number with β = 0.9999,
    from epoch 160 of 200): replace the ``weight`` buffer when the time comes, e.g.
    ``loss.weight = rarekit.class_weights(class_counts, "effective_number", beta=0.9999).to(device)``.
    The ``margins`` buffer holds m; ``state_dict`` holds ``weight`` once set, and loading one restores
    the phase it was saved in (with or without the weights).
    """

    margins: torch.Tensor  # a buffer

    def __init__(self, class_counts, max_margin: float = 0.5, scale: float = 1.0,
                 weight: torch.Tensor | None = None, **kwargs):
        from rarekit.weights import ldam_margins

        if "target_margin" in kwargs:
            raise TypeError("LDAMLoss takes its target_margin from class_counts and max_margin; pass "
                            "target_margin to CrossEntropyLoss instead")
        if not is_real_number(scale) or not 0 < scale < math.inf:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        super().__init__(weight, **kwargs)
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.max_margin, self.scale = max_margin, scale

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            input, margins = input * self.scale, self.margins * self.scale
        else:
            margins = self.margins
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing, logit_adjustment=self.logit_adjustment,
                             target_margin=margins, **self.extras)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint saved after the DRW switch carries ``weight``, one saved before it does not: the
        module takes the checkpoint's phase either way."""
        saved = state_dict.get(prefix + "weight")
        self.weight = None if saved is None else torch.empty_like(saved, device=self.margins.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
