"""rarekit.cross_entropy and the loss modules against torch, the reference and independent formulas,
on fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit import _backend, reference

needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
INDEX_DTYPES = [torch.int64, torch.int32]
REDUCTIONS = ["mean", "sum", "none"]
# rtol, and atol relative to max(1, the largest finite |expected| value)
TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1.6e-2, 1e-5), torch.float16: (1e-3, 1e-5)}
# against torch's own half computation, which may be less accurate than ours

# (name, shape of the leaf tensor, view of the leaf that is passed as logits)
CASES = [
    ("unbatched", (7,), lambda x: x),
    ("C=1", (13, 1), lambda x: x),
    ("N,C", (37, 10), lambda x: x),
    ("C=33", (9, 33), lambda x: x),
    ("C=2049", (3, 2049), lambda x: x),
    ("C=5000", (5, 5000), lambda x: x),
    ("N=0", (0, 10), lambda x: x),
    ("N,C,d", (4, 6, 5), lambda x: x),
    ("N,C,d1,d2", (3, 5, 4, 2), lambda x: x),
    ("N=0,C,d", (0, 5, 3), lambda x: x),
    ("transposed", (24, 9), lambda x: x.t()),
    ("sliced", (12, 70), lambda x: x[1::2, 3:60:2]),
    ("channels-last", (3, 4, 17), lambda x: x.permute(0, 2, 1)),
]


def close(actual, expected, dtype=torch.float32, tol=None):
    """assert_close in float32/64 with NaN equal, atol relative to the scale of ``expected`` (at least 1)."""
    rtol, atol = tol or TOL[dtype]
    expected = expected.detach()
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    work = torch.float64 if expected.dtype == torch.float64 else torch.float32
    torch.testing.assert_close(actual.detach().to(work), expected.to(work), rtol=rtol, atol=atol * max(scale, 1.0),
                               equal_nan=True)


def target_shape(logits_shape):
    return () if len(logits_shape) == 1 else (logits_shape[0],) + tuple(logits_shape[2:])


def random_targets(gen, shape, classes, ignore_mode, dtype, device):
    """Targets in [0, classes) and the ignore_index; ``ignore_mode``: "absent" (no target equals it),
    "present" (-100 in ~30% of the targets), "in_range" (ignore_index is a class, in ~30% of the targets)."""
    target = torch.randint(0, classes, shape, generator=gen)
    ignore_index = -100
    if ignore_mode != "absent":
        ignore_index = -100 if ignore_mode == "present" else int(torch.randint(0, classes, (), generator=gen))
        target = torch.where(torch.rand(shape, generator=gen) < 0.3, ignore_index, target)
    return target.to(dtype).to(device), ignore_index


def exact_weights(gen, classes, device):
    """Class weights in [1/8, 4], multiples of 1/8: exact in bf16 and fp16 too."""
    return (torch.randint(1, 33, (classes,), generator=gen) / 8).to(device)


def loss_and_grad(fn, leaf_values, view, probe):
    """fn(view(leaf)) and the gradient of Σ probe·loss with respect to the leaf."""
    leaf = leaf_values.detach().clone().requires_grad_()
    loss = fn(view(leaf))
    (loss.to(probe.dtype) * probe).sum().backward()
    return loss.detach(), leaf.grad


def make_probe(gen, reduction, shape, device):
    return torch.randn(shape if reduction == "none" else (), generator=gen).to(device)


def check_smoothed_weighted_against_torch(gen, values, target, weight, reduction, torch_values, torch_target,
                                          dtype=torch.float32):
    """rarekit on (values, target) against torch on (torch_values, torch_target): loss, its dtype, gradient."""
    probe = make_probe(gen, reduction, tuple(target.shape), values.device)
    kwargs = dict(reduction=reduction, label_smoothing=0.1)
    loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, target, weight, **kwargs), values,
                               lambda x: x, probe)
    expected, expected_grad = loss_and_grad(lambda x: F.cross_entropy(x, torch_target, weight, **kwargs),
                                            torch_values, lambda x: x, probe)
    assert loss.dtype == dtype
    close(loss, expected, dtype)
    close(grad, expected_grad, dtype)


# ----------------------------------------------------------------------------------------------
# exact parity with torch.nn.functional.cross_entropy


def no_worse_than(ours, theirs, reference, dtype, context):
    """The largest error of ``ours`` against ``reference`` is at most that of ``theirs`` (torch in the same half
    dtype), plus one unit in the last place of the reference's scale; only where ``theirs`` is finite."""
    finite = torch.isfinite(theirs)
    if not bool(finite.any()):
        return
    reference = reference.detach().to(torch.float32)[finite]
    ours_error = (ours.detach().to(torch.float32)[finite] - reference).abs().max()
    theirs_error = (theirs.detach().to(torch.float32)[finite] - reference).abs().max()
    ulp = torch.finfo(dtype).eps * max(float(reference.abs().max()), 1.0)
    assert ours_error <= theirs_error + ulp, f"{context}: error {ours_error:.3g} against torch's {theirs_error:.3g}"


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch(device, gen, dtype, reduction, label_smoothing, weighted):
    for name, shape, view in CASES:
        values = (torch.randn(shape, generator=gen) * 3).to(dtype).to(device)
        logits_shape = view(values).shape
        classes = logits_shape[0 if len(logits_shape) == 1 else 1]
        weight = exact_weights(gen, classes, device) if weighted else None
        probe = make_probe(gen, reduction, target_shape(logits_shape), device)
        for ignore_mode in ("absent", "present", "in_range"):
            for index_dtype in INDEX_DTYPES:
                context = f"{name} ignore={ignore_mode} target={index_dtype}"
                target, ignore_index = random_targets(gen, target_shape(logits_shape), classes, ignore_mode,
                                                      index_dtype, device)
                kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
                loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, target, weight, **kwargs),
                                           values, view, probe)
                assert loss.dtype == dtype and grad.dtype == dtype, context
                # torch in float32 on the same (cast) inputs
                expected, expected_grad = loss_and_grad(
                    lambda x: F.cross_entropy(x, target.long(), weight, **kwargs), values.float(), view, probe)
                assert loss.shape == expected.shape, context
                try:
                    close(loss, expected, dtype)
                    close(grad, expected_grad, dtype)
                except AssertionError as error:
                    raise AssertionError(f"{context}: {error}") from None
                if dtype == torch.float32:
                    continue
                # no less accurate than torch's own half computation (against the float32 answer), where it is
                # finite: torch's bf16 gradient itself can be 50 % off on a target near p = 1
                half_weight = weight.to(dtype) if weight is not None else None
                torch_loss, torch_grad = loss_and_grad(
                    lambda x: F.cross_entropy(x, target.long(), half_weight, **kwargs), values, view, probe)
                no_worse_than(loss, torch_loss, expected, dtype, f"{context}: loss")
                no_worse_than(grad, torch_grad, expected_grad, dtype, f"{context}: gradient")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored_and_empty_batch(device, gen, reduction):
    logits = torch.randn(6, 11, generator=gen).to(device).requires_grad_()
    weight = torch.rand(11, generator=gen).to(device)
    for target, w in [(torch.full((6,), -100), None), (torch.full((6,), -100), weight), (torch.full((6,), 4), weight)]:
        target = target.to(device)
        ignore_index = int(target[0])
        ours = rarekit.cross_entropy(logits, target, w, ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=0.1)
        expected = F.cross_entropy(logits, target, w, ignore_index=ignore_index, reduction=reduction,
                                   label_smoothing=0.1)
        close(ours, expected)
        if reduction == "mean":
            assert torch.isnan(ours) and torch.isnan(expected)
        ours_grad, = torch.autograd.grad(ours.sum(), logits)
        expected_grad, = torch.autograd.grad(expected.sum(), logits)
        close(ours_grad, expected_grad)
    empty = torch.randn(0, 11, generator=gen).to(device).requires_grad_()
    target = torch.zeros(0, dtype=torch.long, device=device)
    ours = rarekit.cross_entropy(empty, target, weight, reduction=reduction)
    close(ours, F.cross_entropy(empty, target, weight, reduction=reduction))
    assert ours.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert bool(torch.isnan(ours)) == (reduction == "mean")


@pytest.mark.parametrize("inplace", [False, True])
def test_mean_is_nan_when_every_target_weighs_zero(device, gen, inplace):
    """Σ w_y = 0 with smoothing: torch's mean is NaN (0/0 in its nll part), not the inf of Σ rows / 0."""
    values = torch.randn(5, 24, generator=gen).to(device)
    weight = torch.rand(24, generator=gen).to(device) + 0.1
    weight[3] = 0
    target = torch.tensor([3, -100, 3, 3, -100], device=device)
    for label_smoothing in (0.0, 0.2):
        expected = F.cross_entropy(values, target, weight, label_smoothing=label_smoothing)
        ours = rarekit.cross_entropy(values.clone(), target, weight, label_smoothing=label_smoothing,
                                     inplace_backward=inplace)
        assert torch.isnan(expected) and torch.isnan(ours)
        close(rarekit.cross_entropy(values.clone(), target, weight, label_smoothing=label_smoothing,
                                    reduction="sum", inplace_backward=inplace),
              F.cross_entropy(values, target, weight, label_smoothing=label_smoothing, reduction="sum"))


def test_many_rows_across_threads(device, gen):
    """Enough rows for several parallel tasks; the error names the first bad row of all of them."""
    values = torch.randn(30000, 24, generator=gen).to(device)
    weight = torch.rand(24, generator=gen).to(device) + 0.1
    target, _ = random_targets(gen, (30000,), 24, "present", torch.int64, device)
    for reduction in REDUCTIONS:
        check_smoothed_weighted_against_torch(gen, values, target, weight, reduction, values, target)
    bad = target.clone()
    bad[25001], bad[12000], bad[29999] = 24, 77, -5
    with pytest.raises(IndexError, match=r"target\[12000\] = 77\b"):
        rarekit.cross_entropy(values, bad, weight)


def huge_offset_logits(gen, dtype, device):
    offsets = torch.tensor([1e4, -1e4, 3e4])[torch.randint(0, 3, (64, 1), generator=gen)]
    return (torch.randn(64, 100, generator=gen) * 2 + offsets).to(dtype).to(device)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_huge_logits_match_torch_fp32(device, gen, label_smoothing):
    values = huge_offset_logits(gen, torch.float32, device)
    target, _ = random_targets(gen, (64,), 100, "present", torch.int64, device)
    probe = make_probe(gen, "none", (64,), device)
    kwargs = dict(reduction="none", label_smoothing=label_smoothing)
    loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, target, **kwargs), values, lambda x: x, probe)
    expected, expected_grad = loss_and_grad(lambda x: F.cross_entropy(x, target, **kwargs), values, lambda x: x, probe)
    close(loss, expected)
    close(grad, expected_grad)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_huge_logits_match_torch_on_the_reference_path(gen, label_smoothing):
    values = huge_offset_logits(gen, torch.float32, "cpu")
    target, _ = random_targets(gen, (64,), 100, "present", torch.int64, "cpu")
    probe = make_probe(gen, "none", (64,), "cpu")
    kwargs = dict(reduction="none", label_smoothing=label_smoothing)
    expected, expected_grad = loss_and_grad(lambda x: F.cross_entropy(x, target, **kwargs), values, lambda x: x, probe)
    rarekit.set_backend("reference")
    try:
        loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, target, **kwargs), values, lambda x: x, probe)
    finally:
        rarekit.set_backend("native")
    close(loss, expected)
    close(grad, expected_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_logits_half(device, gen, dtype, reduction):
    """Half logits near ±1e4 (spacing 64 in bf16, 8 in fp16): finite and within the half tolerance."""
    values = huge_offset_logits(gen, dtype, device)
    weight = exact_weights(gen, 100, device)
    target, _ = random_targets(gen, (64,), 100, "present", torch.int64, device)
    probe = make_probe(gen, reduction, (64,), device)
    kwargs = dict(reduction=reduction, label_smoothing=0.1)
    loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, target, weight, **kwargs), values, lambda x: x,
                               probe)
    expected, expected_grad = loss_and_grad(lambda x: F.cross_entropy(x, target, weight, **kwargs), values.float(),
                                            lambda x: x, probe)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    close(loss, expected, dtype)
    # a gradient entry is p_k - [k = y] etc.: absolute error of the float32 lse (~1e-3) times p_k
    close(grad, expected_grad, tol=(TOL[dtype][0], 2e-3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_with_float32_weight(device, gen, dtype):
    """torch refuses an fp32 weight with half logits; rarekit computes in fp32."""
    values = torch.randn(40, 300, generator=gen).to(dtype).to(device)
    weight = torch.rand(300, generator=gen).to(device) + 0.1  # not representable in half
    target, _ = random_targets(gen, (40,), 300, "present", torch.int32, device)
    for reduction in REDUCTIONS:
        check_smoothed_weighted_against_torch(gen, values, target, weight, reduction, values.float(), target.long(),
                                              dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fp16_smoothing_over_many_classes_stays_finite(device, gen, reduction):
    """Σ_k log p_k over 20000 classes overflows fp16 (torch's fp16 result can be inf); rarekit sums in
    fp32 and returns the finite value of the fp32 computation."""
    values = torch.randn(4, 20000, generator=gen).half().to(device)
    target = torch.randint(0, 20000, (4,), generator=gen).to(device)
    ours = rarekit.cross_entropy(values, target, reduction=reduction, label_smoothing=0.1)
    expected = F.cross_entropy(values.float(), target, reduction=reduction, label_smoothing=0.1)
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    close(ours, expected, torch.float16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_follow_torch(device, gen, reduction):
    for shape in [(9, 12), (12,), (3, 12, 4), (2, 2500)]:
        classes = shape[0] if len(shape) == 1 else shape[1]
        values = torch.randn(shape, generator=gen).to(device)
        probabilities = torch.softmax(torch.randn(shape, generator=gen) * 2, dim=0 if len(shape) == 1 else 1)
        probabilities = probabilities.to(device)
        probe = make_probe(gen, reduction, target_shape(shape), device)
        for weight in (None, torch.rand(classes, generator=gen).to(device) + 0.2):
            for label_smoothing in (0.0, 0.3):
                kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
                before = probabilities.clone()
                loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, probabilities, weight, **kwargs),
                                           values, lambda x: x, probe)
                expected, expected_grad = loss_and_grad(
                    lambda x: F.cross_entropy(x, probabilities, weight, **kwargs), values, lambda x: x, probe)
                assert torch.equal(probabilities, before)
                assert loss.shape == expected.shape
                close(loss, expected)
                close(grad, expected_grad)


def test_probability_targets_reject_index_only_options(gen):
    logits = torch.randn(4, 5, generator=gen)
    probabilities = torch.softmax(torch.randn(4, 5, generator=gen), 1)
    for option in (dict(focal_gamma=2.0), dict(z_loss=1e-3), dict(logit_adjustment=torch.zeros(5)),
                   dict(inplace_backward=True)):
        with pytest.raises(ValueError, match="probability targets"):
            rarekit.cross_entropy(logits, probabilities, **option)
    with pytest.raises(ValueError, match="shape"):
        rarekit.cross_entropy(logits, probabilities[:, :4])


# ----------------------------------------------------------------------------------------------
# target-weighted smoothing, focal loss, logit adjustment and z-loss against independent formulas


def independent_rows(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0, target_weighted=False,
                     focal_gamma=0.0, logit_adjustment=None, z_loss=0.0):
    """float64 per-row losses and w_y, written from the formulas (0 on ignored rows):

    CE_i    = (1-ε) w_y (-log p_y) + (ε/C) Σ_k v_k (-log p_k),  v_k = w_k (torch) or w_y (target-weighted)
    focal_i = -α_y (1 - p_y)^γ log p_y                           (no smoothing)
    z_i     = ζ w_y (log Σ_k exp z_k)²
    """
    z = logits.double()
    if logit_adjustment is not None:
        z = z + logit_adjustment.double()
    classes = z.shape[1]
    valid = target.long() != ignore_index
    y = torch.where(valid, target.long(), 0)
    w = weight.double() if weight is not None else torch.ones(classes, dtype=torch.float64, device=z.device)
    w_y = w[y]
    log_p = torch.log_softmax(z, dim=1)
    log_p_y = log_p.gather(1, y[:, None]).squeeze(1)
    if target_weighted:
        smooth = w_y * -log_p.sum(1)
    else:
        smooth = -(w * log_p).sum(1)
    rows = (1 - label_smoothing) * w_y * -log_p_y + label_smoothing / classes * smooth
    if focal_gamma:
        assert label_smoothing == 0.0, "the focal formula is checked without smoothing"
        p_y = log_p_y.exp()
        rows = -w_y * (1 - p_y) ** focal_gamma * log_p_y
    rows = rows + z_loss * w_y * torch.logsumexp(z, dim=1) ** 2
    return torch.where(valid, rows, 0.0), torch.where(valid, w_y, 0.0)


def reduce(rows, w_y, reduction):
    """mean divides by Σ w_y over the non-ignored targets."""
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / w_y.sum()


def check_against_independent(gen, device, reduction, weighted, **options):
    values = torch.randn(30, 13, generator=gen).to(device) * 2
    weight = torch.rand(13, generator=gen).to(device) + 0.2 if weighted else None
    target, ignore_index = random_targets(gen, (30,), 13, "present", torch.int64, device)
    probe = make_probe(gen, reduction, (30,), device)
    loss, grad = loss_and_grad(
        lambda x: rarekit.cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction, **options),
        values, lambda x: x, probe)
    adjustment = options.pop("logit_adjustment", None)
    target_weighted = options.pop("smoothing_mode", "pytorch") == "target_weighted"
    expected, expected_grad = loss_and_grad(
        lambda x: reduce(*independent_rows(x, target, weight, ignore_index, target_weighted=target_weighted,
                                           logit_adjustment=adjustment, **options), reduction),
        values.double(), lambda x: x, probe.double())
    close(loss, expected)
    close(grad, expected_grad)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_target_weighted_smoothing(device, gen, reduction, weighted):
    for label_smoothing in (0.0, 0.25, 1.0):
        check_against_independent(gen, device, reduction, weighted, label_smoothing=label_smoothing,
                                  smoothing_mode="target_weighted")
    # and the default mode is torch's: v_k = w_k
    check_against_independent(gen, device, reduction, weighted, label_smoothing=0.25, smoothing_mode="pytorch")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_formula(device, gen, reduction, weighted):
    for gamma in (0.5, 1.0, 2.0, 3.5):
        check_against_independent(gen, device, reduction, weighted, focal_gamma=gamma)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_formula(device, gen, reduction, weighted):
    for z_loss in (1e-4, 0.1):
        check_against_independent(gen, device, reduction, weighted, z_loss=z_loss)
        check_against_independent(gen, device, reduction, weighted, z_loss=z_loss, label_smoothing=0.2)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logit_adjustment_is_an_offset(device, gen, reduction):
    values = torch.randn(20, 9, generator=gen).to(device)
    adjustment = torch.randn(9, generator=gen).to(device)
    weight = torch.rand(9, generator=gen).to(device) + 0.1
    target, _ = random_targets(gen, (20,), 9, "present", torch.int64, device)
    probe = make_probe(gen, reduction, (20,), device)
    kwargs = dict(reduction=reduction, label_smoothing=0.15)
    loss, grad = loss_and_grad(
        lambda x: rarekit.cross_entropy(x, target, weight, logit_adjustment=adjustment, **kwargs), values,
        lambda x: x, probe)
    expected, expected_grad = loss_and_grad(lambda x: F.cross_entropy(x + adjustment, target, weight, **kwargs),
                                            values, lambda x: x, probe)
    close(loss, expected)
    close(grad, expected_grad)


VARIANTS = [  # focal_gamma, adjusted, z_loss, weighted, label_smoothing, smoothing_mode
    (gamma, adjusted, z_loss, weighted, smoothing, mode)
    for gamma in (0.0, 0.5, 2.0)
    for adjusted in (False, True)
    for z_loss in (0.0, 1e-2)
    for weighted in (False, True)
    for smoothing, mode in ((0.0, "pytorch"), (0.2, "pytorch"), (0.2, "target_weighted"))
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_variants_match_reference_autograd(device, gen, reduction, dtype):
    classes = 37
    values = torch.randn(25, classes, generator=gen).mul(2).to(dtype).to(device)
    adjustment = torch.randn(classes, generator=gen).to(device)
    weight = torch.rand(classes, generator=gen).to(device) + 0.1
    target, ignore_index = random_targets(gen, (25,), classes, "present", torch.int32, device)
    probe = make_probe(gen, reduction, (25,), device)
    for gamma, adjusted, z_loss, weighted, smoothing, mode in VARIANTS:
        context = f"gamma={gamma} adjusted={adjusted} z={z_loss} weighted={weighted} eps={smoothing} mode={mode}"
        w, a = (weight if weighted else None), (adjustment if adjusted else None)
        loss, grad = loss_and_grad(
            lambda x: rarekit.cross_entropy(x, target, w, ignore_index=ignore_index, reduction=reduction,
                                            label_smoothing=smoothing, smoothing_mode=mode, focal_gamma=gamma,
                                            logit_adjustment=a, z_loss=z_loss),
            values, lambda x: x, probe)

        def by_reference(x):
            rows = reference.cross_entropy_rows(x, target, w, a, ignore_index, smoothing, mode == "target_weighted",
                                                gamma, z_loss)
            valid = target != ignore_index
            w_y = (w[torch.where(valid, target, 0).long()] if w is not None else torch.ones_like(rows)) * valid
            return reduce(rows, w_y, reduction)

        expected, expected_grad = loss_and_grad(by_reference, values, lambda x: x, probe)
        try:
            close(loss, expected, dtype)
            close(grad, expected_grad, dtype)
        except AssertionError as error:
            raise AssertionError(f"{context}: {error}") from None


# ----------------------------------------------------------------------------------------------
# modules


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_loss_module(device, gen, reduction):
    values = torch.randn(50, 6, generator=gen).to(device)
    alpha = torch.rand(6, generator=gen).to(device) + 0.1
    target, _ = random_targets(gen, (50,), 6, "present", torch.int64, device)
    probe = make_probe(gen, reduction, (50,), device)
    for gamma, a in [(2.0, alpha), (1.5, None)]:
        module = rarekit.FocalLoss(gamma=gamma, alpha=a, reduction=reduction).to(device)
        loss, grad = loss_and_grad(lambda x: module(x, target), values, lambda x: x, probe)
        expected, expected_grad = loss_and_grad(
            lambda x: reduce(*independent_rows(x, target, a, focal_gamma=gamma), reduction), values.double(),
            lambda x: x, probe.double())
        close(loss, expected)
        close(grad, expected_grad)


def test_logit_adjusted_loss_module(device, gen):
    counts = torch.randint(1, 1000, (8,), generator=gen)
    counts[3] = 0  # unseen: counted as 1
    prior = counts.clamp(min=1).double() / counts.clamp(min=1).sum()
    values = torch.randn(40, 8, generator=gen).to(device)
    target, _ = random_targets(gen, (40,), 8, "present", torch.int64, device)
    for tau in (1.0, 0.5):
        module = rarekit.LogitAdjustedLoss(counts.tolist(), tau=tau).to(device)
        loss, grad = loss_and_grad(lambda x: module(x, target), values, lambda x: x, torch.tensor(1.0))
        expected, expected_grad = loss_and_grad(
            lambda x: F.cross_entropy(x + tau * prior.log().to(device), target), values.double(), lambda x: x,
            torch.tensor(1.0, dtype=torch.float64))
        close(loss, expected)
        close(grad, expected_grad)


@pytest.mark.parametrize("beta", [0.9, 0.999])
def test_class_balanced_loss_module(device, gen, beta):
    counts = torch.randint(1, 5000, (10,), generator=gen)
    raw = (1 - beta) / (1 - beta ** counts.double())
    expected_weight = raw / raw.mean()
    values = torch.randn(60, 10, generator=gen).to(device)
    target, _ = random_targets(gen, (60,), 10, "present", torch.int64, device)
    module = rarekit.ClassBalancedLoss(counts, beta=beta).to(device)
    close(module.weight.cpu(), expected_weight.float())
    torch.testing.assert_close(module.weight.cpu(), rarekit.class_weights(counts, "effective_number", beta=beta))
    close(module(values, target), F.cross_entropy(values.double(), target, expected_weight.to(device)))
    focal = rarekit.ClassBalancedLoss(counts, beta=beta, loss="focal", gamma=2.0, reduction="sum").to(device)
    close(focal(values, target),
          independent_rows(values, target, expected_weight.to(device), focal_gamma=2.0)[0].sum())
    with pytest.raises(ValueError, match="loss"):
        rarekit.ClassBalancedLoss(counts, loss="hinge")


@pytest.mark.parametrize("kwargs", [
    {},
    dict(reduction="sum"),
    dict(reduction="none", ignore_index=2),
    dict(label_smoothing=0.2, ignore_index=-1),
    dict(weight="w", label_smoothing=0.1),
    dict(weight="w", reduction="none"),
    pytest.param(dict(size_average=False), marks=pytest.mark.filterwarnings("ignore:size_average")),
])
def test_cross_entropy_loss_is_a_drop_in(device, gen, kwargs):
    kwargs = {key: (torch.rand(7, generator=gen) + 0.1 if value == "w" else value) for key, value in kwargs.items()}
    ours = rarekit.CrossEntropyLoss(**kwargs).to(device)
    theirs = torch.nn.CrossEntropyLoss(**kwargs).to(device)
    assert ours.reduction == theirs.reduction
    values = torch.randn(15, 7, 3, generator=gen).to(device)
    target = torch.randint(0, 7, (15, 3), generator=gen)
    target = torch.where(torch.rand(15, 3, generator=gen) < 0.3, ours.ignore_index, target).to(device)
    probe = make_probe(gen, ours.reduction, (15, 3), device)
    loss, grad = loss_and_grad(lambda x: ours(x, target), values, lambda x: x, probe)
    expected, expected_grad = loss_and_grad(lambda x: theirs(x, target), values, lambda x: x, probe)
    close(loss, expected)
    close(grad, expected_grad)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_cross_entropy_loss_state_dict_round_trip(gen):
    torch_module = torch.nn.CrossEntropyLoss(weight=torch.rand(5, generator=gen))
    ours = rarekit.CrossEntropyLoss(weight=torch.ones(5), label_smoothing=0.1)
    ours.load_state_dict(torch_module.state_dict())
    assert torch.equal(ours.weight, torch_module.weight)
    back = torch.nn.CrossEntropyLoss(weight=torch.ones(5))
    ours.weight.mul_(2)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, ours.weight)
    assert rarekit.CrossEntropyLoss().state_dict() == torch.nn.CrossEntropyLoss().state_dict() == {}
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    with pytest.raises(TypeError, match="unexpected"):
        rarekit.CrossEntropyLoss(focal=2.0)


# ----------------------------------------------------------------------------------------------
# inplace backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_backward_matches_normal_path(device, gen, reduction, dtype):
    x0 = torch.randn(24, 16, generator=gen).to(dtype).to(device)
    w0 = (torch.randn(16, 2051, generator=gen) / 4).to(dtype).to(device)
    weight = torch.rand(2051, generator=gen).to(device) + 0.1
    target, _ = random_targets(gen, (24,), 2051, "present", torch.int64, device)
    probe = make_probe(gen, reduction, (24,), device)
    options = dict(reduction=reduction, label_smoothing=0.1, focal_gamma=1.0, z_loss=1e-3)
    results = []
    for inplace in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        logits = x @ w
        captured = {}
        logits.register_hook(lambda grad: captured.setdefault("grad", grad))
        loss = rarekit.cross_entropy(logits, target, weight, inplace_backward=inplace, **options)
        (loss.float() * probe).sum().backward()
        if inplace:
            assert captured["grad"].data_ptr() == logits.data_ptr()  # the buffer is reused
        results.append((loss.detach(), captured["grad"], x.grad, w.grad))
    (loss, logits_grad, x_grad, w_grad) = results[1]
    (expected, expected_logits_grad, expected_x_grad, expected_w_grad) = results[0]
    close(loss, expected, dtype)
    close(logits_grad, expected_logits_grad, dtype)
    # the matmul's backward sums thousands of products: half rounding differences add up
    matmul_tol = TOL[dtype] if dtype == torch.float32 else (TOL[dtype][0], 1e-2)
    close(x_grad, expected_x_grad, tol=matmul_tol)
    close(w_grad, expected_w_grad, tol=matmul_tol)


def test_inplace_backward_buffer_holds_the_gradient(device, gen):
    values = torch.randn(10, 300, generator=gen).to(device)
    target, _ = random_targets(gen, (10,), 300, "present", torch.int64, device)
    leaf = values.clone().requires_grad_()
    expected_grad, = torch.autograd.grad(F.cross_entropy(leaf, target, reduction="sum"), leaf)
    logits = values.clone().requires_grad_()
    buffer = logits * 1  # a non-leaf whose memory the loss reuses
    loss = rarekit.cross_entropy(buffer, target, reduction="sum", inplace_backward=True)
    close(loss, F.cross_entropy(values, target, reduction="sum"))
    close(buffer.detach(), expected_grad)
    loss.backward()
    close(logits.grad, expected_grad)


@pytest.mark.parametrize("saver", [torch.sin, lambda t: t * t, F.gelu])
def test_inplace_backward_refuses_logits_saved_by_another_op(device, gen, saver):
    """Liger-Kernel#272: another node that saved the logits must not read the gradient silently."""
    x = torch.randn(8, 16, generator=gen).to(device).requires_grad_()
    w = torch.randn(16, 40, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 40, (8,), generator=gen).to(device)
    logits = x @ w
    other = saver(logits).sum()
    loss = rarekit.cross_entropy(logits, target, inplace_backward=True) + other
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_with_other_uses_that_do_not_save_the_logits(device, gen):
    """exp saves its output and a sum saves nothing: the shared logits may be overwritten."""
    x0 = torch.randn(8, 16, generator=gen).to(device)
    w0 = torch.randn(16, 40, generator=gen).to(device)
    target = torch.randint(0, 40, (8,), generator=gen).to(device)
    grads = []
    for inplace in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        logits = x @ w
        other = (logits.mul(0.01).exp().sum() + logits.sum()) * 0.1
        (rarekit.cross_entropy(logits, target, inplace_backward=inplace) + other).backward()
        grads.append((x.grad, w.grad))
    for ours, expected in zip(*grads[::-1]):
        close(ours, expected)


@pytest.mark.parametrize("inplace", [False, True])
def test_double_backward_raises_instead_of_silent_zeros(device, gen, inplace):
    x = torch.randn(6, 8, generator=gen).to(device).requires_grad_()
    w = torch.randn(8, 10, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 10, (6,), generator=gen).to(device)
    loss = rarekit.cross_entropy(x @ w, target, label_smoothing=0.1, inplace_backward=inplace)
    grad, = torch.autograd.grad(loss, x, create_graph=True)
    close(grad, torch.autograd.grad(F.cross_entropy(x @ w, target, label_smoothing=0.1), x)[0])
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.square().sum().backward()


def test_inplace_backward_needs_contiguous_rows(gen):
    base = torch.randn(20, 8, generator=gen, requires_grad=True)
    target = torch.randint(0, 8, (10,), generator=gen)
    with pytest.raises(ValueError, match="contiguous"):
        rarekit.cross_entropy((base * 1)[::2], target, inplace_backward=True)
    with pytest.raises(ValueError, match="contiguous"):
        rarekit.cross_entropy(base.reshape(10, 8, 2) * 1, target.reshape(10, 1).expand(10, 2).contiguous(),
                              inplace_backward=True)


# ----------------------------------------------------------------------------------------------
# errors, special values, mutation


@pytest.mark.parametrize("check", [True, False])
def test_out_of_range_target_raises_index_error_naming_the_value(gen, check):
    logits = torch.randn(5, 4, generator=gen)
    for bad, position in [(7, 2), (-3, 0), (4, 4)]:
        target = torch.tensor([1, 2, 0, 3, 3])
        target[position] = bad
        with pytest.raises(IndexError, match=rf"target\[{position}\] = {bad}\b"):
            rarekit.cross_entropy(logits, target, check=check)
        buffer = logits.clone()
        with pytest.raises(IndexError, match=rf"= {bad}\b"):
            rarekit.cross_entropy(buffer, target, reduction="none", label_smoothing=0.1, check=check,
                                  inplace_backward=True)
        assert torch.equal(buffer, logits)  # checked before the gradient overwrites the logits


def test_out_of_range_target_on_device(device, gen):
    logits = torch.randn(6, 4, generator=gen).to(device)
    with pytest.raises(IndexError, match=r"= 9\b"):
        rarekit.cross_entropy(logits, torch.tensor([0, 1, 9, 2, -100, 3], device=device))
    with pytest.raises(IndexError, match=r"= -1\b"):
        rarekit.cross_entropy(logits.reshape(2, 4, 3), torch.tensor([[0, 1, -1], [2, -100, 3]], device=device))


def test_bad_arguments_raise(gen):
    logits = torch.randn(4, 6, generator=gen)
    target = torch.randint(0, 6, (4,), generator=gen)
    with pytest.raises(ValueError, match="shape"):
        rarekit.cross_entropy(logits, target, torch.ones(5))
    with pytest.raises(ValueError, match="shape"):
        rarekit.cross_entropy(logits, target, torch.ones(1, 6))
    with pytest.raises(ValueError, match="meta"):
        rarekit.cross_entropy(logits, target, torch.ones(6, device="meta"))
    with pytest.raises(TypeError, match="weight"):
        rarekit.cross_entropy(logits, target, torch.ones(6, dtype=torch.int64))
    with pytest.raises(ValueError, match="logit_adjustment"):
        rarekit.cross_entropy(logits, target, logit_adjustment=torch.zeros(7))
    with pytest.raises(ValueError, match="reduction"):
        rarekit.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="smoothing_mode"):
        rarekit.cross_entropy(logits, target, label_smoothing=0.1, smoothing_mode="uniform")
    for smoothing in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing"):
            rarekit.cross_entropy(logits, target, label_smoothing=smoothing)
    with pytest.raises(ValueError, match="target must have shape"):
        rarekit.cross_entropy(logits, target[:3])
    with pytest.raises(TypeError, match="logits"):
        rarekit.cross_entropy(logits.long(), target)
    with pytest.raises(TypeError, match="bool"):
        rarekit.cross_entropy(logits, target > 2)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_and_inf_logits_propagate_like_torch(device, gen, dtype, label_smoothing):
    inf, nan = float("inf"), float("nan")
    values = torch.randn(10, 40, generator=gen)
    target = torch.randint(0, 40, (10,), generator=gen)
    target[:8] = torch.tensor([2, 0, 1, 3, 0, 5, 7, 2])
    values[0, 2] = inf       # +inf at the target
    values[1, 3] = inf       # +inf elsewhere
    values[2, 1] = inf       # +inf at the target ...
    values[2, 5] = -inf      # ... and -inf elsewhere
    values[3, 3] = -inf      # -inf at the target
    values[4, 9] = -inf      # -inf elsewhere
    values[5, 0] = nan       # NaN elsewhere
    values[6, :] = -inf      # a row of -inf
    values[7, 2] = nan       # NaN at the target
    values = values.to(dtype).to(device)
    target = target.to(device)
    for reduction in REDUCTIONS:
        kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
        leaf = values.clone().requires_grad_()
        ours = rarekit.cross_entropy(leaf, target, **kwargs)
        expected = F.cross_entropy(values.float(), target, **kwargs)
        assert torch.equal(torch.isnan(ours), torch.isnan(expected)), (ours, expected)
        close(ours, expected, dtype)
        ours.float().sum().backward()  # does not crash
    # rows without special values are unaffected
    close(rarekit.cross_entropy(values, target, reduction="none", label_smoothing=label_smoothing)[8:],
          F.cross_entropy(values[8:].float(), target[8:], reduction="none", label_smoothing=label_smoothing), dtype)


def test_inputs_are_not_mutated(device, gen):
    values = torch.randn(12, 30, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 30, (12,), generator=gen).to(device)
    target[3] = -100
    weight = torch.rand(30, generator=gen).to(device)
    adjustment = torch.randn(30, generator=gen).to(device)
    snapshot = [t.detach().clone() for t in (values, target, weight, adjustment)]
    for reduction in REDUCTIONS:
        for options in (dict(), dict(label_smoothing=0.2, smoothing_mode="target_weighted", focal_gamma=2.0,
                                     logit_adjustment=adjustment, z_loss=1e-3)):
            loss = rarekit.cross_entropy(values, target, weight, reduction=reduction, **options)
            loss.sum().backward()
            loss = rarekit.cross_entropy(values.reshape(12, 30, 1), target.reshape(12, 1), weight,
                                         reduction=reduction, **options)
            loss.sum().backward()
    for before, after in zip(snapshot, (values, target, weight, adjustment)):
        assert torch.equal(before, after)
    # the inplace path overwrites only the logits it is given
    logits = values.detach().clone()
    rarekit.cross_entropy(logits, target, weight, logit_adjustment=adjustment, inplace_backward=True)
    for before, after in zip(snapshot[1:], (target, weight, adjustment)):
        assert torch.equal(before, after)
    assert not torch.equal(logits, snapshot[0])


# ----------------------------------------------------------------------------------------------
# operator registration, torch.compile, CPU ISAs, reference path


def op_config(gen, device, classes, weighted, adjusted, margined, smoothing, target_weighted, gamma, z_loss):
    weight = torch.rand(classes, generator=gen).to(device) + 0.1 if weighted else None
    adjustment = torch.randn(classes, generator=gen).to(device) if adjusted else None
    margin = torch.rand(classes, generator=gen).to(device) if margined else None
    return weight, adjustment, margin, -100, smoothing, target_weighted, gamma, z_loss


OP_CONFIGS = [  # weighted, adjusted, target_margin, label_smoothing, target_weighted, focal_gamma, z_loss
    (False, False, False, 0.0, False, 0.0, 0.0),
    (True, False, True, 0.0, False, 0.0, 0.0),
    (True, True, False, 0.1, False, 0.0, 0.0),
    (True, False, True, 0.2, True, 2.0, 0.0),
    (False, True, False, 0.0, False, 0.5, 1e-3),
    (True, True, True, 0.3, False, 1.0, 1e-2),
]


@needs_native
@pytest.mark.parametrize("config", OP_CONFIGS)
def test_opcheck(device, gen, config):
    weight, adjustment, margin, *scalars = op_config(gen, device, 37, *config)
    logits = torch.randn(11, 37, generator=gen).to(device)
    target = torch.randint(0, 37, (11,), generator=gen).to(device)
    target[4] = -100
    forward = torch.ops.rarekit.cross_entropy_forward.default
    torch.library.opcheck(forward, (logits.clone().requires_grad_(), target, weight, adjustment, margin, *scalars,
                                    True))
    torch.library.opcheck(forward, (logits.t().contiguous().t().clone().requires_grad_(), target, weight,
                                    adjustment, margin, *scalars, True))
    _, row_terms = forward(logits, target, weight, adjustment, margin, *scalars, True)
    grad_losses = torch.randn(11, generator=gen).to(device)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_backward.default,
                          (grad_losses, logits, target, weight, adjustment, margin, row_terms, *scalars))
    scale = torch.tensor([0.25], device=device)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_forward_inplace.default,
                          (logits.clone(), target, weight, adjustment, margin, scale, *scalars, True))


@needs_native
def test_opcheck_non_contiguous_logits(device, gen):
    logits = torch.randn(40, 12, generator=gen).to(device).t()  # (12, 40), column-major
    target = torch.randint(0, 40, (12,), generator=gen).to(device)
    weight = torch.rand(40, generator=gen).to(device)
    scalars = (-100, 0.1, False, 0.0, 0.0)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_forward.default,
                          (logits.clone().requires_grad_(), target, weight, None, None, *scalars, True))
    _, row_terms = torch.ops.rarekit.cross_entropy_forward(logits, target, weight, None, None, *scalars, True)
    torch.library.opcheck(torch.ops.rarekit.cross_entropy_backward.default,
                          (torch.ones(12, device=device), logits, target, weight, None, None, row_terms, *scalars))


@needs_native
def test_compiles_without_graph_breaks(device, gen):
    torch._dynamo.reset()
    values = torch.randn(16, 50, generator=gen).to(device)
    target = torch.randint(0, 50, (16,), generator=gen).to(device)
    target[::5] = -100
    weight = torch.rand(50, generator=gen).to(device) + 0.1

    def loss_fn(logits, target, weight):
        return rarekit.cross_entropy(logits, target, weight, label_smoothing=0.1, reduction="mean") * 2

    explanation = torch._dynamo.explain(loss_fn)(values.clone().requires_grad_(), target, weight)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(loss_fn, fullgraph=True)
    loss, grad = loss_and_grad(lambda x: compiled(x, target, weight), values, lambda x: x, torch.tensor(1.0))
    expected, expected_grad = loss_and_grad(lambda x: loss_fn(x, target, weight), values, lambda x: x,
                                            torch.tensor(1.0))
    close(loss, expected)
    close(grad, expected_grad)
    close(expected, 2 * F.cross_entropy(values, target, weight, label_smoothing=0.1))
    torch._dynamo.reset()


@needs_native
@pytest.mark.parametrize("dtype", FLOATS)
def test_every_cpu_isa_agrees(gen, dtype):
    active = _backend._C.cpu_isa()
    classes = 2085  # > 2048 (two blocks), not a multiple of 16
    values = (torch.randn(9, classes, generator=gen) * 2).to(dtype)
    weight = torch.rand(classes, generator=gen) + 0.1
    adjustment = torch.randn(classes, generator=gen)
    target, _ = random_targets(gen, (9,), classes, "present", torch.int64, "cpu")
    probe = torch.randn(9, generator=gen)
    configs = [dict(), dict(weight=weight, label_smoothing=0.2),
               dict(weight=weight, label_smoothing=0.1, smoothing_mode="target_weighted", focal_gamma=2.0,
                    logit_adjustment=adjustment, z_loss=1e-3)]
    try:
        for isa in _backend._C.supported_cpu_isas():
            _backend._C.set_cpu_isa(isa)
            assert _backend._C.cpu_isa() == isa
            for options in configs:
                for columns in (classes, 13):  # and a short row: only the scalar tail
                    sliced = values[:, :columns].contiguous()
                    opts = {key: (value[:columns] if isinstance(value, torch.Tensor) else value)
                            for key, value in options.items()}
                    t = torch.where(target >= columns, columns - 1, target)
                    loss, grad = loss_and_grad(lambda x: rarekit.cross_entropy(x, t, reduction="none", **opts),
                                               sliced, lambda x: x, probe)
                    expected, expected_grad = loss_and_grad(
                        lambda x: reference.cross_entropy_rows(
                            x, t, opts.get("weight"), opts.get("logit_adjustment"), -100,
                            opts.get("label_smoothing", 0.0), opts.get("smoothing_mode") == "target_weighted",
                            opts.get("focal_gamma", 0.0), opts.get("z_loss", 0.0)),
                        sliced, lambda x: x, probe)
                    try:
                        close(loss, expected, dtype)
                        close(grad, expected_grad, dtype)
                    except AssertionError as error:
                        raise AssertionError(f"isa={isa} C={columns} {options.keys()}: {error}") from None
    finally:
        _backend._C.set_cpu_isa(active)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forced_reference_path_matches(gen, reduction):
    values = torch.randn(3, 300, 2, generator=gen)
    target, _ = random_targets(gen, (3, 2), 300, "present", torch.int64, "cpu")
    weight = torch.rand(300, generator=gen) + 0.1
    adjustment = torch.randn(300, generator=gen)
    probe = make_probe(gen, reduction, (3, 2), "cpu")
    configs = [dict(), dict(weight=weight, label_smoothing=0.3),
               dict(weight=weight, label_smoothing=0.2, smoothing_mode="target_weighted", focal_gamma=1.5,
                    logit_adjustment=adjustment, z_loss=1e-2)]
    flat = values.movedim(1, -1).reshape(6, 300).contiguous()

    def run_all():
        results = []
        for options in configs:
            results.append(loss_and_grad(lambda x: rarekit.cross_entropy(x, target, reduction=reduction, **options),
                                         values, lambda x: x, probe))
            results.append(loss_and_grad(
                lambda x: rarekit.cross_entropy(x * 1, target.reshape(6), reduction=reduction,
                                                inplace_backward=True, **options),
                flat, lambda x: x, probe.reshape(-1) if reduction == "none" else probe))
        return results

    native = run_all()
    rarekit.set_backend("reference")
    try:
        assert rarekit.backend_info()["cpu"] == "reference"
        forced = run_all()
        with pytest.raises(IndexError, match=r"target\[1\] = 300\b"):
            rarekit.cross_entropy(flat, torch.tensor([0, 300, 1, 2, 3, 4]))
    finally:
        rarekit.set_backend("native")
    assert rarekit.backend_info()["cpu"] == ("native" if _backend._C is not None else "reference")
    for (ours, ours_grad), (expected, expected_grad) in zip(forced, native):
        close(ours, expected)
        close(ours_grad, expected_grad)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(ignore_index=1.7), TypeError, "ignore_index must be an integer"),
    (dict(ignore_index=None), TypeError, "ignore_index must be an integer"),
    (dict(focal_gamma=float("nan")), ValueError, "focal_gamma=nan"),
    (dict(z_loss=float("inf")), ValueError, "z_loss=inf"),
])
def test_bad_hyperparameters_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        rarekit.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), **kwargs)


def test_probability_targets_refuse_target_weighted_smoothing():
    with pytest.raises(ValueError, match="smoothing_mode='target_weighted'"):
        rarekit.cross_entropy(torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1), label_smoothing=0.1,
                              smoothing_mode="target_weighted")


@pytest.mark.parametrize("counts,match", [([1.0, float("nan"), 3.0], "finite"), ([], "one count per class"),
                                          ([2, -1], "non-negative")])
def test_logit_adjusted_loss_checks_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        rarekit.LogitAdjustedLoss(counts)
    with pytest.raises(ValueError, match="tau"):
        rarekit.LogitAdjustedLoss([3, 1], tau=float("nan"))
