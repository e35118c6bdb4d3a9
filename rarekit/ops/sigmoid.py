"""The sigmoid family's kernels (``rarekit::sigmoid_loss_forward`` / ``_backward``): fake kernels,
autograd, forward-mode AD and the reference path.

``sigmoid_loss`` returns the loss per element (``reduction`` 0, in the input dtype) or reduced (1 mean,
2 sum: a scalar in the accumulator dtype, float64 for float64 inputs and float32 otherwise).

Derivatives, with G = ∂ℓ/∂x and H = ∂ℓ/∂y per element (one pass of the backward kernel):
- input and target: ``grad_loss · G`` and ``grad_loss · H`` (times 1/numel for the mean). A reduced loss whose
  input alone needs a gradient gets G written by the forward pass (``compute_grad``): the backward only
  scales it, and not at all for the usual upstream gradient of 1 on CPU;
- forward mode (``torch.func.jvp``, dual tensors): ``ℓ̇ = G ẋ + H ẏ`` (summed when reduced);
- ``weight``, ``pos_weight`` and a tensor ``alpha``: not differentiable, as torch's BCE; double backward raises.
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference_sigmoid
from rarekit.ops.cross_entropy import _once_differentiable, accumulator_dtype

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def _no_output(input: torch.Tensor) -> torch.Tensor:
    return input.new_empty((0,))


def _dense_like(input: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _is_plain_cpu_one(grad_loss: torch.Tensor) -> bool:
    """True for an upstream gradient of exactly 1 in a real CPU tensor (not traced, not a functorch wrapper):
    the forward's gradient is then the answer, without a multiplication pass."""
    return (type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(grad_loss) and float(grad_loss) == 1.0)


if _backend._C is not None:
    @torch.library.register_fake("rarekit::sigmoid_loss_forward")
    def _forward_fake(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos, gamma_neg, clip, pt_form,
                      reduction, compute_grad):
        if reduction == 0:
            return _dense_like(input), _no_output(input)
        loss = input.new_empty((), dtype=accumulator_dtype(input))
        return loss, (_dense_like(input) if compute_grad else _no_output(input))

    @torch.library.register_fake("rarekit::sigmoid_loss_backward")
    def _backward_fake(grad_loss, input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos, gamma_neg, clip,
                       pt_form, reduction, grad_mask):
        return tuple(_dense_like(input) if needed else _no_output(input) for needed in grad_mask)

    def _setup_context(ctx, inputs, output):
        input, target, weight, pos_weight, alpha_tensor, *config, compute_grad = inputs
        ctx.save_for_backward(input, target, weight, pos_weight, alpha_tensor, output[1])
        ctx.config = tuple(config)  # alpha, gamma_pos, gamma_neg, clip, pt_form, reduction
        ctx.gradient_in_forward = bool(compute_grad) and config[-1] != 0

    def _gradients(ctx, grad_loss, needs_input: bool, needs_target: bool):
        """(grad_input, grad_target), None where not needed."""
        input, target, weight, pos_weight, alpha_tensor, saved = ctx.saved_tensors
        if ctx.gradient_in_forward and not needs_target:
            if not needs_input:
                return None, None
            if _is_plain_cpu_one(grad_loss):  # the usual loss.backward(): the forward's gradient as it is,
                ctx.gradient_in_forward = False  # handed out once (a retained graph's next backward recomputes)
                return saved, None
            return saved * grad_loss.to(saved.dtype), None
        with torch.no_grad():
            grad_input, grad_target = torch.ops.rarekit.sigmoid_loss_backward(
                grad_loss, input, target, weight, pos_weight, alpha_tensor, *ctx.config, [needs_input, needs_target])
        return (grad_input if needs_input else None), (grad_target if needs_target else None)

    def _backward(ctx, grad_loss, _grad_saved):
        grad_input, grad_target = _gradients(ctx, grad_loss, *ctx.needs_input_grad[:2])
        input, target = ctx.saved_tensors[:2]
        sources = (input, target, grad_loss)
        if grad_input is not None:
            grad_input = _once_differentiable(grad_input, *sources)
        if grad_target is not None:
            grad_target = _once_differentiable(grad_target, *sources)
        return grad_input, grad_target, None, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("rarekit::sigmoid_loss_forward", _backward, setup_context=_setup_context)


class _SigmoidLoss(torch.autograd.Function):
    """The eager entry to ``rarekit::sigmoid_loss_forward``: the op's own backward plus forward-mode AD
    and the functorch transforms, which the op's registration cannot carry (torch.compile calls the op)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, pos_weight, alpha_tensor, config, compute_grad):
        return torch.ops.rarekit.sigmoid_loss_forward(input, target, weight, pos_weight, alpha_tensor, *config,
                                                      compute_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, pos_weight, alpha_tensor, config, compute_grad = inputs
        _setup_context(ctx, (input, target, weight, pos_weight, alpha_tensor, *config, compute_grad), output)
        ctx.save_for_forward(input, target, weight, pos_weight, alpha_tensor, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_loss, grad_saved):
        return _backward(ctx, grad_loss, grad_saved)[:7]

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, weight_tangent, pos_weight_tangent, alpha_tangent, _config,
            _compute_grad):
        for name, tangent in (("weight", weight_tangent), ("pos_weight", pos_weight_tangent),
                              ("focal_alpha", alpha_tangent)):
            if tangent is not None and bool(tangent.ne(0).any()):  # autograd may pass zeros
                raise RuntimeError(f"rarekit.binary_cross_entropy_with_logits: forward-mode AD through `{name}` is "
                                   "not supported (the loss is not differentiable in it, as torch's BCE)")
        input, target = ctx.saved_tensors[:2]
        reduced = ctx.config[-1] != 0
        ones = (input.new_ones((), dtype=accumulator_dtype(input)) if reduced
                else torch.ones_like(input, memory_format=torch.contiguous_format))
        with torch.no_grad():
            grad_input, grad_target = torch.ops.rarekit.sigmoid_loss_backward(
                ones, input, target, *ctx.saved_tensors[2:5], *ctx.config,
                [input_tangent is not None, target_tangent is not None])
        tangent = torch.zeros_like(ones)
        for gradient, direction in ((grad_input, input_tangent), (grad_target, target_tangent)):
            if direction is not None:
                product = gradient * direction
                tangent = tangent + (product.sum(dtype=ones.dtype) if reduced else product)
        return tangent, None


def sigmoid_loss(input, target, weight, pos_weight, alpha_tensor, alpha: float | None, gamma_pos: float,
                 gamma_neg: float, clip: float, pt_form: bool, reduction: int) -> torch.Tensor:
    """The loss (see the module docstring), differentiable in ``input`` and ``target``."""
    config = (alpha, gamma_pos, gamma_neg, clip, pt_form, reduction)
    if _backend.native(input.device):
        compute_grad = (reduction != 0 and input.requires_grad and not target.requires_grad
                        and torch.is_grad_enabled())
        if torch.compiler.is_compiling():
            return torch.ops.rarekit.sigmoid_loss_forward(input, target, weight, pos_weight, alpha_tensor, *config,
                                                          compute_grad)[0]
        return _SigmoidLoss.apply(input, target, weight, pos_weight, alpha_tensor, config, compute_grad)[0]
    return reference_sigmoid.sigmoid_loss(input, target, weight, pos_weight, alpha_tensor, *config)
