"""Fused linear + cross-entropy for language-model heads: the (tokens, vocab) logits are never
materialized, only one chunk of rows at a time.

:func:`linear_cross_entropy` equals ``rarekit.cross_entropy(softcap_fn(F.linear(hidden, classifier,
bias)), target, weight, ...)`` with the same keywords, where ``softcap_fn(z) = s · tanh(z / s)``
(Gemma 2's final logit soft-capping) when ``softcap = s`` is set.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from torch.autograd import forward_ad

from rarekit.counting import is_integer, is_real_number
from rarekit.losses._options import (check_loss_options, class_vector, mean_divisor, nan_if_zero,
                                     refuse_differentiable_weight, target_margin_vector)
from rarekit.losses.cross_entropy import _row_weights
from rarekit.ops.cross_entropy import accumulator_dtype
from rarekit.ops.linear_cross_entropy import FORWARD_AD_UNSUPPORTED, linear_cross_entropy_chunks
from rarekit.ops.linear_cross_entropy import linear_cross_entropy as fused_linear_cross_entropy

DEFAULT_CHUNK_BYTES = 256 * 2**20  # the logits of one chunk of rows


def chunk_rows(rows: int, vocab: int, dtype: torch.dtype, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size``, or the rows split evenly into as few chunks as keep each chunk's
    logits within DEFAULT_CHUNK_BYTES."""
    if chunk_size is not None:
        return chunk_size
    most = max(1, DEFAULT_CHUNK_BYTES // (max(vocab, 1) * torch.empty((), dtype=dtype).element_size()))
    chunks = max(1, -(-rows // most))
    return max(1, -(-rows // chunks))


def _check_inputs(hidden, classifier, target, bias):
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
        raise TypeError(f"hidden must be a floating-point tensor, got "
                        f"{hidden.dtype if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 2:
        raise ValueError(f"classifier must be a (vocab, hidden) tensor like nn.Linear.weight, got "
                         f"{tuple(classifier.shape) if isinstance(classifier, torch.Tensor) else type(classifier).__name__}")
    if hidden.dim() == 0 or hidden.shape[-1] != classifier.shape[1]:
        raise ValueError(f"hidden must have shape (..., {classifier.shape[1]}) to match classifier "
                         f"{tuple(classifier.shape)}, got {tuple(hidden.shape)}")
    if classifier.dtype != hidden.dtype or classifier.device != hidden.device:
        raise TypeError(f"classifier must have the dtype and device of hidden ({hidden.dtype}, {hidden.device}), "
                        f"got {classifier.dtype}, {classifier.device}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    if target.shape != hidden.shape[:-1]:
        raise ValueError(f"target must have shape {tuple(hidden.shape[:-1])} for hidden of shape "
                         f"{tuple(hidden.shape)}, got {tuple(target.shape)}")
    if target.device != hidden.device:
        raise ValueError(f"target is on {target.device} but hidden is on {hidden.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (classifier.shape[0],):
            raise ValueError(f"bias must have shape ({classifier.shape[0]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise TypeError(f"bias must have the dtype and device of hidden ({hidden.dtype}, {hidden.device}), "
                            f"got {bias.dtype}, {bias.device}")


def _check_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, softcap, chunk_size,
                   ignore_index) -> int:
    ignore_index = check_loss_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, ignore_index)
    if softcap is not None and (not is_real_number(softcap) or not 0 < softcap < math.inf):  # also NaN; traces
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    if chunk_size is not None and (not is_integer(chunk_size) or not 1 <= chunk_size < 2**63):
        raise ValueError(f"chunk_size must be None or a positive number of rows below 2**63 (an int64), "
                         f"got {chunk_size!r}")
    return ignore_index


def _autocast_as_linear(tensor, device_type: str):
    """``tensor`` cast as autocast casts the inputs of ``F.linear``: floating-point tensors of the
    autocast device other than float64 go to the autocast dtype; float64 and the rest stay."""
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dtype != torch.float64 \
            and tensor.device.type == device_type:
        return tensor.to(torch.get_autocast_dtype(device_type))
    return tensor


def _refuse_forward_ad(*tensors) -> None:
    """Forward-mode AD (dual tensors) is not implemented: raise rather than drop a tangent."""
    if torch.compiler.is_compiling():
        return
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and forward_ad.unpack_dual(tensor).tangent is not None:
            raise RuntimeError(FORWARD_AD_UNSUPPORTED)


def linear_cross_entropy(hidden: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None, *, bias: torch.Tensor | None = None,
                         ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                         smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                         logit_adjustment: torch.Tensor | None = None, target_margin: torch.Tensor | None = None,
                         z_loss: float = 0.0, sample_weight: torch.Tensor | None = None,
                         softcap: float | None = None, chunk_size: int | None = None,
                         check: bool = True) -> torch.Tensor:
    """``rarekit.cross_entropy(softcap_fn(hidden @ classifierᵀ + bias), target, weight, ...)``, chunked.

    ``hidden`` is (..., D), ``classifier`` (V, D) as ``nn.Linear.weight``, ``target`` (...), the
    class vectors ``weight`` / ``logit_adjustment`` / ``target_margin`` (V,) and ``sample_weight`` (the
    target's shape: per-row multipliers, the "mean" divisor stays Σ w_y); the other keywords are
    :func:`rarekit.cross_entropy`'s, with the same semantics. ``softcap = s`` caps the logits to
    ``s · tanh(z / s)`` (Gemma 2) before the loss. Only ``chunk_size`` rows of logits exist at a time
    (default: as many as fit 256 MiB; one more such buffer with ``softcap`` during training); the
    forward also computes the gradients of ``hidden``, ``classifier``, ``bias`` and ``logit_adjustment``
    (Liger Kernel's strategy; with ``sample_weight`` as the per-row scale of the kernel's gradient), so
    the first backward of a reduced loss only scales them, and ``reduction="none"`` (or a
    ``sample_weight`` that requires grad) recomputes the chunks in the backward. Matmuls run in the
    input dtype, the loss in float32 (float64 for float64), and the classifier's gradient accumulates in
    float32. A ``weight`` or ``target_margin`` that requires grad raises (as torch's ``nll_loss``); the
    result is differentiable once, in reverse mode (``torch.func.grad``, ``vjp``, ``jacrev`` and ``vmap``
    work; forward mode and second derivatives raise). ``check=False`` skips the target range check (one
    host sync on CUDA). Under ``torch.autocast``, ``hidden``, ``classifier`` and ``bias`` are cast to the
    autocast dtype first, as ``F.linear`` casts them: float64 tensors are kept.
    """
    if isinstance(hidden, torch.Tensor) and torch.is_autocast_enabled(hidden.device.type):
        device_type = hidden.device.type
        hidden, classifier, bias = (_autocast_as_linear(tensor, device_type) for tensor in (hidden, classifier, bias))
        with torch.autocast(device_type, enabled=False):  # the op's own matmuls keep their dtypes
            return linear_cross_entropy(hidden, classifier, target, weight, bias=bias, ignore_index=ignore_index,
                                        reduction=reduction, label_smoothing=label_smoothing,
                                        smoothing_mode=smoothing_mode, focal_gamma=focal_gamma,
                                        logit_adjustment=logit_adjustment, target_margin=target_margin,
                                        z_loss=z_loss, sample_weight=sample_weight, softcap=softcap,
                                        chunk_size=chunk_size, check=check)
    _check_inputs(hidden, classifier, target, bias)
    weight = class_vector(weight, "weight", classifier.shape[0], classifier.device)
    logit_adjustment = class_vector(logit_adjustment, "logit_adjustment", classifier.shape[0], classifier.device)
    target_margin = target_margin_vector(target_margin, classifier.shape[0], classifier.device)
    ignore_index = _check_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, softcap,
                                  chunk_size, ignore_index)
    refuse_differentiable_weight(weight)
    _refuse_forward_ad(hidden, classifier, bias, weight, logit_adjustment, target_margin)
    rows_hidden, rows_target = hidden.reshape(target.numel(), hidden.shape[-1]), target.reshape(-1)
    options = (ignore_index, float(label_smoothing), smoothing_mode == "target_weighted", float(focal_gamma),
               float(z_loss), None if softcap is None else float(softcap),
               chunk_rows(rows_hidden.shape[0], classifier.shape[0], hidden.dtype, chunk_size), bool(check))
    accumulate = accumulator_dtype(hidden)
    row_weights = None if sample_weight is None else _row_weights(sample_weight, tuple(target.shape), hidden.device,
                                                                  accumulate)
    divisor = None
    if reduction == "mean":
        divisor = mean_divisor(rows_target, weight, classifier.shape[0], ignore_index, accumulate)
    trained = torch.is_grad_enabled() and any(
        tensor is not None and tensor.requires_grad for tensor in (hidden, classifier, bias, logit_adjustment))
    learned_row_weights = row_weights is not None and row_weights.requires_grad and torch.is_grad_enabled()
    if not trained or reduction == "none" or learned_row_weights:
        if trained:  # the backward recomputes the chunks with the upstream per-row gradients
            losses = fused_linear_cross_entropy(rows_hidden, classifier, bias, logit_adjustment, rows_target, weight,
                                                None, options, target_margin)
        else:  # forward only, same memory bound
            losses = linear_cross_entropy_chunks(rows_hidden, classifier, bias, rows_target, weight, logit_adjustment,
                                                 target_margin, None, *options[:-1], [False] * 4, options[-1])[0]
        if row_weights is not None:
            losses = losses * row_weights
        if reduction == "none":
            return losses.reshape(target.shape).to(hidden.dtype)
        loss = losses.sum() if divisor is None else losses.sum() / divisor + nan_if_zero(divisor)
        return loss.to(hidden.dtype)
    scale = (1.0 / divisor).reshape(1) if divisor is not None else hidden.new_ones((1,), dtype=accumulate)
    if row_weights is not None:  # one scale per row: the kernel's gradient of Σ_i s_i loss_i
        scale = row_weights * scale
    loss = fused_linear_cross_entropy(rows_hidden, classifier, bias, logit_adjustment, rows_target, weight, scale,
                                      options, target_margin)
    if divisor is not None:
        loss = loss + nan_if_zero(divisor)
    return loss.to(hidden.dtype)


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`: ``weight`` (and ``logit_adjustment``, ``target_margin``)
    are buffers; ``forward(hidden, classifier, target, bias=None, sample_weight=None)``."""

    weight: torch.Tensor | None  # buffers
    logit_adjustment: torch.Tensor | None
    target_margin: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                 logit_adjustment: torch.Tensor | None = None, target_margin: torch.Tensor | None = None,
                 z_loss: float = 0.0, softcap: float | None = None, chunk_size: int | None = None, check: bool = True):
        super().__init__()
        for name, vector in (("weight", weight), ("logit_adjustment", logit_adjustment),
                             ("target_margin", target_margin)):
            self.register_buffer(name, vector, persistent=vector is not None)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.smoothing_mode, self.focal_gamma, self.z_loss = smoothing_mode, focal_gamma, z_loss
        self.softcap, self.chunk_size, self.check = softcap, chunk_size, check

    def forward(self, hidden: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        return linear_cross_entropy(hidden, classifier, target, self.weight, bias=bias,
                                    ignore_index=self.ignore_index, reduction=self.reduction,
                                    label_smoothing=self.label_smoothing, smoothing_mode=self.smoothing_mode,
                                    focal_gamma=self.focal_gamma, logit_adjustment=self.logit_adjustment,
                                    target_margin=self.target_margin, sample_weight=sample_weight,
                                    z_loss=self.z_loss, softcap=self.softcap, chunk_size=self.chunk_size,
                                    check=self.check)
