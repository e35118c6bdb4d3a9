"""The one-pass reduced cross-entropy (``rarekit::cross_entropy_reduced``, issue 21): "mean" and "sum" losses of up
to 1024 classes write their gradient in the forward's pass and the backward hands it out. Held to torch's
F.cross_entropy and to an fp64 autograd reference (rarekit.reference), with every option, on the small batches
of a training loop (256 x 10, 64 x 2) and the few-class shapes; gradcheck, opcheck, torch.compile, retained
graphs, double backward and the thread count."""

import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit import _backend, reference

pytestmark = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")

# rtol, atol (relative to the largest |expected|, at least 1)
TOL = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-10, 1e-12), torch.bfloat16: (1.6e-2, 1e-2),
       torch.float16: (2e-3, 1e-3)}
OPTIONS = [
    {},
    {"weighted": True},
    {"weighted": True, "label_smoothing": 0.2},
    {"weighted": True, "label_smoothing": 0.3, "smoothing_mode": "target_weighted"},
    {"weighted": True, "focal_gamma": 2.0},
    {"weighted": True, "adjusted": True, "z_loss": 1e-3},
    {"weighted": True, "sampled": True, "label_smoothing": 0.1},
    {"weighted": True, "adjusted": True, "sampled": True, "focal_gamma": 1.0, "label_smoothing": 0.1, "z_loss": 1e-2},
    {"weighted": True, "margined": True, "sampled": True, "focal_gamma": 1.0, "label_smoothing": 0.1},
]
SHAPES = [(256, 10), (64, 2), (1, 3), (33, 2), (100, 100), (40, 1024)]


def make_case(gen, rows, classes, dtype, options, ignore_fraction=0.25):
    logits = (torch.randn(rows, classes, generator=gen) * 3).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    ignore_index = -100 if rows % 2 else int(torch.randint(0, classes, (), generator=gen))
    target = torch.where(torch.rand(rows, generator=gen) < ignore_fraction, ignore_index, target)
    extras = {
        "weight": torch.rand(classes, generator=gen) + 0.1 if options.get("weighted") else None,
        "logit_adjustment": torch.randn(classes, generator=gen) if options.get("adjusted") else None,
        "sample_weight": torch.rand(rows, generator=gen) * 2 if options.get("sampled") else None,
        "target_margin": torch.rand(classes, generator=gen) if options.get("margined") else None,
    }
    kwargs = {k: v for k, v in options.items() if k not in ("weighted", "adjusted", "sampled", "margined")}
    return logits, target, dict(kwargs, ignore_index=ignore_index, **extras)


def reference_loss(logits, target, reduction, kwargs):
    """The fp64 formula: per-row losses of rarekit.reference, times sample_weight, over Σ w_y for "mean"."""
    double = lambda t: None if t is None else t.double()  # noqa: E731
    rows = reference.cross_entropy_rows(
        logits, target, double(kwargs["weight"]), double(kwargs["logit_adjustment"]), kwargs["ignore_index"],
        kwargs.get("label_smoothing", 0.0), kwargs.get("smoothing_mode") == "target_weighted",
        kwargs.get("focal_gamma", 0.0), kwargs.get("z_loss", 0.0), double(kwargs["target_margin"]))
    if kwargs["sample_weight"] is not None:
        rows = rows * kwargs["sample_weight"].double()
    if reduction == "sum":
        return rows.sum()
    valid = target != kwargs["ignore_index"]
    weight = double(kwargs["weight"]) if kwargs["weight"] is not None else torch.ones(logits.shape[1], dtype=torch.float64)
    return rows.sum() / (weight[torch.where(valid, target, 0)] * valid).sum()


def close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    finite = expected[torch.isfinite(expected)]
    scale = max(float(finite.abs().max()) if finite.numel() else 1.0, 1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale, equal_nan=True)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_reduced_loss_matches_the_fp64_reference(gen, dtype, options):
    for rows, classes in SHAPES:
        for reduction in ("mean", "sum"):
            logits, target, kwargs = make_case(gen, rows, classes, dtype, options)
            x = logits.detach().double().clone().requires_grad_()
            expected = reference_loss(x, target, reduction, kwargs)
            probe = float(torch.randn((), generator=gen))
            (expected * probe).backward()
            leaf = logits.clone().requires_grad_()
            loss = rarekit.cross_entropy(leaf, target, reduction=reduction, **kwargs)
            # the one-pass path runs for float32/64; bf16/fp16 keep the per-row backward (one rounding of the
            # gradient whatever grad_output is)
            assert ("ReducedCrossEntropy" in loss.grad_fn.name()) == (dtype in (torch.float32, torch.float64))
            assert loss.dtype == dtype and loss.shape == ()
            (loss * probe).backward()
            context = f"{rows}x{classes} {dtype} {reduction} {options}"
            try:
                close(loss.detach(), expected.detach().to(dtype), dtype)
                close(leaf.grad, x.grad.to(dtype), dtype)
            except AssertionError as error:
                raise AssertionError(f"{context}: {error}") from None


@pytest.mark.parametrize("shape", [(256, 10), (64, 2), (2**14, 2), (3000, 100), (8, 5, 3), (4, 3, 2, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_torch_cross_entropy(gen, shape, reduction):
    classes = shape[1]
    logits = torch.randn(*shape, generator=gen)
    target = torch.randint(0, classes, shape[:1] + shape[2:], generator=gen)
    target.view(-1)[::7] = 3 if classes > 3 else -100
    ignore_index = 3 if classes > 3 else -100
    weight = torch.rand(classes, generator=gen) + 0.5
    for smoothing in (0.0, 0.15):
        ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        loss = rarekit.cross_entropy(ours, target, weight, ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=smoothing)
        expected = F.cross_entropy(theirs, target, weight, ignore_index=ignore_index, reduction=reduction,
                                   label_smoothing=smoothing)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=2e-5, atol=1e-6)
        # atol relative to the largest entry: p_k - 1 for p_k near 1 carries float32 rounding of that size
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=2e-5, atol=2e-6 * float(theirs.grad.abs().max()))


@pytest.mark.parametrize("classes", [2, 10, 100])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_target_margin_in_one_pass_matches_torch_on_shifted_logits(gen, classes, reduction):
    """LDAM through the one-pass path: torch's cross-entropy of z with z[i, y_i] - m[y_i]."""
    logits = torch.randn(300, classes, generator=gen, dtype=torch.float64)
    target = torch.randint(0, classes, (300,), generator=gen)
    target[::9] = -100
    weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.5
    margin = torch.rand(classes, generator=gen, dtype=torch.float64)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = rarekit.cross_entropy(ours, target, weight, reduction=reduction, label_smoothing=0.1, target_margin=margin)
    assert "ReducedCrossEntropy" in loss.grad_fn.name()
    rows = torch.arange(300)[target >= 0]
    shifted = theirs.clone()
    shifted[rows, target[rows]] -= margin[target[rows]]
    expected = F.cross_entropy(shifted, target, weight, reduction=reduction, label_smoothing=0.1)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_op_in_every_dtype_against_fp64(gen, dtype):
    """The op itself (the half dtypes too, which cross_entropy sends to the per-row path)."""
    options = dict(OPTIONS[-2], margined=True)  # every option: focal 1, smoothing 0.1, z-loss 1e-2
    logits, target, kwargs = make_case(gen, 50, 7, dtype, options)
    x = logits.detach().double().clone().requires_grad_()
    expected = reference_loss(x, target, "mean", kwargs)
    expected.backward()
    loss, gradient = torch.ops.rarekit.cross_entropy_reduced(
        logits, target, kwargs["weight"], kwargs["logit_adjustment"], kwargs["target_margin"], kwargs["sample_weight"],
        kwargs["ignore_index"], 0.1, False, 1.0, 1e-2, 1, True, True)
    assert loss.dtype == gradient.dtype == dtype
    close(loss, expected.detach().to(dtype), dtype)
    close(gradient, x.grad.to(dtype), dtype)


def test_large_vocabularies_keep_the_row_terms_backward(gen):
    logits = torch.randn(4, 1025, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(logits, torch.randint(0, 1025, (4,), generator=gen))
    assert "ReducedCrossEntropy" not in loss.grad_fn.name()


@pytest.mark.parametrize("classes", [2, 10])
def test_every_target_ignored_gives_nan_mean_and_zero_gradient(gen, classes):
    for rows in (0, 3, 20):
        logits = torch.randn(rows, classes, generator=gen, requires_grad=True)
        target = torch.full((rows,), -100)
        loss = rarekit.cross_entropy(logits, target, torch.rand(classes, generator=gen))
        loss.backward()
        assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, target))
        assert torch.equal(logits.grad, torch.zeros_like(logits))
        total = rarekit.cross_entropy(logits, target, reduction="sum")
        assert total.item() == 0.0


def test_gradcheck_float64(gen):
    logits = torch.randn(19, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    adjustment = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (19,), generator=gen)
    target[::5] = -100
    weight = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    sample_weight = torch.rand(19, generator=gen, dtype=torch.float64)
    for reduction in ("mean", "sum"):
        for options in ({}, {"label_smoothing": 0.2, "focal_gamma": 1.5, "z_loss": 1e-2},
                        {"label_smoothing": 0.1, "smoothing_mode": "target_weighted", "sample_weight": sample_weight}):
            function = lambda x, a: rarekit.cross_entropy(x, target, weight, reduction=reduction,  # noqa: E731
                                                          logit_adjustment=a, **options)
            assert "ReducedCrossEntropy" in function(logits, adjustment).grad_fn.name()
            assert torch.autograd.gradcheck(function, (logits, adjustment))


def test_backward_scales_by_grad_output_and_retains_the_graph(gen):
    logits = torch.randn(30, 4, generator=gen)
    target = torch.randint(0, 4, (30,), generator=gen)
    x, reference_x = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = rarekit.cross_entropy(x, target)
    expected = F.cross_entropy(reference_x, target)
    (loss * 3).backward(retain_graph=True)
    (expected * 3).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, reference_x.grad)
    x.grad.zero_()  # the handed-out buffer, mutated: the second backward does not read it
    reference_x.grad.zero_()
    loss.backward(retain_graph=True)
    expected.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, reference_x.grad)
    loss.backward()  # a third time, accumulated into .grad
    expected.backward()
    torch.testing.assert_close(x.grad, reference_x.grad)


def test_second_backward_without_retain_graph_raises_as_torch(gen):
    x = torch.randn(8, 3, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(x, torch.randint(0, 3, (8,), generator=gen))
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_double_backward_raises(gen):
    x = torch.randn(8, 3, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(x, torch.randint(0, 3, (8,), generator=gen))
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()


def test_only_the_adjustment_requires_grad(gen):
    logits = torch.randn(12, 5, generator=gen)
    target = torch.randint(0, 5, (12,), generator=gen)
    adjustment = torch.randn(5, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(logits, target, logit_adjustment=adjustment)
    loss.backward()
    reference_adjustment = adjustment.detach().clone().requires_grad_()
    F.cross_entropy(logits + reference_adjustment, target).backward()
    torch.testing.assert_close(adjustment.grad, reference_adjustment.grad)


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_of_one_input_and_its_double_backward(gen, weighted):
    """autograd.grad for the adjustment alone (the node's input slots shift with a weight), and a second
    derivative of it raising (the C++ node of the eager CPU path)."""
    logits = torch.randn(12, 5, generator=gen, requires_grad=True)
    target = torch.randint(0, 5, (12,), generator=gen)
    weight = torch.rand(5, generator=gen) + 0.1 if weighted else None
    adjustment = torch.randn(5, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(logits, target, weight, logit_adjustment=adjustment)
    grad_adjustment, = torch.autograd.grad(loss, adjustment, create_graph=True)
    reference = adjustment.detach().clone().requires_grad_()
    expected, = torch.autograd.grad(F.cross_entropy(logits.detach() + reference, target, weight), reference)
    torch.testing.assert_close(grad_adjustment, expected)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad_adjustment.sum().backward()


def test_no_grad_and_inference(gen):
    logits = torch.randn(256, 10, generator=gen, requires_grad=True)
    target = torch.randint(0, 10, (256,), generator=gen)
    with torch.no_grad():
        loss = rarekit.cross_entropy(logits, target)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), target))


def test_differentiable_sample_weight_takes_the_per_row_path(gen):
    logits = torch.randn(10, 3, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (10,), generator=gen)
    sample_weight = torch.rand(10, generator=gen, requires_grad=True)
    rarekit.cross_entropy(logits, target, sample_weight=sample_weight, reduction="sum").backward()
    expected = F.cross_entropy(logits.detach(), target, reduction="none")
    torch.testing.assert_close(sample_weight.grad, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_out_of_range_target_raises(gen, reduction):
    logits = torch.randn(40, 2, generator=gen, requires_grad=True)
    target = torch.randint(0, 2, (40,), generator=gen)
    target[21] = 2
    with pytest.raises(IndexError, match=r"target\[21\] = 2"):
        rarekit.cross_entropy(logits, target, reduction=reduction)


def test_op_refuses_bad_arguments(gen):
    logits = torch.randn(6, 3, generator=gen)
    target = torch.randint(0, 3, (6,), generator=gen)
    op = torch.ops.rarekit.cross_entropy_reduced
    scalars = (-100, 0.0, False, 0.0, 0.0)
    with pytest.raises(ValueError, match="reduction must be 1 \\(mean\\) or 2 \\(sum\\)"):
        op(logits, target, None, None, None, None, *scalars, 0, True, True)
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        op(logits, target, None, None, None, torch.ones(5), *scalars, 1, True, True)
    with pytest.raises(TypeError, match="sample_weight must be floating point"):
        op(logits, target, None, None, None, torch.ones(6, dtype=torch.long), *scalars, 1, True, True)
    with pytest.raises(ValueError, match="weight must have shape"):
        op(logits, target, torch.ones(4), None, None, None, *scalars, 1, True, True)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_same_loss_and_gradient_on_one_and_two_threads(gen, classes):
    rows = 2**20 // classes
    logits = torch.randn(rows, classes, generator=gen)
    target = torch.randint(0, classes, (rows,), generator=gen)
    weight = torch.rand(classes, generator=gen) + 0.1
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            x = logits.clone().requires_grad_()
            loss = rarekit.cross_entropy(x, target, weight, label_smoothing=0.1)
            loss.backward()
            results.append((loss, x.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][0], F.cross_entropy(logits, target, weight, label_smoothing=0.1))


def reduced_op_args(gen, device, classes, weighted, adjusted, sampled, smoothing, target_weighted, gamma, z_loss):
    rows = 11
    logits = torch.randn(rows, classes, generator=gen).to(device)
    target = torch.randint(0, classes, (rows,), generator=gen).to(device)
    target[4] = -100
    weight = torch.rand(classes, generator=gen).to(device) + 0.1 if weighted else None
    adjustment = torch.randn(classes, generator=gen).to(device) if adjusted else None
    sample_weight = torch.rand(rows, generator=gen).to(device) if sampled else None
    margin = torch.rand(classes, generator=gen).to(device) if adjusted else None  # margins where adjusted
    return logits, target, weight, adjustment, margin, sample_weight, -100, smoothing, target_weighted, gamma, z_loss


@pytest.mark.parametrize("config", [
    (False, False, False, 0.0, False, 0.0, 0.0),
    (True, False, True, 0.0, False, 0.0, 0.0),
    (True, True, False, 0.1, False, 0.5, 1e-3),
    (True, False, True, 0.2, True, 2.0, 0.0),
])
@pytest.mark.parametrize("classes", [2, 37])
def test_opcheck(device, gen, classes, config):
    logits, *rest = reduced_op_args(gen, device, classes, *config)
    op = torch.ops.rarekit.cross_entropy_reduced.default
    mean, total = 1, 2
    torch.library.opcheck(op, (logits.clone().requires_grad_(), *rest, mean, True, True))
    torch.library.opcheck(op, (logits.t().contiguous().t().clone().requires_grad_(), *rest, total, True, True))
    torch.library.opcheck(op, (logits.clone(), *rest, mean, False, True))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiles_fullgraph(device, gen, dynamic):
    torch._dynamo.reset()
    weight = torch.rand(10, generator=gen).to(device) + 0.1
    adjustment = torch.randn(10, generator=gen).to(device)

    def loss_fn(logits, target):
        return rarekit.cross_entropy(logits, target, weight, label_smoothing=0.1, focal_gamma=1.0,
                                     logit_adjustment=adjustment) * 2

    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=dynamic)
    for rows in (256, 64):  # a second shape: dynamic compiles once
        values = torch.randn(rows, 10, generator=gen).to(device)
        target = torch.randint(0, 10, (rows,), generator=gen).to(device)
        target[::5] = -100
        x, y = values.clone().requires_grad_(), values.clone().requires_grad_()
        loss, expected = compiled(x, target), loss_fn(y, target)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(x.grad, y.grad)
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_cuda_matches_cpu(gen, options):
    for rows, classes in SHAPES:
        for reduction in ("mean", "sum"):
            logits, target, kwargs = make_case(gen, rows, classes, torch.float32, options)
            cpu_x, cuda_x = logits.clone().requires_grad_(), logits.cuda().requires_grad_()
            cuda_kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            expected = rarekit.cross_entropy(cpu_x, target, reduction=reduction, **kwargs)
            loss = rarekit.cross_entropy(cuda_x, target.cuda(), reduction=reduction, **cuda_kwargs)
            assert "ReducedCrossEntropy" in loss.grad_fn.name()
            (expected * 2).backward()
            (loss * 2).backward()
            close(loss.cpu(), expected.detach(), torch.float32)
            close(cuda_x.grad.cpu(), cpu_x.grad, torch.float32)
