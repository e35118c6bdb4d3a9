"""The fused linear + cross-entropy kernel: its fake kernel, its reference path and its autograd.

``linear_cross_entropy_chunks`` returns the per-row losses of softcap(hidden @ classifierᵀ + bias),
and, given ``grad_scale`` c, the gradients of Σ_i c_i loss_i, computed chunk by chunk during the
forward (Liger Kernel's strategy). :class:`_FusedLinearCrossEntropy` turns that into autograd:
for a reduced loss (c = 1/Σw_y or 1) the first backward only scales the saved gradients by the
upstream scalar (a later one, through a retained graph, recomputes them); for ``reduction="none"``
the backward recomputes the chunks with c = the upstream per-row gradient, so no gradient depends
on a guess about the upstream.
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference
from rarekit.ops.cross_entropy import _once_differentiable, _raise_first_out_of_range, accumulator_dtype

if _backend._C is not None:
    @torch.library.register_fake("rarekit::linear_cross_entropy_forward")
    def _forward_fake(hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale, *args):
        grad_mask = args[-2]
        losses = hidden.new_empty((hidden.shape[0],), dtype=accumulator_dtype(hidden))
        inputs = (hidden, classifier, bias, logit_adjustment)
        grads = [torch.empty_like(tensor, memory_format=torch.contiguous_format)
                 if grad_scale is not None and wanted and tensor is not None else hidden.new_empty((0,))
                 for tensor, wanted in zip(inputs, grad_mask)]
        return losses, *grads


def _reference_forward(hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale,
                       ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss, softcap, chunk_rows,
                       grad_mask, check):
    """The op on the references, chunk by chunk; each chunk's gradients come from autograd."""
    if check or hidden.device.type == "cpu":  # as the kernels: always on CPU
        _raise_first_out_of_range(target, classifier.shape[0], ignore_index)
    config = (ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss, softcap)
    accumulate = accumulator_dtype(hidden)
    empty = hidden.new_empty((0,))
    # the inputs whose gradient the op returns, besides hidden (gathered per chunk)
    wanted = {name: tensor for name, tensor, asked in zip(("classifier", "bias", "logit_adjustment"),
                                                          (classifier, bias, logit_adjustment), grad_mask[1:])
              if asked and tensor is not None and grad_scale is not None}
    hidden_grad = bool(grad_mask[0]) and grad_scale is not None
    totals = {name: torch.zeros_like(tensor, dtype=accumulate) for name, tensor in wanted.items()}
    losses, grad_hidden = [], []
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        with torch.enable_grad():
            leaves = {name: tensor.detach().requires_grad_() for name, tensor in wanted.items()}
            rows_hidden = hidden[rows].detach().requires_grad_(hidden_grad)
            inputs = {"classifier": classifier, "bias": bias, "logit_adjustment": logit_adjustment, **leaves}
            row_losses = reference.linear_cross_entropy_rows(
                rows_hidden, inputs["classifier"], target[rows], inputs["bias"], weight, inputs["logit_adjustment"],
                *config, target_margin).to(accumulate)
            sources = ([rows_hidden] if hidden_grad else []) + list(leaves.values())
            if sources:
                scale = grad_scale if grad_scale.shape[0] == 1 else grad_scale[rows]
                grads = list(torch.autograd.grad((row_losses * scale).sum(), sources))
                if hidden_grad:
                    grad_hidden.append(grads.pop(0))
                for total, part in zip(totals.values(), grads):
                    total += part
        losses.append(row_losses.detach())
    losses = torch.cat(losses) if losses else hidden.new_empty((0,), dtype=accumulate)
    if grad_scale is None:
        return losses, empty, empty, empty, empty
    if hidden_grad:
        grad_hidden = torch.cat(grad_hidden) if grad_hidden else torch.empty_like(hidden)
    else:
        grad_hidden = empty
    totals = {name: total.to(wanted[name].dtype) for name, total in totals.items()}
    return (losses, grad_hidden, totals.get("classifier", empty), totals.get("bias", empty),
            totals.get("logit_adjustment", empty))


def linear_cross_entropy_chunks(hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale,
                                ignore_index: int, label_smoothing: float, target_weighted: bool, focal_gamma: float,
                                z_loss: float, softcap: float | None, chunk_rows: int, grad_mask: list[bool],
                                check: bool):
    """(losses, grad_hidden, grad_classifier, grad_bias, grad_logit_adjustment), each gradient computed where
    ``grad_mask`` (hidden, classifier, bias, logit_adjustment) asks for it; see the op's schema."""
    args = (hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale, ignore_index,
            label_smoothing, target_weighted, focal_gamma, z_loss, softcap, chunk_rows,
            [bool(wanted) for wanted in grad_mask], check)
    if _backend.native(hidden.device):
        return torch.ops.rarekit.linear_cross_entropy_forward(*args)
    return _reference_forward(*args)


def _needs_scaling(scale: torch.Tensor) -> bool:
    """False when the upstream gradient is 1 (loss.backward()), checked on the CPU only. On CUDA (no host
    sync), while compiling and under the torch.func transforms, always True."""
    return (scale.device.type != "cpu" or torch.compiler.is_compiling()
            or torch._C._functorch.is_functorch_wrapped_tensor(scale) or not bool(scale == 1))


def _scaled(grad: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """``grad · upstream``, in place (the forward's gradients are this backward's alone), except while
    compiling and under vmap (torch.func.jacrev, where the upstream is batched and the gradient is not)."""
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(upstream):
        return grad * upstream.to(grad.dtype)
    return grad.mul_(upstream.to(grad.dtype))


FORWARD_AD_UNSUPPORTED = ("rarekit.linear_cross_entropy does not support forward-mode AD (dual tensors, torch.func.jvp, "
                          "jacfwd, hessian); compose F.linear with rarekit.cross_entropy for that")


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """forward(hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale, options,
    grad_mask) returns the per-row losses (``grad_scale`` None: ``reduction="none"``), or ``Σ_i c_i losses_i``
    (``grad_scale`` c: (1,), or (rows,) with per-row weights) followed by the gradients of the inputs that
    ``grad_mask`` names (not differentiable).

    The gradients computed by the forward are handed to autograd by the first backward, scaled in
    place and without a copy, and dropped: a later backward through a retained graph recomputes them,
    so that no two backwards share storage. Written with ``setup_context`` for the torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale, options,
                grad_mask):
        losses, *grads = linear_cross_entropy_chunks(
            hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale, *options[:-1],
            grad_mask, options[-1])
        if grad_scale is None:  # reduction="none": the backward recomputes with the upstream gradients
            return losses
        if grad_scale.shape[0] == 1:
            return (losses.sum() * grad_scale.squeeze(0)).to(losses.dtype), *grads
        return (losses * grad_scale.to(losses.dtype)).sum(), *grads

    @staticmethod
    def setup_context(ctx, inputs, output):
        (hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale, options,
         grad_mask) = inputs
        ctx.options, ctx.grad_mask, ctx.reduced = options, grad_mask, grad_scale is not None
        ctx.save_for_backward(hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale)
        ctx.grads = None
        if ctx.reduced:
            ctx.grads = list(output[1:])
            ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, grad_output, *_unused):
        hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None
        upstream = grad_output.detach()
        if grads is None:  # reduction="none", or a second backward through a retained graph
            upstream = upstream.to(accumulator_dtype(hidden))
            with torch.no_grad():  # the op's out= matmuls refuse a graph (create_graph=True)
                _, *grads = linear_cross_entropy_chunks(
                    hidden, classifier, bias, target, weight, logit_adjustment, target_margin,
                    (grad_scale * upstream).reshape(-1) if ctx.reduced else upstream, *ctx.options[:-1],
                    ctx.grad_mask, False)
        elif _needs_scaling(upstream):
            grads = [_scaled(grad, upstream) if wanted else grad for grad, wanted in zip(grads, ctx.grad_mask)]
        sources = (hidden, classifier, bias, logit_adjustment, grad_output)
        return (*(_once_differentiable(grad, *sources) if wanted else None for grad, wanted in zip(grads, ctx.grad_mask)),
                None, None, None, None, None, None)


class _EagerFusedLinearCrossEntropy(_FusedLinearCrossEntropy):
    """The eager entry: a forward-mode tangent that reaches the op (torch.func.hessian, jacfwd) raises
    naming the function. (torch.compile uses the base class: dynamo does not trace a custom jvp.)"""

    @staticmethod
    def jvp(ctx, *_):
        raise RuntimeError(FORWARD_AD_UNSUPPORTED)


def linear_cross_entropy(hidden, classifier, bias, logit_adjustment, target, weight, grad_scale, options,
                         target_margin=None):
    """Differentiable entry point; ``options`` = (ignore_index, label_smoothing, target_weighted,
    focal_gamma, z_loss, softcap, chunk_rows, check); ``grad_scale`` (1,) or, with per-row weights,
    (rows,). Only the gradients autograd may ask for are computed: a frozen classifier skips its
    (classes, dim) product."""
    grad_mask = [torch.is_grad_enabled() and tensor is not None and tensor.requires_grad
                 for tensor in (hidden, classifier, bias, logit_adjustment)]
    function = _FusedLinearCrossEntropy if torch.compiler.is_compiling() else _EagerFusedLinearCrossEntropy
    result = function.apply(hidden, classifier, bias, logit_adjustment, target, weight, target_margin, grad_scale,
                            options, grad_mask)
    return result if grad_scale is None else result[0]
