"""The cross-entropy family's kernels: fake kernels, autograd, and the inplace-backward variant.

``cross_entropy_rows`` returns float32 per-row losses of (rows, C) logits; the reductions are
done by the caller (:mod:`rarekit.losses`).
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference

if _backend._C is not None:
    def _forward_fake(logits, target, weight, logit_adjustment, *args):
        rows = logits.shape[0]
        return logits.new_empty((rows,), dtype=torch.float32), logits.new_empty((rows, 4), dtype=torch.float32)

    torch.library.register_fake("rarekit::cross_entropy_forward")(_forward_fake)
    torch.library.register_fake("rarekit::cross_entropy_forward_inplace")(_forward_fake)

    @torch.library.register_fake("rarekit::cross_entropy_backward")
    def _backward_fake(grad_losses, logits, *args):
        return torch.empty_like(logits)

    def _setup_context(ctx, inputs, output):
        logits, target, weight, logit_adjustment, *config, _check = inputs
        ctx.save_for_backward(logits, target, weight, logit_adjustment, output[1])
        ctx.config = config  # ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss

    def _backward(ctx, grad_losses, _grad_row_terms):
        logits, target, weight, logit_adjustment, row_terms = ctx.saved_tensors
        grad = torch.ops.rarekit.cross_entropy_backward(
            grad_losses, logits, target, weight, logit_adjustment, row_terms, *ctx.config)
        return grad, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("rarekit::cross_entropy_forward", _backward, setup_context=_setup_context)


def cross_entropy_rows(logits, target, weight, logit_adjustment, ignore_index: int, label_smoothing: float,
                       target_weighted: bool, focal_gamma: float, z_loss: float, check: bool) -> torch.Tensor:
    """Per-row losses (float32, differentiable in ``logits``)."""
    if _backend.native(logits.device):
        return torch.ops.rarekit.cross_entropy_forward(
            logits, target, weight, logit_adjustment, ignore_index, label_smoothing, target_weighted,
            focal_gamma, z_loss, check)[0]
    return reference.cross_entropy_rows(logits, target, weight, logit_adjustment, ignore_index, label_smoothing,
                                        target_weighted, focal_gamma, z_loss)


class _InplaceCrossEntropy(torch.autograd.Function):
    """Writes ``scale · ∂loss/∂logits`` into the logits during the forward (Liger Kernel's trick, made
    safe): the version counter of ``logits`` is bumped, so autograd raises if any other node saved
    them for its backward instead of silently reading the gradient (Liger-Kernel#272)."""

    @staticmethod
    def forward(ctx, logits, target, weight, logit_adjustment, grad_scale, reduction, config, check):
        losses, _ = torch.ops.rarekit.cross_entropy_forward_inplace(
            logits, target, weight, logit_adjustment, grad_scale, *config, check)
        torch.autograd.graph.increment_version(logits)
        ctx.gradient, ctx.reduction = logits, reduction
        return losses if reduction == "none" else losses.sum() * grad_scale.squeeze(0)

    @staticmethod
    def backward(ctx, grad_output):
        gradient = ctx.gradient
        scale = grad_output.unsqueeze(1) if ctx.reduction == "none" else grad_output
        if scale.device.type != "cpu" or not bool((scale == 1).all()):  # CUDA: no host sync
            gradient.mul_(scale.to(gradient.dtype))
        return gradient, None, None, None, None, None, None, None


def cross_entropy_inplace(logits, target, weight, logit_adjustment, grad_scale, reduction: str,
                          config: tuple, check: bool) -> torch.Tensor:
    """The reduced loss (or per-row losses for ``reduction="none"``); the logits buffer ends up
    holding the gradient. ``grad_scale`` (shape (1,)) is 1/Σw_y for "mean", 1 otherwise."""
    return _InplaceCrossEntropy.apply(logits, target, weight, logit_adjustment, grad_scale, reduction, config, check)
