"""The cross-entropy family's kernels: fake kernels, autograd, and the inplace-backward variant.

``cross_entropy_rows`` returns per-row losses of (rows, C) logits in the accumulator dtype (float64
for float64 logits, float32 otherwise); the reductions are done by the caller (:mod:`rarekit.losses`).

Derivatives, for per-row losses ℓ_i and G = ∂ℓ/∂z (one backward pass of the kernel):
- logits: ``grad_losses[:, None] · G``; logit adjustment a (z' = z + a): the column sum of that;
- forward mode (``torch.func.jvp``, dual tensors): ``ℓ̇_i = Σ_k G_ik (ż_ik + ȧ_k)``;
- ``weight`` and ``target_margin`` m (z'_y = z_y + a_y - m_y): not differentiable, as the weight in torch's
  ``nll_loss`` (callers refuse either when it requires grad; a forward-mode tangent raises); double
  backward raises.
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference
from rarekit.ops._checks import first_out_of_range


def accumulator_dtype(logits: torch.Tensor) -> torch.dtype:
    """float64 for float64 logits, float32 for float32, bfloat16 and float16 logits."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class _NoSecondDerivative(torch.autograd.Function):
    """Wraps a gradient that the kernels computed outside autograd: differentiating it again raises,
    instead of autograd's silent zeros (or, for the inplace path, a walk through the logits' history).
    The ``sources`` (the inputs the gradient depends on) connect it to the graph, so that
    ``autograd.grad(gradient, inputs)`` reaches the raise instead of answering None. Written with
    ``setup_context``, so that the torch.func transforms (hessian, jacrev of grad) reach it too."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gradient, *sources):
        return gradient.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError("rarekit's fused losses are differentiable once: double backward (a second derivative "
                           "through autograd.grad(..., create_graph=True), torch.func.hessian, jacrev of grad) "
                           "is not supported")

    @staticmethod
    def jvp(ctx, *_):
        raise RuntimeError("rarekit's fused losses are differentiable once: a forward-mode derivative of their "
                           "gradient (torch.func.hessian, jacfwd of grad) is not supported")


def _once_differentiable(gradient: torch.Tensor, *sources) -> torch.Tensor:
    """``gradient``, made to raise if differentiated again (create_graph=True, the torch.func transforms)."""
    if not torch.is_grad_enabled():
        return gradient  # the usual backward (create_graph=False)
    differentiable = [source for source in sources if isinstance(source, torch.Tensor) and source.requires_grad]
    if not differentiable:
        differentiable = [gradient.detach().requires_grad_()]
    return _NoSecondDerivative.apply(gradient.detach(), *differentiable)


def _adjustment_gradient(gradient: torch.Tensor, needed: bool, *sources) -> torch.Tensor | None:
    """∂/∂a of Σ_i ℓ_i(z_i + a) given the logits' gradient: its column sum."""
    return _once_differentiable(gradient.sum(0), *sources) if needed else None


if _backend._C is not None:
    def _forward_fake(logits, target, weight, logit_adjustment, *args):
        rows, dtype = logits.shape[0], accumulator_dtype(logits)
        return logits.new_empty((rows,), dtype=dtype), logits.new_empty((rows, 4), dtype=dtype)

    torch.library.register_fake("rarekit::cross_entropy_forward")(_forward_fake)
    torch.library.register_fake("rarekit::cross_entropy_forward_inplace")(_forward_fake)

    @torch.library.register_fake("rarekit::cross_entropy_backward")
    def _backward_fake(grad_losses, logits, *args):
        # the kernel writes a contiguous gradient whatever the strides of the logits
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        logits, target, weight, logit_adjustment, target_margin, *config, _check = inputs
        ctx.save_for_backward(logits, target, weight, logit_adjustment, target_margin, output[1])
        ctx.config = config  # ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss

    def _logits_gradient(ctx, grad_losses):
        logits, target, weight, logit_adjustment, target_margin, row_terms = ctx.saved_tensors
        with torch.no_grad():
            return torch.ops.rarekit.cross_entropy_backward(
                grad_losses, logits, target, weight, logit_adjustment, target_margin, row_terms, *ctx.config)

    def _backward(ctx, grad_losses, _grad_row_terms):
        grad = _logits_gradient(ctx, grad_losses)
        logits, _, _, logit_adjustment, _, _ = ctx.saved_tensors
        return (_once_differentiable(grad, logits, logit_adjustment, grad_losses), None, None,
                _adjustment_gradient(grad, ctx.needs_input_grad[3], logits, logit_adjustment, grad_losses),
                None, None, None, None, None, None, None)

    torch.library.register_autograd("rarekit::cross_entropy_forward", _backward, setup_context=_setup_context)


REDUCTION_CODES = {"mean": 1, "sum": 2}  # cross_entropy_reduced's reduction argument


if _backend._C is not None:
    @torch.library.register_fake("rarekit::cross_entropy_reduced")
    def _reduced_fake(logits, target, weight, logit_adjustment, target_margin, sample_weight, *args):
        compute_grad = args[-2]
        gradient = (torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad
                    else logits.new_empty((0,)))
        return logits.new_empty(()), gradient

    def _reduced_setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[3], output[1])

    def _reduced_backward(ctx, grad_loss, _grad_gradient):
        logits, logit_adjustment, gradient = ctx.saved_tensors
        if gradient.shape != logits.shape:
            raise RuntimeError("rarekit::cross_entropy_reduced was called with compute_grad=False: it has no "
                               "gradient to give; call it with compute_grad=True where the logits require grad")
        grad = gradient * grad_loss
        return (_once_differentiable(grad, logits, logit_adjustment, grad_loss), None, None,
                _adjustment_gradient(grad, ctx.needs_input_grad[3], logits, logit_adjustment, grad_loss),
                None, None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd("rarekit::cross_entropy_reduced", _reduced_backward,
                                    setup_context=_reduced_setup_context)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # no __torch_dispatch__ of their own


def _plain_cpu(logits: torch.Tensor) -> bool:
    """CPU logits of a plain tensor type with no dispatch mode active: the compiled CPU entries may be
    called directly, without the dispatcher."""
    return logits.is_cpu and type(logits) in _PLAIN_TENSORS and not torch._C._len_torch_dispatch_stack()


def _reduced_below_autograd(logits, target, weight, logit_adjustment, target_margin, sample_weight, config,
                            reduction: int, compute_grad: bool, check: bool):
    """``rarekit::cross_entropy_reduced`` without its autograd: on plain CPU tensors with no dispatch mode
    active, the CPU kernel itself (the boxed dispatch of a Python op call costs more than a 64 x 2 forward)."""
    if _plain_cpu(logits):
        return _backend._C.cross_entropy_reduced_cpu(logits, target, weight, logit_adjustment, target_margin,
                                                     sample_weight, *config, reduction, compute_grad, check)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.rarekit.cross_entropy_reduced(logits, target, weight, logit_adjustment, target_margin,
                                                       sample_weight, *config, reduction, compute_grad, check)


class _ReducedCrossEntropy(torch.autograd.Function):
    """The eager entry to ``rarekit::cross_entropy_reduced`` (no functorch transform active) off plain CPU
    tensors, where ``rarekit._C.cross_entropy_reduced_autograd`` holds the same node in C++: the forward
    writes the gradient of the reduced loss into a fresh buffer, and the backward hands that buffer to
    autograd, times ``grad_output`` in place (skipped where it is a CPU 1, as after ``loss.backward()``;
    on CUDA always multiplied, no host sync). A second backward through a retained graph computes the
    gradient again. ``forward`` takes ``ctx``, so that ``apply`` binds no default arguments."""

    @staticmethod
    def forward(ctx, logits, target, weight, logit_adjustment, target_margin, sample_weight, reduction, config, check):
        loss, gradient = _reduced_below_autograd(logits, target, weight, logit_adjustment, target_margin,
                                                 sample_weight, config, reduction, True, check)
        ctx.save_for_backward(logits, target, weight, logit_adjustment, target_margin, sample_weight)
        ctx.gradient, ctx.reduction, ctx.config, ctx.check = gradient, reduction, config, check
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        gradient = ctx.gradient
        if gradient is None:
            _, gradient = _reduced_below_autograd(*ctx.saved_tensors, ctx.config, ctx.reduction, True, ctx.check)
        else:
            ctx.gradient = None  # handed out once: autograd may keep the buffer as .grad
        if not grad_loss.is_cpu or grad_loss.item() != 1.0:
            gradient.mul_(grad_loss.detach())
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: the gradient raises if differentiated again
            sources = (ctx.saved_tensors[0], ctx.saved_tensors[3], grad_loss)
            return (_once_differentiable(gradient, *sources) if needs[0] else None, None, None,
                    _adjustment_gradient(gradient, needs[3], *sources), None, None, None, None, None)
        return (gradient if needs[0] else None, None, None, gradient.sum(0) if needs[3] else None,
                None, None, None, None, None)


def cross_entropy_reduced(logits, target, weight, logit_adjustment, target_margin, sample_weight, reduction: str,
                          config: tuple, check: bool) -> torch.Tensor:
    """The "mean" or "sum" loss of (rows, C) logits in their dtype, with the gradient written in the same pass
    as the loss (native kernels only; ``config`` as :func:`cross_entropy_rows`'s five options)."""
    code = REDUCTION_CODES[reduction]
    needs_grad = torch.is_grad_enabled() and (logits.requires_grad or (
        logit_adjustment is not None and logit_adjustment.requires_grad))
    if torch.compiler.is_compiling():  # the op's registered autograd
        return torch.ops.rarekit.cross_entropy_reduced(logits, target, weight, logit_adjustment, target_margin,
                                                       sample_weight, *config, code, needs_grad, check)[0]
    if needs_grad:
        if _plain_cpu(logits):  # the autograd node in C++: a Python Function costs more than a 64 x 2 step
            return _backend._C.cross_entropy_reduced_autograd(logits, target, weight, logit_adjustment, target_margin,
                                                              sample_weight, *config, code, check)
        return _ReducedCrossEntropy.apply(logits, target, weight, logit_adjustment, target_margin, sample_weight, code,
                                          config, check)
    return _reduced_below_autograd(logits, target, weight, logit_adjustment, target_margin, sample_weight, config,
                                   code, False, check)[0]


class _CrossEntropyRows(torch.autograd.Function):
    """The eager entry to ``rarekit::cross_entropy_forward``: the op's own backward, plus forward-mode
    AD and the functorch transforms, which the op's registration cannot carry. (torch.compile calls
    the op directly: dynamo does not trace a custom jvp.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, logit_adjustment, target_margin, config, check):
        return torch.ops.rarekit.cross_entropy_forward(logits, target, weight, logit_adjustment, target_margin,
                                                       *config, check)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, logit_adjustment, target_margin, config, _check = inputs
        ctx.save_for_backward(logits, target, weight, logit_adjustment, target_margin, output[1])
        ctx.save_for_forward(logits, target, weight, logit_adjustment, target_margin, output[1])
        ctx.config = config
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_losses, grad_row_terms):
        return _backward(ctx, grad_losses, grad_row_terms)[:7]  # the op's backward, for this Function's 7 inputs

    @staticmethod
    def jvp(ctx, logits_tangent, _target_tangent, weight_tangent, adjustment_tangent, margin_tangent, _config,
            _check):
        for name, tangent in (("weight", weight_tangent), ("target_margin", margin_tangent)):
            if tangent is not None and bool(tangent.ne(0).any()):  # autograd may pass zeros
                raise RuntimeError(f"rarekit.cross_entropy: forward-mode AD through `{name}` is not supported "
                                   "(the loss is not differentiable in it, as torch's nll_loss in the class weights)")
        logits = ctx.saved_tensors[0]
        ones = torch.ones(logits.shape[0], dtype=accumulator_dtype(logits), device=logits.device)
        gradient = _logits_gradient(ctx, ones)  # G = ∂ℓ_i/∂z_ik
        tangent = torch.zeros_like(ones)
        if logits_tangent is not None:
            tangent = tangent + (gradient * logits_tangent).sum(1, dtype=ones.dtype)
        if adjustment_tangent is not None:
            tangent = tangent + gradient.to(ones.dtype) @ adjustment_tangent.to(ones.dtype)
        return tangent, None


class _CrossEntropyRowsEager(torch.autograd.Function):
    """:class:`_CrossEntropyRows` for the plain eager path (no functorch transform active): the same
    forward, backward and jvp, with the forward taking ``ctx`` so that ``apply`` binds no default
    arguments (with a separate setup_context it calls inspect.signature on every call, a fifth of a
    256 x 10 step)."""

    @staticmethod
    def forward(ctx, logits, target, weight, logit_adjustment, target_margin, config, check):
        inputs = (logits, target, weight, logit_adjustment, target_margin, config, check)
        with torch._C._AutoDispatchBelowAutograd():  # this Function is the autograd node
            output = torch.ops.rarekit.cross_entropy_forward(logits, target, weight, logit_adjustment, target_margin,
                                                             *config, check)
        _CrossEntropyRows.setup_context(ctx, inputs, output)
        return output

    backward = _CrossEntropyRows.backward
    jvp = _CrossEntropyRows.jvp


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
                       target_weighted: bool, focal_gamma: float, z_loss: float, check: bool,
                       target_margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row losses (accumulator dtype, differentiable in ``logits`` and ``logit_adjustment``)."""
    config = (ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss)
    if _backend.native(logits.device):
        if torch.compiler.is_compiling():
            return torch.ops.rarekit.cross_entropy_forward(logits, target, weight, logit_adjustment, target_margin,
                                                           *config, check)[0]
        if torch._C._are_functorch_transforms_active():
            return _CrossEntropyRows.apply(logits, target, weight, logit_adjustment, target_margin, config, check)[0]
        return _CrossEntropyRowsEager.apply(logits, target, weight, logit_adjustment, target_margin, config, check)[0]
    _check_reference_targets(logits, target, ignore_index, check)
    return reference.cross_entropy_rows(logits, target, weight, logit_adjustment, *config, target_margin)


def _reference_forward_inplace(logits, target, weight, logit_adjustment, target_margin, grad_scale, config, check):
    """The reference path of ``cross_entropy_forward_inplace``: per-row losses, and the logits
    overwritten with ``grad_scale · ∂(Σ losses)/∂logits`` (computed by autograd on an
    accumulator-dtype copy)."""
    _check_reference_targets(logits, target, config[0], check)
    with torch.enable_grad():
        work = logits.detach().to(accumulator_dtype(logits)).requires_grad_()
        losses = reference.cross_entropy_rows(work, target, weight, logit_adjustment, *config, target_margin)
        gradient, = torch.autograd.grad(losses.sum(), work)
    logits.copy_(gradient * grad_scale.to(gradient.dtype))
    return losses.detach()


class _InplaceCrossEntropy(torch.autograd.Function):
    """Writes ``scale · ∂loss/∂logits`` into the logits during the forward (Liger Kernel's trick, made
    safe): the version counter of ``logits`` is bumped, so autograd raises if any other node saved
    them for its backward instead of silently reading the gradient (Liger-Kernel#272). The buffer is
    the gradient: one backward per forward (a second one, with retain_graph=True, raises)."""

    @staticmethod
    def forward(ctx, logits, target, weight, logit_adjustment, target_margin, grad_scale, reduction, config, check):
        if _backend.native(logits.device):
            losses, _ = torch.ops.rarekit.cross_entropy_forward_inplace(
                logits, target, weight, logit_adjustment, target_margin, grad_scale, *config, check)
        else:
            losses = _reference_forward_inplace(logits, target, weight, logit_adjustment, target_margin, grad_scale,
                                                config, check)
        torch.autograd.graph.increment_version(logits)
        ctx.gradient, ctx.reduction, ctx.backward_done = logits, reduction, False
        return losses if reduction == "none" else losses.sum() * grad_scale.squeeze(0)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.backward_done:
            raise RuntimeError("rarekit.cross_entropy(inplace_backward=True): the logits buffer holds the gradient "
                               "and was handed out by the first backward; a second backward through the same "
                               "forward (retain_graph=True) is not supported. Use inplace_backward=False.")
        ctx.backward_done = True
        gradient = ctx.gradient.detach()  # the logits buffer, not the logits' history
        scale = grad_output.detach().unsqueeze(1) if ctx.reduction == "none" else grad_output.detach()
        if scale.device.type != "cpu" or not bool((scale == 1).all()):  # CUDA: no host sync
            gradient.mul_(scale.to(gradient.dtype))
        return (_once_differentiable(gradient, ctx.gradient, grad_output), None, None,
                _adjustment_gradient(gradient, ctx.needs_input_grad[3], ctx.gradient, grad_output),
                None, None, None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError("rarekit.cross_entropy(inplace_backward=True) does not support forward-mode AD; "
                           "use inplace_backward=False")


def cross_entropy_inplace(logits, target, weight, logit_adjustment, grad_scale, reduction: str,
                          config: tuple, check: bool, target_margin: torch.Tensor | None = None) -> torch.Tensor:
    """The reduced loss (or per-row losses for ``reduction="none"``); the logits buffer ends up
    holding the gradient. ``grad_scale`` (shape (1,)) is 1/Σw_y for "mean", 1 otherwise."""
    return _InplaceCrossEntropy.apply(logits, target, weight, logit_adjustment, target_margin, grad_scale, reduction,
                                      config, check)
