"""rarekit.LDAMLoss (issue 21 sections 3 and 4): LDAM (Cao et al. 2019) against an fp64 eager formula written
out independently of rarekit (margins n^(-1/4) scaled to max_margin, subtracted from the target logit, then
scale · z into torch's cross-entropy), with class weights and the deferred re-weighting (DRW) switch, the
state_dict round trip across that switch, and bad arguments."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit import _backend

needs_target_margin = pytest.mark.skipif(
    "target_margin" not in inspect.signature(rarekit.cross_entropy).parameters,
    reason="LDAMLoss runs on cross_entropy(target_margin=), which the margin branch adds")


def eager_ldam(logits, target, counts, max_margin=0.5, scale=1.0, weight=None, reduction="mean",
               ignore_index=-100):
    """Cao et al.'s reference LDAMLoss.forward in fp64: m = n^(-1/4) scaled so that max m = max_margin,
    z_y -= m_y on the rows that count, then cross_entropy(scale · z, y, weight)."""
    margins = torch.as_tensor(counts, dtype=torch.float64) ** -0.25
    margins = margins * (max_margin / margins.max())
    z = logits.double().clone()
    rows = (target != ignore_index).nonzero().flatten()
    z[rows, target[rows]] -= margins.to(z.device)[target[rows]]
    return F.cross_entropy(scale * z, target, None if weight is None else weight.double(), reduction=reduction,
                           ignore_index=ignore_index)


def effective_number_weights(counts, beta):
    """Cui et al.'s class-balanced weights (1 - β) / (1 - β^n), normalized to mean 1 (Cao et al.'s DRW)."""
    raw = (1 - beta) / (1 - beta ** torch.as_tensor(counts, dtype=torch.float64))
    return raw / raw.mean()


def long_tail(gen, classes=7):
    return (1000 * torch.rand(classes, generator=gen) ** 3).long() + 1


def loss_and_grad(loss_fn, logits, target):
    logits = logits.clone().requires_grad_()
    loss = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(loss, logits, torch.ones_like(loss))
    return loss, grad


@needs_target_margin
@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_loss_matches_the_fp64_formula(device, gen, scale, reduction, weighted):
    counts = long_tail(gen)
    logits = torch.randn(48, 7, generator=gen).to(device)
    target = torch.randint(0, 7, (48,), generator=gen)
    target[::5] = -100
    target = target.to(device)
    weight = (torch.rand(7, generator=gen) + 0.2).to(device) if weighted else None
    module = rarekit.LDAMLoss(counts, max_margin=0.4, scale=scale, weight=weight, reduction=reduction).to(device)
    loss, grad = loss_and_grad(module, logits, target)
    expected, expected_grad = loss_and_grad(
        lambda z, y: eager_ldam(z, y, counts, 0.4, scale, weight, reduction), logits.double(), target)
    tolerance = {"rtol": 1e-5, "atol": 1e-5 * scale}
    torch.testing.assert_close(loss.double(), expected, **tolerance)
    torch.testing.assert_close(grad.double(), expected_grad, **tolerance)


@needs_target_margin
def test_ldam_loss_composes_with_the_cross_entropy_options(gen):
    """The other keywords act on the scaled, margin-adjusted logits: here label smoothing."""
    counts = long_tail(gen, 5)
    logits, target = torch.randn(32, 5, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    margins = rarekit.ldam_margins(counts).double()
    z = logits.double() - F.one_hot(target, 5) * margins[target, None]
    expected = F.cross_entropy(2.0 * z, target, label_smoothing=0.1)
    module = rarekit.LDAMLoss(counts, scale=2.0, label_smoothing=0.1)
    torch.testing.assert_close(module(logits, target).double(), expected, rtol=1e-5, atol=1e-6)


@needs_target_margin
def test_deferred_reweighting_switches_to_class_balanced_weights(device, gen):
    counts = long_tail(gen)
    logits = torch.randn(64, 7, generator=gen).to(device)
    target = torch.randint(0, 7, (64,), generator=gen).to(device)
    module = rarekit.LDAMLoss(counts).to(device)
    torch.testing.assert_close(module(logits, target).double(), eager_ldam(logits, target, counts), rtol=1e-5,
                               atol=1e-6)
    module.weight = rarekit.class_weights(counts, "effective_number", beta=0.9999).to(device)  # the DRW switch
    drw = effective_number_weights(counts, 0.9999).to(device)
    torch.testing.assert_close(module(logits, target).double(), eager_ldam(logits, target, counts, weight=drw),
                               rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_restores_the_margins_and_the_drw_phase(gen):
    counts = long_tail(gen)
    module = rarekit.LDAMLoss(counts, max_margin=0.3)
    before_switch = module.state_dict()
    assert set(before_switch) == {"margins"}
    torch.testing.assert_close(before_switch["margins"], rarekit.ldam_margins(counts, 0.3))
    module.weight = rarekit.class_weights(counts, "effective_number", beta=0.9999)
    after_switch = module.state_dict()

    resumed = rarekit.LDAMLoss(torch.ones(7))  # other margins: the checkpoint's replace them
    resumed.load_state_dict(after_switch)
    assert torch.equal(resumed.margins, module.margins) and torch.equal(resumed.weight, module.weight)
    resumed.load_state_dict(before_switch)  # a checkpoint from before the switch: no weights again
    assert resumed.weight is None and torch.equal(resumed.margins, module.margins)
    with pytest.raises(RuntimeError, match="margins"):
        resumed.load_state_dict({})


@needs_target_margin
def test_a_resumed_module_gives_the_saved_loss(gen):
    counts = long_tail(gen)
    logits, target = torch.randn(20, 7, generator=gen), torch.randint(0, 7, (20,), generator=gen)
    module = rarekit.LDAMLoss(counts, scale=5.0)
    module.weight = rarekit.class_weights(counts, "effective_number", beta=0.9999)
    resumed = rarekit.LDAMLoss(torch.ones(7), scale=5.0)
    resumed.load_state_dict(module.state_dict())
    assert torch.equal(resumed(logits, target), module(logits, target))


@needs_target_margin
@pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
@pytest.mark.parametrize("dynamic", [False, True])
def test_ldam_loss_compiles_fullgraph_before_and_after_the_drw_switch(gen, dynamic):
    torch._dynamo.reset()
    counts = long_tail(gen, 5)
    logits = torch.randn(6, 5, generator=gen, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, -100])
    module = rarekit.LDAMLoss(counts, scale=10.0)
    compiled = torch.compile(module, fullgraph=True, dynamic=dynamic)
    for _ in ("LDAM", "LDAM-DRW"):
        loss = compiled(logits, target)
        torch.testing.assert_close(loss, module(logits, target))
        torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                                   torch.autograd.grad(module(logits, target), logits)[0])
        module.weight = rarekit.class_weights(counts, "effective_number", beta=0.9999)


def test_margins_buffer_is_ldam_margins_and_follows_the_module(gen):
    counts = long_tail(gen)
    module = rarekit.LDAMLoss(counts, max_margin=0.25).double()
    assert isinstance(module, rarekit.CrossEntropyLoss) and module.weight is None
    torch.testing.assert_close(module.margins, rarekit.ldam_margins(counts, 0.25).double())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"scale": 0.0}, ValueError, "scale must be a finite number > 0, got 0.0"),
    ({"scale": -30}, ValueError, "scale must be a finite number > 0, got -30"),
    ({"scale": float("inf")}, ValueError, "scale must be a finite number > 0, got inf"),
    ({"scale": float("nan")}, ValueError, "scale must be a finite number > 0, got nan"),
    ({"scale": "30"}, ValueError, "scale must be a finite number > 0, got '30'"),
    ({"max_margin": 0.0}, ValueError, "max_margin must be a finite number > 0, got 0.0"),
    ({"target_margin": torch.zeros(3)}, TypeError, "LDAMLoss takes its target_margin from class_counts"),
    ({"focal_gama": 2.0}, TypeError, "unexpected keyword arguments: \\['focal_gama'\\]"),
])
def test_ldam_loss_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        rarekit.LDAMLoss([100, 10, 1], **kwargs)
    with pytest.raises(ValueError, match="class_counts has no seen class"):
        rarekit.LDAMLoss([0, 0, 0])
