"""The cross-entropy family's kernels: fake kernels, autograd, and the inplace-backward variant.

``cross_entropy_rows`` returns float32 per-row losses of (rows, C) logits; the reductions are
done by the caller (:mod:`rarekit.losses`).
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference
from rarekit.ops._checks import first_out_of_range


class _NoSecondDerivative(torch.autograd.Function):
    """Wraps a gradient that the kernels computed outside autograd: differentiating it again raises,
    instead of autograd's silent zeros (or, for the inplace path, a walk through the logits' history)."""

    @staticmethod
    def forward(ctx, gradient):
        return gradient.view_as(gradient)

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("rarekit.cross_entropy is differentiable once: double backward (a second derivative "
                           "through autograd.grad(..., create_graph=True)) is not supported")


def _once_differentiable(gradient: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # the usual backward (create_graph=False)
        return gradient
    return _NoSecondDerivative.apply(gradient.detach().requires_grad_())


if _backend._C is not None:
    def _forward_fake(logits, target, weight, logit_adjustment, *args):
        rows = logits.shape[0]
        return logits.new_empty((rows,), dtype=torch.float32), logits.new_empty((rows, 4), dtype=torch.float32)

    torch.library.register_fake("rarekit::cross_entropy_forward")(_forward_fake)
    torch.library.register_fake("rarekit::cross_entropy_forward_inplace")(_forward_fake)

    @torch.library.register_fake("rarekit::cross_entropy_backward")
    def _backward_fake(grad_losses, logits, *args):
        # the kernel writes a contiguous gradient whatever the strides of the logits
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        logits, target, weight, logit_adjustment, *config, _check = inputs
        ctx.save_for_backward(logits, target, weight, logit_adjustment, output[1])
        ctx.config = config  # ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss

    def _backward(ctx, grad_losses, _grad_row_terms):
        logits, target, weight, logit_adjustment, row_terms = ctx.saved_tensors
        with torch.no_grad():
            grad = torch.ops.rarekit.cross_entropy_backward(
                grad_losses, logits, target, weight, logit_adjustment, row_terms, *ctx.config)
        return _once_differentiable(grad), None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("rarekit::cross_entropy_forward", _backward, setup_context=_setup_context)


def _raise_first_out_of_range(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    """The reference path's target check, with the compiled kernels' message (one host sync)."""
    found = first_out_of_range(target, classes, ignore_index)
    if found is not None:
        row, value = found
        raise IndexError(f"rarekit.cross_entropy: target[{row}] = {value} is out of range for {classes} "
                         f"classes (and is not ignore_index={ignore_index})")


def _check_reference_targets(logits, target, ignore_index: int, check: bool) -> None:
    if check or logits.device.type == "cpu":  # as the kernels: always on CPU
        _raise_first_out_of_range(target, logits.shape[1], ignore_index)


def cross_entropy_rows(logits, target, weight, logit_adjustment, ignore_index: int, label_smoothing: float,
                       target_weighted: bool, focal_gamma: float, z_loss: float, check: bool) -> torch.Tensor:
    """Per-row losses (float32, differentiable in ``logits``)."""
    if _backend.native(logits.device):
        return torch.ops.rarekit.cross_entropy_forward(
            logits, target, weight, logit_adjustment, ignore_index, label_smoothing, target_weighted,
            focal_gamma, z_loss, check)[0]
    _check_reference_targets(logits, target, ignore_index, check)
    return reference.cross_entropy_rows(logits, target, weight, logit_adjustment, ignore_index, label_smoothing,
                                        target_weighted, focal_gamma, z_loss)


def _reference_forward_inplace(logits, target, weight, logit_adjustment, grad_scale, config, check):
    """The reference path of ``cross_entropy_forward_inplace``: per-row losses, and the logits
    overwritten with ``grad_scale · ∂(Σ losses)/∂logits`` (computed by autograd on a float32 copy)."""
    _check_reference_targets(logits, target, config[0], check)
    with torch.enable_grad():
        work = logits.detach().float().requires_grad_()
        losses = reference.cross_entropy_rows(work, target, weight, logit_adjustment, *config)
        gradient, = torch.autograd.grad(losses.sum(), work)
    logits.copy_(gradient * grad_scale.float())
    return losses.detach()


class _InplaceCrossEntropy(torch.autograd.Function):
    """Writes ``scale · ∂loss/∂logits`` into the logits during the forward (Liger Kernel's trick, made
    safe): the version counter of ``logits`` is bumped, so autograd raises if any other node saved
    them for its backward instead of silently reading the gradient (Liger-Kernel#272)."""

    @staticmethod
    def forward(ctx, logits, target, weight, logit_adjustment, grad_scale, reduction, config, check):
        if _backend.native(logits.device):
            losses, _ = torch.ops.rarekit.cross_entropy_forward_inplace(
                logits, target, weight, logit_adjustment, grad_scale, *config, check)
        else:
            losses = _reference_forward_inplace(logits, target, weight, logit_adjustment, grad_scale, config, check)
        torch.autograd.graph.increment_version(logits)
        ctx.gradient, ctx.reduction = logits, reduction
        return losses if reduction == "none" else losses.sum() * grad_scale.squeeze(0)

    @staticmethod
    def backward(ctx, grad_output):
        gradient = ctx.gradient.detach()  # the logits buffer, not the logits' history
        scale = grad_output.detach().unsqueeze(1) if ctx.reduction == "none" else grad_output.detach()
        if scale.device.type != "cpu" or not bool((scale == 1).all()):  # CUDA: no host sync
            gradient.mul_(scale.to(gradient.dtype))
        return _once_differentiable(gradient), None, None, None, None, None, None, None


def cross_entropy_inplace(logits, target, weight, logit_adjustment, grad_scale, reduction: str,
                          config: tuple, check: bool) -> torch.Tensor:
    """The reduced loss (or per-row losses for ``reduction="none"``); the logits buffer ends up
    holding the gradient. ``grad_scale`` (shape (1,)) is 1/Σw_y for "mean", 1 otherwise."""
    return _InplaceCrossEntropy.apply(logits, target, weight, logit_adjustment, grad_scale, reduction, config, check)
