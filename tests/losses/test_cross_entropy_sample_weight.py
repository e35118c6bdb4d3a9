"""rarekit.cross_entropy(sample_weight=..., target_margin=...) (issue 21 section 3): per-row weights and
LDAM margins against an fp64 eager formula for every reduction and option, fp64 gradcheck,
torch.compile(fullgraph=True), bad input; and the weighted "mean" divisor (one counting pass) under
torch.compile."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit import _backend

OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"label_smoothing": 0.2, "smoothing_mode": "target_weighted"},
    {"focal_gamma": 2.0},
    {"z_loss": 1e-2, "adjusted": True},
    {"focal_gamma": 1.0, "label_smoothing": 0.1, "z_loss": 1e-3, "adjusted": True},
    {"margined": True},
    {"margined": True, "adjusted": True, "label_smoothing": 0.2},
    {"margined": True, "label_smoothing": 0.2, "smoothing_mode": "target_weighted", "focal_gamma": 2.0},
    {"margined": True, "adjusted": True, "focal_gamma": 1.0, "label_smoothing": 0.1, "z_loss": 1e-3},
]


def margined_logits(logits, target, adjustment=None, target_margin=None, ignore_index=-100):
    """z' in fp64: z + a, less m_y on each non-ignored row's target (LDAM, Cao et al. 2019)."""
    z = logits.double() + (adjustment.double() if adjustment is not None else 0.0)
    if target_margin is None:
        return z
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    return z - F.one_hot(y, z.shape[1]) * (target_margin.double()[y] * valid)[:, None]


def eager_rows(logits, target, weight, adjustment, ignore_index, label_smoothing=0.0, smoothing_mode="pytorch",
               focal_gamma=0.0, z_loss=0.0, target_margin=None):
    """The row losses in fp64 from torch's log_softmax, written out independently of rarekit.reference."""
    z = margined_logits(logits, target, adjustment, target_margin, ignore_index)
    classes = z.shape[1]
    w = weight.double() if weight is not None else torch.ones(classes, dtype=torch.float64)
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    log_p = torch.log_softmax(z, 1)
    w_y = w[y]
    nll = -log_p.gather(1, y[:, None])[:, 0]
    smooth = -(log_p.sum(1) * w_y if smoothing_mode == "target_weighted" else (log_p * w).sum(1))
    base = (1 - label_smoothing) * w_y * nll + label_smoothing / classes * smooth
    loss = (1 - nll.neg().exp()).pow(focal_gamma) * base + z_loss * w_y * torch.logsumexp(z, 1) ** 2
    return torch.where(valid, loss, 0.0), (w_y * valid).sum()


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_the_fp64_formula(gen, options, weighted):
    for (rows, classes), reduction in itertools.product([(37, 3), (20, 100), (9, 300)], ["mean", "sum", "none"]):
        logits = torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 2
        target = torch.randint(0, classes, (rows,), generator=gen)
        target[::4] = -100
        sample_weight = torch.rand(rows, generator=gen, dtype=torch.float64) * 3
        sample_weight[1] = 0.0
        weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
        adjustment = torch.randn(classes, generator=gen, dtype=torch.float64) if options.get("adjusted") else None
        margin = torch.rand(classes, generator=gen, dtype=torch.float64) * 2 if options.get("margined") else None
        kwargs = {k: v for k, v in options.items() if k not in ("adjusted", "margined")}
        x = logits.clone().requires_grad_()
        s = sample_weight.clone().requires_grad_()
        loss = rarekit.cross_entropy(x, target, weight, reduction=reduction, sample_weight=s,
                                     logit_adjustment=adjustment, target_margin=margin, **kwargs)
        x_ref = logits.clone().requires_grad_()
        s_ref = sample_weight.clone().requires_grad_()
        rows_loss, divisor = eager_rows(x_ref, target, weight, adjustment, -100, target_margin=margin, **kwargs)
        rows_loss = rows_loss * s_ref
        expected = {"none": rows_loss, "sum": rows_loss.sum(), "mean": rows_loss.sum() / divisor}[reduction]
        probe = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(loss, expected)
        (loss * probe).sum().backward()
        (expected * probe).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(s.grad, s_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_and_float_logits_take_the_rows_in_float32(gen, dtype):
    logits = torch.randn(50, 10, generator=gen).to(dtype)
    target = torch.randint(0, 10, (50,), generator=gen)
    sample_weight = torch.rand(50, generator=gen)
    loss = rarekit.cross_entropy(logits, target, reduction="none", sample_weight=sample_weight)
    expected = F.cross_entropy(logits.float(), target, reduction="none") * sample_weight
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


def test_spatial_targets_take_weights_of_their_shape(gen):
    logits = torch.randn(3, 5, 4, 2, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 5, (3, 4, 2), generator=gen)
    sample_weight = torch.rand(3, 4, 2, generator=gen, dtype=torch.float64)
    loss = rarekit.cross_entropy(logits, target, reduction="sum", sample_weight=sample_weight)
    expected = (F.cross_entropy(logits, target, reduction="none") * sample_weight).sum()
    torch.testing.assert_close(loss, expected)


def test_gradcheck_fp64(gen):
    logits = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (11,), generator=gen)
    target[3] = -100
    sample_weight = (torch.rand(11, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda x, s: rarekit.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=0.1,
                                               focal_gamma=1.5, sample_weight=s), (logits, sample_weight))


@pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
def test_compiles_fullgraph_with_sample_weight_and_a_counted_divisor(gen):
    """200 rows > 7 classes: the weighted "mean" divisor comes from rarekit::count."""
    torch._dynamo.reset()
    logits = torch.randn(200, 7, generator=gen)
    target = torch.randint(0, 7, (200,), generator=gen)
    target[::9] = -100
    weight = torch.rand(7, generator=gen) + 0.1
    sample_weight = torch.rand(200, generator=gen)

    def loss_fn(x):
        return rarekit.cross_entropy(x, target, weight, sample_weight=sample_weight, label_smoothing=0.1)

    compiled = torch.compile(loss_fn, fullgraph=True)
    x, x_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = compiled(x)
    loss.backward()
    rows = F.cross_entropy(x_ref, target, weight, reduction="none", label_smoothing=0.1)
    expected = (rows * sample_weight).sum() / weight[target[target != -100]].sum()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch._dynamo.reset()


def test_weighted_mean_divisor_counts_match_torch(gen):
    """The counted divisor (rows > classes) equals torch's Σ w_y, ignore_index inside the classes too."""
    for ignore_index in (-100, 2):
        logits = torch.randn(500, 6, generator=gen)
        target = torch.randint(0, 6, (500,), generator=gen)
        weight = torch.rand(6, generator=gen) + 0.1
        loss = rarekit.cross_entropy(logits, target, weight, ignore_index=ignore_index)
        expected = F.cross_entropy(logits, target, weight, ignore_index=ignore_index)
        torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("sample_weight, error, match", [
    (torch.ones(5, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(4), ValueError, r"target's shape \(5,\)"),
    (torch.tensor([1.0, -0.5, 1.0, 1.0, 1.0]), ValueError, "finite and >= 0, found -0.5"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0]), ValueError, "finite and >= 0"),
    (torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0]), ValueError, "finite and >= 0"),
])
def test_bad_sample_weight_raises(gen, sample_weight, error, match):
    with pytest.raises(error, match=match):
        rarekit.cross_entropy(torch.randn(5, 3, generator=gen), torch.tensor([0, 1, 2, 0, 1]),
                              sample_weight=sample_weight)


def test_sample_weight_refuses_inplace_backward_and_probability_targets(gen):
    logits = torch.randn(5, 3, generator=gen)
    with pytest.raises(ValueError, match="inplace_backward=False"):
        rarekit.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1]), sample_weight=torch.ones(5),
                              inplace_backward=True)
    with pytest.raises(ValueError, match="class-index targets"):
        rarekit.cross_entropy(logits, torch.softmax(logits, 1), sample_weight=torch.ones(5))


# ---- target_margin (LDAM): the fp32 kernels (few-class blocks for C <= 32, the row kernel above), inplace_backward,
# half precision, a dominating target, gradcheck, torch.compile, bad input

MARGIN_OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"label_smoothing": 0.2, "smoothing_mode": "target_weighted", "adjusted": True},
    {"focal_gamma": 2.0, "z_loss": 1e-2},
    {"focal_gamma": 1.0, "label_smoothing": 0.1, "z_loss": 1e-3, "adjusted": True},
]


def margin_case(gen, device, rows, classes, dtype=torch.float32, adjusted=False):
    logits = (torch.randn(rows, classes, generator=gen) * 3).to(device=device, dtype=dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[::5] = -100
    weight = torch.rand(classes, generator=gen) + 0.1
    margin = torch.rand(classes, generator=gen) * 2 - 0.5  # negative margins are allowed too
    adjustment = torch.randn(classes, generator=gen) if adjusted else None
    return logits, target.to(device), weight.to(device), margin.to(device), \
        None if adjustment is None else adjustment.to(device)


@pytest.mark.parametrize("options", MARGIN_OPTIONS, ids=str)
@pytest.mark.parametrize("classes", [2, 10, 32, 1000])
@pytest.mark.parametrize("inplace", [False, True])
def test_target_margin_matches_the_fp64_formula(device, gen, options, classes, inplace):
    """C = 2, 10, 32 take the few-class kernels, C = 1000 the row kernel; each against F.cross_entropy on
    z' (without focal and z-loss) and the fp64 formula, for every reduction, values and gradients."""
    options = dict(options)
    logits, target, weight, margin, adjustment = margin_case(gen, device, 67, classes,
                                                             adjusted=options.pop("adjusted", False))
    for reduction in ("mean", "sum", "none"):
        x = logits.clone().requires_grad_()
        loss = rarekit.cross_entropy(x * 1.0 if inplace else x, target, weight, reduction=reduction,
                                     logit_adjustment=adjustment, target_margin=margin, inplace_backward=inplace,
                                     **options)
        x_ref = logits.double().cpu().requires_grad_()
        rows_loss, divisor = eager_rows(x_ref, target.cpu(), weight.cpu(), None if adjustment is None else
                                        adjustment.cpu(), -100, target_margin=margin.cpu(), **options)
        expected = {"none": rows_loss, "sum": rows_loss.sum(), "mean": rows_loss.sum() / divisor}[reduction]
        if not options.get("focal_gamma") and options.get("smoothing_mode", "pytorch") == "pytorch":
            z = margined_logits(logits.cpu(), target.cpu(), None if adjustment is None else adjustment.cpu(),
                                margin.cpu())
            torch.testing.assert_close(expected, F.cross_entropy(z, target.cpu(), weight.cpu().double(),
                                                                 reduction=reduction,
                                                                 label_smoothing=options.get("label_smoothing", 0.0)))
        probe = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(loss.double().cpu(), expected, rtol=2e-5, atol=2e-5)
        (loss * probe.to(loss)).sum().backward()
        (expected * probe).sum().backward()
        torch.testing.assert_close(x.grad.double().cpu(), x_ref.grad, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
@pytest.mark.parametrize("inplace", [False, True])
def test_reference_backend_takes_target_margin(gen, inplace):
    """The pure-PyTorch path (no extension, or RAREKIT_FORCE_REFERENCE=1) gives the kernels' values and
    gradients with a margin, inplace_backward's reference path included."""
    logits, target, weight, margin, adjustment = margin_case(gen, "cpu", 30, 7, adjusted=True)
    results = []
    for backend in ("native", "reference"):
        rarekit.set_backend(backend)
        try:
            x = logits.clone().requires_grad_()
            loss = rarekit.cross_entropy(x * 1.0 if inplace else x, target, weight, logit_adjustment=adjustment,
                                         target_margin=margin, label_smoothing=0.1, focal_gamma=1.0,
                                         inplace_backward=inplace)
            loss.backward()
        finally:
            rarekit.set_backend("native")
        results.append((loss, x.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("classes", [2, 10, 32, 1000])
def test_margin_on_a_dominating_target_is_exact(device, gen, classes):
    """z_y = 50, the other logits 0: the target's term is summed as z'_y itself (fp32). m_y = 0.5 keeps the
    target dominant (the loss, ~(C-1) e^-49.5, is 0 in fp32 as in torch, never the 1e-8 noise of a corrected
    sum; the other classes' gradients are exact to 1e-6); m_y = 50 and 49 cancel its dominance (loss log C,
    and log(e + C - 1) - 1), where a sum that held e^(z_y - M) and then subtracted it would be 0."""
    target = ((torch.arange(6) * 7 + 1) % classes).to(device)
    for margin_value in (0.5, 49.0, 50.0):
        logits = torch.zeros(6, classes, device=device)
        logits[torch.arange(6), target] = 50.0
        margin = torch.full((classes,), margin_value, device=device)
        x = logits.clone().requires_grad_()
        loss = rarekit.cross_entropy(x, target, reduction="none", target_margin=margin)
        loss.sum().backward()
        z = logits.double().cpu().requires_grad_()
        expected = F.cross_entropy(margined_logits(z, target.cpu(), None, margin.cpu()), target.cpu(), reduction="none")
        expected.sum().backward()
        if margin_value == 0.5:
            assert torch.all(loss.cpu().double() - expected <= 1e-12) and torch.all(loss >= 0)
            others = torch.ones_like(z, dtype=torch.bool)
            others[torch.arange(6), target.cpu()] = False
            torch.testing.assert_close(x.grad.cpu().double()[others], z.grad[others], rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(loss.cpu().double(), expected, rtol=1e-6, atol=0)
            torch.testing.assert_close(x.grad.cpu().double(), z.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [10, 1000])
def test_target_margin_in_half_precision(device, gen, dtype, classes):
    """Half logits: no further from the fp64 formula than the eager formula on the fp32 upcast."""
    logits, target, weight, margin, _ = margin_case(gen, device, 64, classes)
    logits = logits.to(dtype)
    x = logits.clone().requires_grad_()
    loss = rarekit.cross_entropy(x, target, weight, target_margin=margin, label_smoothing=0.1, focal_gamma=1.0)
    loss.backward()
    results = {}
    for name, precision in (("exact", torch.float64), ("upcast", torch.float32)):
        z = logits.cpu().to(precision).requires_grad_()
        rows_loss, divisor = eager_rows(z, target.cpu(), weight.cpu().to(precision), None, -100,
                                        label_smoothing=0.1, focal_gamma=1.0, target_margin=margin.cpu().to(precision))
        value = rows_loss.sum() / divisor
        value.backward()
        results[name] = value.to(dtype).double(), z.grad.to(dtype).double()
    (exact, exact_grad), (upcast, upcast_grad) = results["exact"], results["upcast"]
    assert loss.dtype == dtype
    assert abs(loss.double().cpu() - exact) <= abs(upcast - exact) + torch.finfo(dtype).eps * abs(exact)
    grad_error = (x.grad.double().cpu() - exact_grad).abs().max()
    assert grad_error <= (upcast_grad - exact_grad).abs().max() + torch.finfo(dtype).eps * exact_grad.abs().max()


def test_target_margin_gradcheck_fp64(gen):
    for classes in (3, 40):
        logits = torch.randn(9, classes, generator=gen, dtype=torch.float64, requires_grad=True)
        target = torch.randint(0, classes, (9,), generator=gen)
        target[2] = -100
        adjustment = torch.randn(classes, generator=gen, dtype=torch.float64, requires_grad=True)
        margin = torch.rand(classes, generator=gen, dtype=torch.float64)
        weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1
        for reduction in ("mean", "sum", "none"):
            assert torch.autograd.gradcheck(
                lambda x, a: rarekit.cross_entropy(x, target, weight, reduction=reduction, logit_adjustment=a,
                                                   target_margin=margin, label_smoothing=0.1, focal_gamma=1.5,
                                                   z_loss=1e-2), (logits, adjustment))


def test_target_margin_forward_mode_matches_reverse_mode(gen):
    logits = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, -100, 2])
    margin = torch.rand(5, generator=gen, dtype=torch.float64)
    tangent = torch.randn(7, 5, generator=gen, dtype=torch.float64)

    def loss_fn(x):
        return rarekit.cross_entropy(x, target, target_margin=margin, label_smoothing=0.1)

    _, forward = torch.func.jvp(loss_fn, (logits,), (tangent,))
    reverse = (torch.func.grad(loss_fn)(logits) * tangent).sum()
    torch.testing.assert_close(forward, reverse)
    with pytest.raises(RuntimeError, match="target_margin"):
        torch.func.jvp(lambda m: rarekit.cross_entropy(logits, target, target_margin=m), (margin,), (margin,))


@pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiles_fullgraph_with_target_margin(gen, dynamic):
    torch._dynamo.reset()
    logits = torch.randn(40, 12, generator=gen)
    target = torch.randint(0, 12, (40,), generator=gen)
    target[::7] = -100
    weight = torch.rand(12, generator=gen) + 0.1
    margin = torch.rand(12, generator=gen)

    def loss_fn(x):
        return rarekit.cross_entropy(x, target, weight, target_margin=margin, label_smoothing=0.1, focal_gamma=1.0)

    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=dynamic)
    x, x_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = compiled(x)
    loss.backward()
    rows_loss, divisor = eager_rows(x_ref, target, weight, None, -100, label_smoothing=0.1, focal_gamma=1.0,
                                    target_margin=margin)
    expected = rows_loss.sum() / divisor
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(x.grad.double(), x_ref.grad.double(), rtol=2e-5, atol=2e-6)
    torch._dynamo.reset()


def test_module_takes_target_margin_as_a_buffer(gen):
    logits = torch.randn(8, 4, generator=gen)
    target = torch.randint(0, 4, (8,), generator=gen)
    margin = torch.rand(4, generator=gen)
    module = rarekit.CrossEntropyLoss(target_margin=margin, label_smoothing=0.1)
    assert torch.equal(module.state_dict()["target_margin"], margin)
    expected = F.cross_entropy(margined_logits(logits, target, None, margin), target, label_smoothing=0.1)
    torch.testing.assert_close(module(logits, target).double(), expected)


@pytest.mark.parametrize("target_margin, error, match", [
    (torch.ones(3, dtype=torch.int64), TypeError, "target_margin must be a floating-point"),
    (torch.ones(4), ValueError, r"target_margin must have shape \(3,\)"),
    (torch.ones(1, 3), ValueError, r"target_margin must have shape \(3,\)"),
    (torch.tensor([0.5, float("nan"), 0.5]), ValueError,
     r"target_margin must be finite, found target_margin\[1\] = nan"),
    (torch.tensor([0.5, 0.5, float("-inf")]), ValueError, r"target_margin\[2\] = -inf"),
    ("0.5", TypeError, "target_margin must be a floating-point tensor"),
])
def test_bad_target_margin_raises(gen, target_margin, error, match):
    with pytest.raises(error, match=match):
        rarekit.cross_entropy(torch.randn(5, 3, generator=gen), torch.tensor([0, 1, 2, 0, 1]),
                              target_margin=target_margin)


def test_target_margin_refuses_a_gradient_and_probability_targets(gen):
    logits = torch.randn(5, 3, generator=gen)
    with pytest.raises(RuntimeError, match="not differentiable with respect to `target_margin`"):
        rarekit.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1]), target_margin=torch.rand(3, requires_grad=True))
    with pytest.raises(ValueError, match="target_margin needs class-index targets"):
        rarekit.cross_entropy(logits, torch.softmax(logits, 1), target_margin=torch.rand(3))


@pytest.mark.cuda
def test_target_margin_on_the_wrong_device_raises(gen):
    with pytest.raises(ValueError, match="target_margin is on"):
        rarekit.cross_entropy(torch.randn(5, 3, device="cuda"), torch.tensor([0, 1, 2, 0, 1], device="cuda"),
                              target_margin=torch.rand(3))
