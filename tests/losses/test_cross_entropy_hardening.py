"""Regression tests of rarekit.cross_entropy under inputs that once gave silent wrong answers
(issue 10, items 1-8 and 16): autograd misuse of inplace_backward, differentiable weight and
logit_adjustment, float64, forward-mode AD, probability targets with ignore_index, masked
vocabularies, torch.compile. Each compares with torch or with autograd through the reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rarekit
from rarekit import _backend, reference

needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")

# every loss variant: keywords of rarekit.cross_entropy (weight is passed apart)
VARIANTS = {
    "plain": dict(),
    "weighted": dict(weighted=True),
    "smoothing": dict(label_smoothing=0.2),
    "smoothing-weighted": dict(weighted=True, label_smoothing=0.3),
    "target-weighted": dict(weighted=True, label_smoothing=0.3, smoothing_mode="target_weighted"),
    "focal": dict(weighted=True, focal_gamma=2.0),
    "focal-fractional": dict(focal_gamma=0.5, label_smoothing=0.1),
    "z-loss": dict(weighted=True, z_loss=1e-2),
    "adjusted": dict(adjusted=True),
    "ignore-index": dict(weighted=True, ignore=True, label_smoothing=0.1),
    "everything": dict(weighted=True, adjusted=True, ignore=True, label_smoothing=0.1, focal_gamma=1.5, z_loss=1e-3),
}


def make_case(gen, variant, shape=(6, 5), dtype=torch.float64, device="cpu"):
    """(logits, target, weight, logit_adjustment, keywords) of one variant; K-dim shapes allowed."""
    options = dict(VARIANTS[variant])
    classes = shape[1]
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).to(device)
    target_shape = (shape[0],) + tuple(shape[2:])
    target = torch.randint(0, classes, target_shape, generator=gen)
    if options.pop("ignore", False):
        target[torch.rand(target_shape, generator=gen) < 0.3] = -100
        target.view(-1)[0] = 0  # at least one counted row
    weight = (torch.rand(classes, generator=gen, dtype=torch.float64) + 0.5).to(device) \
        if options.pop("weighted", False) else None
    adjustment = (torch.randn(classes, generator=gen, dtype=torch.float64)).to(device) \
        if options.pop("adjusted", False) else None
    return logits, target.to(device), weight, adjustment, options


def reference_loss(logits, target, weight, adjustment, reduction="mean", ignore_index=-100, label_smoothing=0.0,
                   smoothing_mode="pytorch", focal_gamma=0.0, z_loss=0.0):
    """The loss through the pure-PyTorch reference, differentiable by autograd in every input."""
    classes = logits.shape[1]
    rows_logits = logits.movedim(1, -1).reshape(-1, classes)
    rows_target = target.reshape(-1)
    losses = reference.cross_entropy_rows(rows_logits, rows_target, weight, adjustment, ignore_index,
                                          label_smoothing, smoothing_mode == "target_weighted", focal_gamma, z_loss)
    if reduction == "none":
        return losses.reshape(target.shape)
    if reduction == "sum":
        return losses.sum()
    valid = rows_target != ignore_index
    w = weight[rows_target.clamp(min=0)] if weight is not None else torch.ones_like(losses)
    return losses.sum() / (w * valid).sum()


# ---- 1. inplace_backward on a leaf that requires grad (or a view of one)
@needs_native
def test_inplace_backward_refuses_a_leaf_that_requires_grad(gen):
    parameter = nn.Parameter(torch.randn(4, 5, generator=gen))
    before = parameter.detach().clone()
    target = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        rarekit.cross_entropy(parameter, target, inplace_backward=True)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        rarekit.cross_entropy(parameter[:2], target[:2], inplace_backward=True)
    torch.testing.assert_close(parameter.detach(), before, rtol=0, atol=0)
    assert parameter.grad is None
    # torch refuses the same in-place write
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        parameter.mul_(1)


# ---- 2. inplace_backward, then a second backward
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inplace_backward_second_backward_raises_after_a_correct_first(gen, reduction):
    weights = torch.randn(8, 6, generator=gen, requires_grad=True)
    features = torch.randn(5, 8, generator=gen)
    target = torch.tensor([0, 5, 2, -100, 1])
    expected_loss = F.cross_entropy(features @ weights, target, reduction=reduction)
    upstream = torch.rand(expected_loss.shape, generator=gen) + 0.5
    expected, = torch.autograd.grad(expected_loss, weights, upstream)
    loss = rarekit.cross_entropy(features @ weights, target, reduction=reduction, inplace_backward=True)
    loss.backward(upstream, retain_graph=True)
    torch.testing.assert_close(weights.grad, expected)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward(upstream)


# ---- 3. weight and logit_adjustment that require grad
@pytest.mark.parametrize("inplace", [False, True])
def test_weight_that_requires_grad_is_refused_as_torch_does(gen, inplace):
    logits = torch.randn(4, 5, generator=gen) * 1
    target = torch.tensor([0, 1, 2, 3])
    weight = torch.rand(5, generator=gen).requires_grad_()
    with pytest.raises(RuntimeError):
        F.cross_entropy(logits, target, weight)
    with pytest.raises(RuntimeError, match="not differentiable with respect to `weight`"):
        rarekit.cross_entropy(logits.clone(), target, weight, inplace_backward=inplace)
    with torch.no_grad():  # no graph, no gradient asked: allowed, as in torch
        torch.testing.assert_close(rarekit.cross_entropy(logits, target, weight), F.cross_entropy(logits, target, weight))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("inplace", [False, True])
def test_logit_adjustment_gradient_matches_autograd_of_the_reference(gen, variant, reduction, inplace):
    logits, target, weight, adjustment, options = make_case(gen, variant, shape=(7, 6))
    adjustment = torch.randn(6, generator=gen, dtype=torch.float64) if adjustment is None else adjustment
    expected_adjustment = adjustment.clone().requires_grad_()
    expected_logits = logits.clone().requires_grad_()
    expected_loss = reference_loss(expected_logits, target, weight, expected_adjustment, reduction, **options)
    upstream = torch.rand(expected_loss.shape, generator=gen, dtype=torch.float64) + 0.5
    expected_loss.backward(upstream)

    actual_adjustment = adjustment.clone().requires_grad_()
    actual_logits = logits.clone().requires_grad_()
    used = actual_logits * 1 if inplace else actual_logits  # inplace needs a non-leaf buffer
    loss = rarekit.cross_entropy(used, target, weight, reduction=reduction, logit_adjustment=actual_adjustment,
                                 inplace_backward=inplace, **options)
    loss.backward(upstream)
    torch.testing.assert_close(actual_adjustment.grad, expected_adjustment.grad)
    torch.testing.assert_close(actual_logits.grad, expected_logits.grad)


# ---- 4. float64: gradcheck of every variant (forward-mode AD included), K-dim inputs
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2)])
def test_float64_gradcheck(gen, variant, shape):
    logits, target, weight, adjustment, options = make_case(gen, variant, shape=shape)
    inputs = [logits.requires_grad_()]
    if adjustment is not None:
        inputs.append(adjustment.requires_grad_())

    def loss(z, a=adjustment):
        return rarekit.cross_entropy(z, target, weight, logit_adjustment=a, reduction="none", **options)

    assert loss(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, inputs, check_forward_ad=True, check_batched_grad=False)
    torch.testing.assert_close(loss(*inputs), reference_loss(logits, target, weight, adjustment, "none", **options))


@needs_native
def test_float64_runs_on_the_native_kernel_and_keeps_double_precision(gen):
    logits = torch.randn(64, 1000, generator=gen, dtype=torch.float64) * 30
    target = torch.randint(0, 1000, (64,), generator=gen)
    rows, terms = torch.ops.rarekit.cross_entropy_forward(logits, target, None, None, None, -100, 0.0, False, 0.0, 0.0,
                                                          True)
    assert rows.dtype == terms.dtype == torch.float64
    torch.testing.assert_close(rows, F.cross_entropy(logits, target, reduction="none"), rtol=1e-13, atol=1e-12)


def test_count_float64_weights_gradcheck(gen):
    ids = torch.randint(-1, 8, (40,), generator=gen)
    weights = torch.rand(40, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: rarekit.count(ids, 8, weights=w, ignore_index=-1), (weights,))


# ---- 5. forward-mode AD
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_jvp_matches_torch_func_jvp_of_the_reference(gen, variant):
    logits, target, weight, adjustment, options = make_case(gen, variant, shape=(6, 5), dtype=torch.float32)
    tangent = torch.randn(logits.shape, generator=gen)

    def ours(z):
        return rarekit.cross_entropy(z, target, weight, logit_adjustment=adjustment, **options)

    def theirs(z):
        return reference_loss(z, target, weight, adjustment, **options)

    value, derivative = torch.func.jvp(ours, (logits,), (tangent,))
    expected_value, expected_derivative = torch.func.jvp(theirs, (logits,), (tangent,))
    torch.testing.assert_close(value, expected_value.float())
    torch.testing.assert_close(derivative, expected_derivative.float())
    assert derivative.abs() > 0 or expected_derivative.abs() == 0


def test_dual_tensors_give_torch_tangent_and_vmap_still_works(gen):
    import torch.autograd.forward_ad as fwAD

    logits = torch.randn(5, 7, generator=gen)
    target = torch.tensor([0, 6, 3, -100, 2])
    tangent = torch.randn(5, 7, generator=gen)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(rarekit.cross_entropy(fwAD.make_dual(logits, tangent), target, label_smoothing=0.1))
        theirs = fwAD.unpack_dual(F.cross_entropy(fwAD.make_dual(logits, tangent), target, label_smoothing=0.1))
    torch.testing.assert_close(ours.tangent, theirs.tangent)
    batch = torch.randn(3, 5, 7, generator=gen)
    torch.testing.assert_close(torch.vmap(lambda z: rarekit.cross_entropy(z, target))(batch),
                               torch.vmap(lambda z: F.cross_entropy(z, target))(batch))
    torch.testing.assert_close(torch.func.grad(lambda z: rarekit.cross_entropy(z, target))(logits),
                               torch.func.grad(lambda z: F.cross_entropy(z, target))(logits))


def test_forward_ad_through_inplace_backward_raises(gen):
    import torch.autograd.forward_ad as fwAD

    logits = torch.randn(3, 4, generator=gen)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        rarekit.cross_entropy(fwAD.make_dual(logits, torch.ones_like(logits)), torch.tensor([0, 1, 2]),
                              inplace_backward=True)


# ---- 6. probability targets with ignore_index
def test_probability_targets_refuse_a_non_negative_ignore_index_as_torch(gen):
    logits = torch.randn(4, 3, generator=gen)
    probabilities = torch.softmax(torch.randn(4, 3, generator=gen), 1)
    with pytest.raises(RuntimeError, match="ignore_index"):
        F.cross_entropy(logits, probabilities, ignore_index=1)
    with pytest.raises(ValueError, match="ignore_index=1"):
        rarekit.cross_entropy(logits, probabilities, ignore_index=1)
    torch.testing.assert_close(rarekit.cross_entropy(logits, probabilities, ignore_index=-1),
                               F.cross_entropy(logits, probabilities, ignore_index=-1))


# ---- 7. masked vocabularies: -inf logits
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_logits_give_torch_loss_and_finite_gradients(gen, label_smoothing, weighted, dtype):
    logits = torch.randn(6, 2100, generator=gen, dtype=dtype)
    logits[:, 1::3] = float("-inf")  # a masked vocabulary
    target = torch.tensor([0, 1, 2, 4, 7, 2099])  # rows 1, 4 and 5 (1, 7, 2098) ... target a masked logit
    weight = torch.rand(2100, generator=gen, dtype=dtype) + 0.5 if weighted else None
    expected_logits, actual_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    expected = F.cross_entropy(expected_logits, target, weight, reduction="none", label_smoothing=label_smoothing)
    actual = rarekit.cross_entropy(actual_logits, target, weight, reduction="none", label_smoothing=label_smoothing)
    torch.testing.assert_close(actual, expected)  # inf exactly where torch's is inf
    assert torch.isinf(expected).any()
    expected.sum().backward()
    actual.sum().backward()
    assert torch.isfinite(expected_logits.grad).all()
    torch.testing.assert_close(actual_logits.grad, expected_logits.grad)


# ---- 8. torch.compile, static and dynamic
@needs_native
@pytest.mark.parametrize("dynamic", [False, True])
def test_every_loss_compiles_fullgraph(gen, dynamic):
    torch._dynamo.reset()
    logits = torch.randn(6, 5, generator=gen, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, -100])
    weight = torch.rand(5, generator=gen) + 0.5
    counts = [50, 20, 10, 5, 1]
    modules = [rarekit.CrossEntropyLoss(weight, label_smoothing=0.1), rarekit.FocalLoss(gamma=2.0, alpha=weight),
               rarekit.LogitAdjustedLoss(counts), rarekit.ClassBalancedLoss(counts, loss="focal"),
               rarekit.CrossEntropyLoss(smoothing_mode="target_weighted", label_smoothing=0.2, weight=weight,
                                        z_loss=1e-3)]
    for module in modules:
        compiled = torch.compile(module, fullgraph=True, dynamic=dynamic)
        expected_grad, = torch.autograd.grad(module(logits, target), logits)
        loss = compiled(logits, target)
        actual_grad, = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(loss, module(logits, target))
        torch.testing.assert_close(actual_grad, expected_grad)
    for rows in (6, 9):  # a second shape: dynamic compiles once
        z = torch.randn(rows, 5, generator=gen)
        t = torch.randint(0, 5, (rows,), generator=gen)
        function = torch.compile(lambda z, t, g: rarekit.cross_entropy(z, t, focal_gamma=g), fullgraph=True,
                                 dynamic=dynamic)
        torch.testing.assert_close(function(z, t, 2.0), rarekit.cross_entropy(z, t, focal_gamma=2.0))


def test_inplace_backward_under_compile_raises_at_trace_time(gen):
    torch._dynamo.reset()
    logits = torch.randn(4, 5, generator=gen)
    target = torch.tensor([0, 1, 2, 3])
    compiled = torch.compile(lambda z, t: rarekit.cross_entropy(z * 1, t, inplace_backward=True), fullgraph=True)
    with pytest.raises(Exception, match="inplace_backward=True is not supported under torch.compile"):
        compiled(logits, target)


# ---- 16. messages that name the real problem
def test_zero_classes_and_focal_gamma_messages(gen):
    with pytest.raises(ValueError, match="at least one class"):
        rarekit.cross_entropy(torch.randn(3, 0), torch.zeros(3, dtype=torch.long), torch.ones(0))
    with pytest.raises(ValueError, match=r"^gamma must"):
        rarekit.FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="focal_gamma"):
        rarekit.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), focal_gamma=float("nan"))


@needs_native
@pytest.mark.parametrize("margined", [False, True])
def test_float64_ops_pass_opcheck(gen, margined):
    """The fake kernels give float64 losses and row terms for float64 logits, as the kernels do (with and
    without target_margin)."""
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, -100])
    weight = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    margin = torch.rand(5, generator=gen, dtype=torch.float64) if margined else None
    config = (-100, 0.1, False, 2.0, 1e-3)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_forward.default,
                          (logits, target, weight, None, margin, *config, True))
    rows, terms = torch.ops.rarekit.cross_entropy_forward(logits.detach(), target, weight, None, margin, *config, True)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_backward.default,
                          (torch.ones(6, dtype=torch.float64), logits.detach(), target, weight, None, margin, terms,
                           *config))
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_forward_inplace.default,
                          (logits.detach().clone(), target, weight, None, margin, torch.ones(1, dtype=torch.float64),
                           *config, True))


@pytest.mark.parametrize("inplace", [False, True])
def test_second_derivative_wrt_an_upstream_weight_raises(gen, inplace):
    """autograd.grad of the gradient wrt a tensor before the logits reaches the raise, not a silent None."""
    w = torch.randn(8, 5, generator=gen, requires_grad=True)
    x = torch.randn(6, 8, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(x @ w, torch.tensor([0, 1, 2, 3, 4, 0]), inplace_backward=inplace)
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(grad.sum(), w, allow_unused=True)
