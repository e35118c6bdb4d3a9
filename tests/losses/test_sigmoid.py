"""The fused sigmoid family (issue 21, section 2): rarekit.binary_cross_entropy_with_logits, sigmoid_focal_loss,
BCEWithLogitsLoss and AsymmetricLoss, held to torch's BCE (exactly its semantics), to torchvision's and timm's
formulas, and to an fp64 formula written here independently of rarekit's reference."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rarekit
from rarekit import _backend, reference_sigmoid

needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
REDUCTIONS = ("none", "mean", "sum")


# ---- independent formulas (float64)
def formula(x, y, weight=None, pos_weight=None, alpha=None, gamma_pos=0.0, gamma_neg=None, clip=0.0):
    """Issue 21's ℓ = -w [α pw y (1-p)^γ₊ log p + (1-α)(1-y) p_m^γ₋ log(1-p_m)] in float64, elementwise, written
    with plain log and pow (|x| is kept moderate by the tests)."""
    x, y = x.double(), y.double()
    gamma_neg = gamma_pos if gamma_neg is None else gamma_neg
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
    pw = 1.0 if pos_weight is None else pos_weight.double()
    loss = -(a_pos * pw * y * (1 - p) ** gamma_pos * torch.log(p) + a_neg * (1 - y) * p_m ** gamma_neg * torch.log(1 - p_m))
    return loss if weight is None else loss * weight.double()


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss (torchvision/ops/focal_loss.py, v0.15-0.20), verbatim but for the
    API-usage logging; torchvision cannot be installed beside this torch."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def timm_asymmetric_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8):
    """timm.loss.AsymmetricLossMultiLabel.forward (timm/loss/asymmetric_loss.py) with
    disable_torch_grad_focal_loss=False, verbatim: returns -loss.sum()."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt0 = xs_pos * y
        pt1 = xs_neg * (1 - y)
        pt = pt0 + pt1
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss *= one_sided_w
    return -loss.sum()


def reduce(losses, reduction):
    return losses if reduction == "none" else (losses.mean() if reduction == "mean" else losses.sum())


def logits_and_targets(gen, shape, dtype=torch.float64, device="cpu", soft=False, scale=3.0):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
    y = torch.rand(shape, generator=gen, dtype=torch.float64) if soft else \
        (torch.rand(shape, generator=gen) < 0.3).double()
    return x, y.to(dtype).to(device)


def value_and_grads(fn, x, y):
    """fn(x, y) and its gradients for x and y under an upstream gradient in [0.5, 1.5), the same for every fn of
    one output shape (one for a scalar)."""
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    out = fn(x, y)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    upstream = upstream.to(out.dtype).to(out.device) if out.dim() else torch.ones_like(out)
    gx, gy = torch.autograd.grad(out, (x, y), upstream)
    return out.detach(), gx, gy


def assert_all_close(ours, theirs, **tolerance):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **tolerance)


# ---- torch's BCE exactly: every broadcast of weight and pos_weight, every reduction, shape and dtype
SHAPES = [(37,), (9, 23), (3, 4, 5, 6)]


def operand(kind, shape, gen, device):
    """A weight/pos_weight of the given broadcast kind for an input of `shape`, or None."""
    sizes = {"none": None, "scalar": (1,), "last": shape[-1:], "row": shape[:-1] + (1,), "full": shape,
             "middle": (shape[1],) + (1,) * (len(shape) - 2) if len(shape) > 2 else shape[-1:]}[kind]
    return None if sizes is None else (torch.rand(sizes, generator=gen, dtype=torch.float64) * 2 + 0.2).to(device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_kind,pos_weight_kind", [("none", "none"), ("last", "last"), ("row", "scalar"),
                                                         ("full", "last"), ("middle", "row"), ("scalar", "full")])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equals_torch_bce(gen, device, shape, weight_kind, pos_weight_kind, reduction):
    x, y = logits_and_targets(gen, shape, device=device, soft=True)
    weight, pos_weight = operand(weight_kind, shape, gen, device), operand(pos_weight_kind, shape, gen, device)
    for dtype, tolerance in ((torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, {})):
        cast = [t.to(dtype) if t is not None else None for t in (x, y, weight, pos_weight)]
        ours = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(
            a, b, cast[2], pos_weight=cast[3], reduction=reduction), cast[0], cast[1])
        theirs = value_and_grads(lambda a, b: F.binary_cross_entropy_with_logits(
            a, b, cast[2], pos_weight=cast[3], reduction=reduction), cast[0], cast[1])
        assert_all_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_strided_scalar_and_column_inputs_equal_torch(gen, device, reduction):
    """A transposed input with an expanded target, a 0-dim input, and (N, 1) inputs whose per-row weight is
    one value per element."""
    x, y = logits_and_targets(gen, (5, 7), device=device, soft=True)
    calls = [(x.t(), y[:1].expand(5, 7).t(), torch.rand(7, 1, dtype=torch.float64, device=device)),
             (x[0, 0].clone(), y[0, 0].clone(), None),
             (x[:, :1].contiguous(), y[:, :1].contiguous(), torch.rand(5, 1, dtype=torch.float64, device=device))]
    for a, b, weight in calls:
        ours = value_and_grads(lambda u, v: rarekit.binary_cross_entropy_with_logits(u, v, weight, reduction=reduction), a, b)
        theirs = value_and_grads(lambda u, v: F.binary_cross_entropy_with_logits(u, v, weight, reduction=reduction), a, b)
        assert_all_close(ours, theirs, rtol=1e-12, atol=1e-12)


@needs_native
def test_module_is_torchs_drop_in(gen):
    weight, pos_weight = torch.rand(7, generator=gen), torch.rand(7, generator=gen) * 3
    ours, theirs = rarekit.BCEWithLogitsLoss(weight, pos_weight=pos_weight), nn.BCEWithLogitsLoss(weight, pos_weight=pos_weight)
    assert isinstance(ours, nn.BCEWithLogitsLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, y = logits_and_targets(gen, (5, 7), dtype=torch.float32)
    assert_all_close(value_and_grads(ours, x, y), value_and_grads(theirs, x, y))
    with pytest.raises(TypeError, match="unexpected keyword"):
        rarekit.BCEWithLogitsLoss(gamma=2.0)
    focal = rarekit.BCEWithLogitsLoss(reduction="sum", focal_gamma=2.0, focal_alpha=torch.full((7,), 0.25))
    assert "focal_alpha" in focal.state_dict()
    torch.testing.assert_close(focal(x.double(), y.double()), formula(x, y, alpha=0.25, gamma_pos=2.0).sum())


def test_result_dtype_follows_torch_for_mixed_dtypes(gen):
    x, y = logits_and_targets(gen, (4, 3), soft=True)
    for x_dtype, y_dtype in ((torch.float16, torch.float32), (torch.float32, torch.float64),
                             (torch.float32, torch.float16), (torch.float64, torch.float32)):
        ours = rarekit.binary_cross_entropy_with_logits(x.to(x_dtype), y.to(y_dtype), reduction="none")
        theirs = F.binary_cross_entropy_with_logits(x.to(x_dtype), y.to(y_dtype), reduction="none")
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_input_reduces_as_torch(reduction):
    x, y = torch.zeros(0, 3), torch.zeros(0, 3)
    torch.testing.assert_close(rarekit.binary_cross_entropy_with_logits(x, y, reduction=reduction),
                               F.binary_cross_entropy_with_logits(x, y, reduction=reduction), equal_nan=True)


# ---- every option against the fp64 formula
OPTIONS = [
    dict(focal_gamma=2.0),
    dict(focal_gamma=0.5, focal_alpha=0.25),
    dict(focal_gamma=1.5, gamma_neg=3.0, focal_alpha=0.7),
    dict(focal_gamma=0.0, gamma_neg=4.0, clip=0.05),
    dict(focal_gamma=1.0, gamma_neg=2.5, clip=0.2, focal_alpha=0.4),
    dict(gamma_neg=0.0, clip=0.1),
    dict(focal_alpha="tensor", focal_gamma=2.0),
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_options_match_the_fp64_formula(gen, device, options, reduction, soft):
    shape = (6, 11)
    x, y = logits_and_targets(gen, shape, device=device, soft=soft)
    weight, pos_weight = operand("row", shape, gen, device), operand("last", shape, gen, device)
    options = dict(options)
    if options.get("focal_alpha") == "tensor":
        options["focal_alpha"] = torch.rand(shape[-1], generator=gen, dtype=torch.float64).to(device)
    formula_options = dict(alpha=options.get("focal_alpha"), gamma_pos=options.get("focal_gamma", 0.0),
                           gamma_neg=options.get("gamma_neg"), clip=options.get("clip", 0.0))
    ours = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(
        a, b, weight, pos_weight=pos_weight, reduction=reduction, **options), x, y)
    theirs = value_and_grads(lambda a, b: reduce(formula(a, b, weight, pos_weight, **formula_options), reduction), x, y)
    assert_all_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # float32 inputs: the fp32 kernels against the same fp64 values
    ours32 = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(
        a, b, weight, pos_weight=pos_weight, reduction=reduction, **options), x.float(), y.float())
    assert_all_close(ours32, [t.float() for t in theirs], rtol=1e-4, atol=1e-5)


# ---- torchvision and timm
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.6, 0.0), (0.25, 1.5), (0.9, 3.0), (0.3, 1.0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_focal_loss_equals_torchvision(gen, device, alpha, gamma, reduction, soft):
    x, y = logits_and_targets(gen, (8, 5, 3), device=device, soft=soft)
    ours = value_and_grads(lambda a, b: rarekit.sigmoid_focal_loss(a, b, alpha, gamma, reduction), x, y)
    theirs = value_and_grads(lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, reduction), x, y)
    assert_all_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours32 = value_and_grads(lambda a, b: rarekit.sigmoid_focal_loss(a, b, alpha, gamma, reduction), x.float(), y.float())
    assert_all_close(ours32, [t.float() for t in theirs], rtol=1e-4, atol=1e-5)
    assert rarekit.sigmoid_focal_loss(x, y).shape == x.shape  # torchvision's default reduction is "none"


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.0, 2.0, 0.0),
                                                      (0.5, 1.5, 0.3), (2.0, 0.0, None)])
@pytest.mark.parametrize("soft", [False, True])
def test_asymmetric_loss_equals_timm(gen, device, gamma_pos, gamma_neg, clip, soft):
    x, y = logits_and_targets(gen, (16, 20), device=device, soft=soft)  # |x| < 18: timm's eps=1e-8 clamp idle
    x = x.clamp(-15, 15)
    loss = rarekit.AsymmetricLoss(gamma_pos, gamma_neg, clip, reduction="sum")
    ours = value_and_grads(loss, x, y)
    theirs = value_and_grads(lambda a, b: timm_asymmetric_loss(a, b, gamma_neg, gamma_pos, clip), x, y)
    assert_all_close(ours, theirs, rtol=1e-10, atol=1e-12)
    mean = rarekit.AsymmetricLoss(gamma_pos, gamma_neg, clip)(x, y)
    torch.testing.assert_close(mean, ours[0] / x.numel())


# ---- autograd
GRADCHECK_CASES = [
    dict(),
    dict(focal_gamma=2.0, focal_alpha=0.3, gamma_neg=1.0),
    dict(focal_gamma=1.5, gamma_neg=3.0, clip=0.1),
]


@pytest.mark.parametrize("options", GRADCHECK_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(gen, options, reduction):
    x, y = logits_and_targets(gen, (4, 5), soft=True)
    weight, pos_weight = operand("last", (4, 5), gen, "cpu"), operand("row", (4, 5), gen, "cpu")
    x.requires_grad_(), y.requires_grad_()
    fn = lambda a, b: rarekit.binary_cross_entropy_with_logits(a, b, weight, pos_weight=pos_weight,  # noqa: E731
                                                                  reduction=reduction, **options)
    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradcheck(lambda a, b: rarekit.sigmoid_focal_loss(a, b, reduction=reduction), (x, y))
    assert torch.autograd.gradcheck(rarekit.AsymmetricLoss(0.5, 2.0, 0.05, reduction), (x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_mode_ad_matches_the_formula(gen, reduction):
    x, y = logits_and_targets(gen, (5, 4), soft=True)
    dx, dy = torch.randn_like(x), torch.randn_like(y)
    options = dict(focal_gamma=1.5, focal_alpha=0.3, gamma_neg=2.0, clip=0.05)
    _, ours = torch.func.jvp(lambda a, b: rarekit.binary_cross_entropy_with_logits(a, b, reduction=reduction, **options),
                             (x, y), (dx, dy))
    _, theirs = torch.func.jvp(lambda a, b: reduce(formula(a, b, alpha=0.3, gamma_pos=1.5, gamma_neg=2.0, clip=0.05),
                                                   reduction), (x, y), (dx, dy))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@needs_native
def test_forward_mode_ad_refuses_weight_tangents(gen):
    x, y = logits_and_targets(gen, (3, 4))
    weight = torch.rand(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="forward-mode AD through `weight`"):
        torch.func.jvp(lambda w: rarekit.binary_cross_entropy_with_logits(x, y, w), (weight,), (torch.ones_like(weight),))


@needs_native
def test_double_backward_raises(gen):
    x, y = logits_and_targets(gen, (3, 4))
    x.requires_grad_()
    grad, = torch.autograd.grad(rarekit.binary_cross_entropy_with_logits(x, y, focal_gamma=2.0), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()


def test_weight_and_pos_weight_are_not_differentiable(gen):
    x, y = logits_and_targets(gen, (3, 4))
    for keywords in (dict(weight=torch.rand(4, dtype=torch.float64, requires_grad=True)),
                     dict(pos_weight=torch.rand(4, dtype=torch.float64, requires_grad=True))):
        with pytest.raises(RuntimeError, match="not differentiable"):
            F.binary_cross_entropy_with_logits(x, y, **keywords).backward()  # torch refuses too
        with pytest.raises(RuntimeError, match="not differentiable"):
            rarekit.binary_cross_entropy_with_logits(x, y, **keywords)


@needs_native
def test_gradient_written_by_the_forward_is_scaled_by_the_upstream(gen):
    x, y = logits_and_targets(gen, (6, 5), dtype=torch.float32)
    x.requires_grad_()
    for scale in (1.0, 2.5):
        ours, = torch.autograd.grad(rarekit.binary_cross_entropy_with_logits(x, y, focal_gamma=2.0) * scale, x)
        theirs, = torch.autograd.grad(formula(x, y, gamma_pos=2.0).mean() * scale, x)
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-6)
    loss = rarekit.binary_cross_entropy_with_logits(x, y, reduction="sum")
    first, = torch.autograd.grad(loss, x, retain_graph=True)
    second, = torch.autograd.grad(loss, x)  # a retained graph's second backward: a gradient of its own
    assert second.data_ptr() != first.data_ptr()
    torch.testing.assert_close(second, first, rtol=1e-6, atol=1e-7)


# ---- the op contract and torch.compile
@needs_native
def test_opcheck(gen):
    x, y = logits_and_targets(gen, (4, 6), dtype=torch.float32, soft=True)
    weight, pos_weight = torch.rand(4, 1, generator=gen), torch.rand(6, generator=gen) + 0.5
    for reduction in (0, 1, 2):
        for compute_grad in (False, True):
            args = (x.requires_grad_(), y, weight, pos_weight, None, 0.25, 2.0, 1.0, 0.05, False, reduction, compute_grad)
            torch.library.opcheck(torch.ops.rarekit.sigmoid_loss_forward.default, args)
        upstream = torch.rand(4, 6) if reduction == 0 else torch.tensor(1.5)
        args = (upstream, x.detach(), y, weight, None, torch.rand(6, generator=gen), None, 1.0, 3.0, 0.0, True,
                reduction, [True, True])
        torch.library.opcheck(torch.ops.rarekit.sigmoid_loss_backward.default, args)


@needs_native
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(gen, dynamic):
    torch._dynamo.reset()

    def loss_fn(a, b, w):
        return (rarekit.binary_cross_entropy_with_logits(a, b, pos_weight=w, focal_gamma=1.0) +
                rarekit.sigmoid_focal_loss(a, b, reduction="sum") + rarekit.AsymmetricLoss()(a, b))

    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=dynamic)
    for rows in (6, 9):
        x, y = logits_and_targets(gen, (rows, 5), dtype=torch.float32)
        w = torch.rand(5, generator=gen) + 0.5
        assert_all_close(value_and_grads(lambda a, b: compiled(a, b, w), x, y),
                         value_and_grads(lambda a, b: loss_fn(a, b, w), x, y), rtol=1e-5, atol=1e-6)


# ---- half precision and extreme logits
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_worse_than_torch(gen, device, dtype):
    x, y = logits_and_targets(gen, (64, 33), device=device, soft=True, scale=6.0)
    x = x.to(dtype)
    exact = value_and_grads(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="sum"), x.double(), y.double())
    ours = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(a, b, reduction="sum"), x, y.to(dtype))
    theirs = value_and_grads(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="sum"), x, y.to(dtype))
    for mine, torchs, truth in zip(ours, theirs, exact):
        ulp = torch.finfo(dtype).eps * truth.abs().max()
        assert (mine.double() - truth).abs().max() <= (torchs.double() - truth).abs().max() + ulp


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_finite_at_logits_of_200(device, dtype):
    x = torch.tensor([-200.0, -60.0, -1.0, 0.0, 1.0, 60.0, 200.0], device=device).to(dtype)
    for y_value in (0.0, 1.0, 0.3):
        y = torch.full_like(x, y_value)
        for options in (dict(), dict(focal_gamma=2.0, focal_alpha=0.25), dict(gamma_neg=4.0, clip=0.05)):
            x_grad = x.clone().requires_grad_()
            loss = rarekit.binary_cross_entropy_with_logits(x_grad, y, reduction="none", **options)
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(x_grad.grad).all(), (dtype, y_value, options)
            exact = formula(x.double(), y.double(), **{"alpha": options.get("focal_alpha"),
                                                       "gamma_pos": options.get("focal_gamma", 0.0),
                                                       "gamma_neg": options.get("gamma_neg"),
                                                       "clip": options.get("clip", 0.0)}) \
                if y_value != 0.3 else None
            if exact is not None:  # log p of -200 is exact in fp64 only through logsigmoid: compare where finite
                finite = torch.isfinite(exact)
                torch.testing.assert_close(loss.double()[finite], exact[finite], rtol=1e-2, atol=1e-3)
        for loss_fn in (lambda a, b: rarekit.sigmoid_focal_loss(a, b, reduction="none"),
                        rarekit.AsymmetricLoss(gamma_pos=1.0, reduction="none")):  # the p_t form, soft targets too
            x_grad = x.clone().requires_grad_()
            loss = loss_fn(x_grad, y)
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(x_grad.grad).all(), (dtype, y_value, loss_fn)


# ---- properties against the fp64 formula
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), gamma_pos=st.floats(0, 4), gamma_neg=st.floats(0, 4),
       alpha=st.one_of(st.none(), st.floats(0, 1)), clip=st.sampled_from([0.0, 0.05, 0.3]),
       reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**31 - 1))
def test_property_matches_the_fp64_formula(rows, cols, gamma_pos, gamma_neg, alpha, clip, reduction, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = logits_and_targets(gen, (rows, cols), soft=True, scale=4.0)
    pos_weight = torch.rand(cols, generator=gen, dtype=torch.float64) * 3
    options = dict(focal_gamma=gamma_pos, gamma_neg=gamma_neg, focal_alpha=alpha, clip=clip)
    ours = rarekit.binary_cross_entropy_with_logits(x.float(), y.float(), pos_weight=pos_weight.float(),
                                                    reduction=reduction, **options)
    exact = reduce(formula(x, y, None, pos_weight, alpha, gamma_pos, gamma_neg, clip), reduction)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-5)
    ours64 = rarekit.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction=reduction, **options)
    torch.testing.assert_close(ours64, exact, rtol=1e-10, atol=1e-12)


# ---- every CPU kernel ISA, long inputs (threads, tails), the reference path
@needs_native
def test_every_cpu_isa_and_the_reference_agree(gen):
    x, y = logits_and_targets(gen, (50_021,), dtype=torch.float32, soft=True)
    weight = torch.rand(50_021, generator=gen)
    options = dict(focal_gamma=2.0, focal_alpha=0.25, gamma_neg=3.0, clip=0.05)
    exact = {dtype: value_and_grads(lambda a, b: formula(a, b, weight, None, 0.25, 2.0, 3.0, 0.05).sum(),
                                    x.to(dtype).double(), y.to(dtype).double()) for dtype in (torch.float32, torch.bfloat16)}
    previous = _backend._C.cpu_isa()
    try:
        for isa in _backend._C.supported_cpu_isas():
            _backend._C.set_cpu_isa(isa)
            for dtype, tolerance in ((torch.float32, dict(rtol=1e-5, atol=1e-5)), (torch.bfloat16, dict(rtol=1e-2, atol=1e-2))):
                ours = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(
                    a, b, weight, reduction="sum", **options), x.to(dtype), y.to(dtype))
                assert_all_close([t.double() for t in ours], exact[dtype], **tolerance)
    finally:
        _backend._C.set_cpu_isa(previous)
    rarekit.set_backend("reference")
    try:
        reference = value_and_grads(lambda a, b: rarekit.binary_cross_entropy_with_logits(
            a, b, weight, reduction="sum", **options), x, y)
    finally:
        rarekit.set_backend("native")
    assert_all_close([t.double() for t in reference], exact[torch.float32], rtol=1e-5, atol=1e-5)


def test_reference_is_the_formula(gen):
    x, y = logits_and_targets(gen, (7, 3), soft=True)
    pos_weight = torch.rand(3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        reference_sigmoid.sigmoid_loss_elements(x, y, None, pos_weight, 0.3, 1.5, 2.0, 0.1),
        formula(x, y, None, pos_weight, 0.3, 1.5, 2.0, 0.1))


# ---- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y[:2]), ValueError, "Target size"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, torch.rand(2)), ValueError, "weight of shape"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, torch.rand(3, 4, 1)), ValueError, "weight of shape"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, pos_weight=torch.rand(3, 1, 4)), ValueError,
     "pos_weight of shape"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, pos_weight=torch.ones(4, dtype=torch.long)),
     TypeError, "pos_weight must be a floating-point"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, focal_gamma=-1.0), ValueError, "focal_gamma"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, gamma_neg=math.nan), ValueError, "gamma_neg"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, clip=1.0), ValueError, "clip"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, clip=-0.1), ValueError, "clip"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, focal_alpha=math.inf), ValueError, "focal_alpha"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, reduction="avg"), ValueError, "reduction"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x.long(), y), TypeError, "input must be a floating"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y > 0.5), TypeError, "target must be a floating"),
    (lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y.long()), TypeError, "target must be a floating"),
    (lambda x, y: rarekit.sigmoid_focal_loss(x, y, gamma=-2.0), ValueError, "focal_gamma"),
    (lambda x, y: rarekit.sigmoid_focal_loss(x, y, alpha=None), ValueError, "alpha"),
    (lambda x, y: rarekit.AsymmetricLoss(clip=1.5), ValueError, "clip"),
    (lambda x, y: rarekit.BCEWithLogitsLoss(focal_gamma=-0.5), ValueError, "focal_gamma"),
    (lambda x, y: rarekit.BCEWithLogitsLoss(clip=2.0), ValueError, "clip"),
    (lambda x, y: rarekit.AsymmetricLoss(gamma_neg=-1), ValueError, "gamma_neg"),
])
def test_bad_input_is_refused_clearly(call, error, match):
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    before = x.clone(), y.clone()
    with pytest.raises(error, match=match):
        call(x, y)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


@needs_native
def test_the_op_checks_its_arguments():
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    op = torch.ops.rarekit.sigmoid_loss_forward
    with pytest.raises(ValueError, match="must be the same as input size"):
        op(x, y[:, :2], None, None, None, None, 0.0, 0.0, 0.0, False, 1, False)
    with pytest.raises(TypeError, match="target must have the input's dtype"):
        op(x, y.double(), None, None, None, None, 0.0, 0.0, 0.0, False, 1, False)
    with pytest.raises(ValueError, match="does not broadcast"):
        op(x, y, torch.rand(5), None, None, None, 0.0, 0.0, 0.0, False, 1, False)
    with pytest.raises(ValueError, match="clip must be in"):
        op(x, y, None, None, None, None, 0.0, 0.0, 1.5, False, 1, False)
    with pytest.raises(ValueError, match="reduction must be"):
        op(x, y, None, None, None, None, 0.0, 0.0, 0.0, False, 7, False)
    with pytest.raises(TypeError, match="input must be float32"):
        op(x.long(), y.long(), None, None, None, None, 0.0, 0.0, 0.0, False, 1, False)
    with pytest.raises(ValueError, match="grad_loss must have shape"):
        torch.ops.rarekit.sigmoid_loss_backward(torch.ones(2), x, y, None, None, None, None, 0.0, 0.0, 0.0, False, 0,
                                                [True, False])
