"""The few-class cross-entropy kernels (CPU: C <= 32, 16 rows per vector; CUDA: C <= 64; issue 21) against an fp64 autograd
reference, with every option, on the row counts and class counts where a block of 16 rows is full,
partial or empty; and the same results whatever the thread count (issue 20 item 22)."""

import pytest
import torch

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
    {"label_smoothing": 1.0},
    {"weighted": True, "focal_gamma": 2.0},
    {"focal_gamma": 0.5, "label_smoothing": 0.1},
    {"weighted": True, "adjusted": True, "z_loss": 1e-3},
    {"weighted": True, "adjusted": True, "focal_gamma": 1.0, "label_smoothing": 0.1, "z_loss": 1e-2},
]


def expected_loss_and_grad(logits, target, weight, adjustment, reduction, options, probe):
    """The fp64 reference (rarekit.reference) and its autograd gradient."""
    x = logits.detach().double().requires_grad_()
    rows = reference.cross_entropy_rows(
        x, target, weight.double() if weight is not None else None,
        adjustment.double() if adjustment is not None else None, options["ignore_index"],
        options.get("label_smoothing", 0.0), options.get("smoothing_mode") == "target_weighted",
        options.get("focal_gamma", 0.0), options.get("z_loss", 0.0))
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        valid = target != options["ignore_index"]
        w = weight.double() if weight is not None else torch.ones(logits.shape[1], dtype=torch.float64)
        loss = rows.sum() / (w[torch.where(valid, target, 0)] * valid).sum()
    (loss * probe).sum().backward()
    return loss.detach(), x.grad


def close(actual, expected, dtype, ill_conditioned=False):
    rtol, atol = TOL[dtype]
    if ill_conditioned and dtype == torch.float32:
        # focal γ < 1: ∂(1-p)^γ = γ (1-p)^(γ-1) grows without bound as p_y → 1, and 1 - p_y carries the
        # float32 rounding of the log-sum (the row-at-a-time kernel has the same error: 9e-5 in 2e5 rows)
        rtol, atol = 1e-3, 1e-4
    finite = expected[torch.isfinite(expected)]
    scale = max(float(finite.abs().max()) if finite.numel() else 1.0, 1.0)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale, equal_nan=True)


def run_case(gen, rows, classes, dtype, reduction, options, ignore_fraction=0.25, inplace=False):
    if classes == 1 and 0 < options.get("focal_gamma", 0.0) < 1:
        return  # p_y = 1: the reference's autograd gives 0 · ∞ = NaN where the analytic gradient is 0
    logits = (torch.randn(rows, classes, generator=gen) * 3).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    ignore_index = -100 if classes == 1 or rows % 2 else int(torch.randint(0, classes, (), generator=gen))
    target = torch.where(torch.rand(rows, generator=gen) < ignore_fraction, ignore_index, target)
    weight = torch.rand(classes, generator=gen) + 0.1 if options.get("weighted") else None
    adjustment = torch.randn(classes, generator=gen) if options.get("adjusted") else None
    kwargs = {k: v for k, v in options.items() if k not in ("weighted", "adjusted")}
    probe = torch.randn(rows if reduction == "none" else (), generator=gen, dtype=torch.float64)
    expected, expected_grad = expected_loss_and_grad(logits, target, weight, adjustment, reduction,
                                                     dict(kwargs, ignore_index=ignore_index), probe)
    if inplace:
        leaf = logits.clone().requires_grad_()
        x = leaf * 1  # a non-leaf, as an LM head's output
    else:
        x = leaf = logits.clone().requires_grad_()
    loss = rarekit.cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
                                 logit_adjustment=adjustment, inplace_backward=inplace, **kwargs)
    (loss.double() * probe).sum().backward()
    context = f"rows={rows} classes={classes} {dtype} {reduction} {options} inplace={inplace}"
    ill_conditioned = 0 < options.get("focal_gamma", 0.0) < 1
    try:
        if reduction == "mean" and not torch.isfinite(expected):
            assert not torch.isfinite(loss), context
        else:
            close(loss.detach(), expected.to(loss.dtype), dtype, ill_conditioned)
        close(leaf.grad, expected_grad.to(dtype), dtype, ill_conditioned)
    except AssertionError as error:
        raise AssertionError(f"{context}: {error}") from None


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_few_classes_match_the_fp64_reference(gen, dtype, options):
    for rows, classes in [(1, 1), (5, 1), (16, 2), (17, 2), (33, 3), (40, 4), (31, 5), (48, 10), (21, 17),
                          (19, 32), (18, 33), (19, 64), (18, 65), (17, 100)]:
        for reduction in ("mean", "sum", "none"):
            run_case(gen, rows, classes, dtype, reduction, options)


@pytest.mark.parametrize("options", OPTIONS[:6], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_few_classes_inplace_backward(gen, dtype, options):
    for rows, classes in [(16, 2), (23, 3), (37, 10), (20, 64), (17, 100)]:
        for reduction in ("mean", "none"):
            run_case(gen, rows, classes, dtype, reduction, options, inplace=True)


@pytest.mark.parametrize("classes", [2, 10])
def test_every_target_ignored_and_empty_batch(gen, classes):
    for rows in (0, 3, 16, 35):
        for reduction in ("sum", "none"):
            run_case(gen, rows, classes, torch.float32, reduction, {"weighted": True}, ignore_fraction=1.0)
    logits = torch.randn(20, classes, generator=gen, requires_grad=True)
    loss = rarekit.cross_entropy(logits, torch.full((20,), -100))
    loss.backward()
    assert torch.isnan(loss) and torch.equal(logits.grad, torch.zeros_like(logits))


def test_ignored_rows_with_nan_logits_get_zero_gradient(gen):
    logits = torch.randn(37, 3, generator=gen)
    target = torch.randint(0, 3, (37,), generator=gen)
    target[::4] = -100
    logits[::4] = float("nan")
    logits.requires_grad_()
    rarekit.cross_entropy(logits, target, reduction="sum").backward()
    assert torch.equal(logits.grad[::4], torch.zeros(10, 3))
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("classes", [2, 7])
def test_out_of_range_target_in_a_block_raises(gen, classes):
    logits = torch.randn(40, classes, generator=gen, requires_grad=True)
    target = torch.randint(0, classes, (40,), generator=gen)
    target[21] = classes
    with pytest.raises(IndexError, match=rf"target\[21\] = {classes}"):
        rarekit.cross_entropy(logits, target)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_same_result_on_one_and_two_threads(gen, classes):
    """Row blocks and parallel chunks split the rows differently on 1 and 2 threads: each row's
    loss and gradient do not depend on it."""
    rows = 2**20 // classes
    logits = torch.randn(rows, classes, generator=gen)
    target = torch.randint(0, classes, (rows,), generator=gen)
    weight = torch.rand(classes, generator=gen) + 0.1
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            x = logits.clone().requires_grad_()
            loss = rarekit.cross_entropy(x, target, weight, reduction="none", label_smoothing=0.1)
            loss.sum().backward()
            results.append((loss, x.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_count_gather_and_sampling_same_on_one_and_two_threads(gen):
    """The work-sharing helper (csrc/include/rarekit/cpu_parallel.h) over inputs large enough to run
    in parallel: the same results as one thread and as torch."""
    ids = torch.randint(0, 5000, (3_000_000,), generator=gen)
    ids[::1000] = -1
    weights = torch.rand(3_000_000, generator=gen, dtype=torch.float64)
    source = torch.randn(100_000, 16, generator=gen)
    index = torch.randint(0, 100_000, (400_000,), generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append((rarekit.count(ids, 5000, ignore_index=-1),
                            rarekit.count(ids, 5000, ignore_index=-1, weights=weights),
                            rarekit.ops.gather_rows(source, index),
                            rarekit.ops.class_buckets(ids.clamp(min=0), 5000)))
    finally:
        torch.set_num_threads(threads)
    kept = ids[ids >= 0]
    assert torch.equal(results[0][0], torch.bincount(kept, minlength=5000))
    torch.testing.assert_close(results[0][1], torch.bincount(kept, weights[ids >= 0], minlength=5000).to(results[0][1].dtype))
    assert torch.equal(results[0][2], source[index])
    order, offsets = results[0][3]
    assert torch.equal(order, torch.argsort(ids.clamp(min=0), stable=True))
    for one, two in zip(results[0], results[1]):
        for a, b in zip(one if isinstance(one, tuple) else (one,), two if isinstance(two, tuple) else (two,)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("classes", [3, 50])
def test_backward_op_names_an_out_of_range_target(gen, classes):
    """The backward's target check is a scan on the host now (no torch op unless one is bad)."""
    logits = torch.randn(20, classes, generator=gen)
    target = torch.randint(0, classes, (20,), generator=gen)
    config = (-100, 0.0, False, 0.0, 0.0)
    _, row_terms = torch.ops.rarekit.cross_entropy_forward(logits, target, None, None, None, *config, True)
    target[13] = -5
    with pytest.raises(IndexError, match=r"target\[13\] = -5"):
        torch.ops.rarekit.cross_entropy_backward(torch.ones(20), logits, target, None, None, None, row_terms,
                                                 *config)
