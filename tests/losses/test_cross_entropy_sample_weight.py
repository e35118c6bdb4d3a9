"""rarekit.cross_entropy(sample_weight=...) (issue 21 section 3): per-row weights against an fp64 eager
formula for every reduction and option, fp64 gradcheck, torch.compile(fullgraph=True), bad input; and the
weighted "mean" divisor (one counting pass) under torch.compile."""

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
]


def eager_rows(logits, target, weight, adjustment, ignore_index, label_smoothing=0.0, smoothing_mode="pytorch",
               focal_gamma=0.0, z_loss=0.0):
    """The row losses in fp64 from torch's log_softmax, written out independently of rarekit.reference."""
    z = logits.double() + (adjustment.double() if adjustment is not None else 0.0)
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
        kwargs = {k: v for k, v in options.items() if k != "adjusted"}
        x = logits.clone().requires_grad_()
        s = sample_weight.clone().requires_grad_()
        loss = rarekit.cross_entropy(x, target, weight, reduction=reduction, sample_weight=s,
                                     logit_adjustment=adjustment, **kwargs)
        x_ref = logits.clone().requires_grad_()
        s_ref = sample_weight.clone().requires_grad_()
        rows_loss, divisor = eager_rows(x_ref, target, weight, adjustment, -100, **kwargs)
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
