"""torch's own specifications of cross-entropy, run against rarekit: the OpInfo sample inputs of
``nn.functional.cross_entropy`` and the ModuleInfo inputs of ``nn.CrossEntropyLoss`` from the
installed torch (not copied), plus hypothesis properties over weights, smoothing, ignore_index,
reductions, K-dim inputs and dtypes."""

import pytest
import torch
import torch.nn.functional as F

import rarekit

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (test extra)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

CROSS_ENTROPY_OPINFO = next(op for op in op_db if op.name == "nn.functional.cross_entropy")
CROSS_ENTROPY_MODULEINFO = next(info for info in module_db if info.module_cls is torch.nn.CrossEntropyLoss)


def detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def value_and_gradient(function, logits, args, kwargs, upstream_seed=0):
    """The output and the gradient wrt the logits, for a fixed random upstream gradient."""
    leaf = logits.detach().clone().requires_grad_()
    out = function(leaf, *[detached(a) for a in args], **{k: detached(v) for k, v in kwargs.items()})
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=out.dtype) + 0.5
    gradient, = torch.autograd.grad(out, leaf, upstream)
    return out.detach(), gradient


def samples(dtype):
    return list(CROSS_ENTROPY_OPINFO.sample_inputs("cpu", dtype, requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opinfo_samples_match_torch_at_its_tolerances(dtype):
    cases = samples(dtype)
    assert len(cases) > 20
    for index, sample in enumerate(cases):
        expected = value_and_gradient(F.cross_entropy, sample.input, sample.args, sample.kwargs, index)
        actual = value_and_gradient(rarekit.cross_entropy, sample.input, sample.args, sample.kwargs, index)
        for ours, theirs in zip(actual, expected):
            torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m: f"sample {index} {sample.kwargs}: {m}")


def error_against_float64(function, sample, index):
    """max |error| of the output and of the gradient of ``function`` on a half-precision sample,
    against torch in float64 on the same (rounded) inputs."""
    exact_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in sample.args]
    exact_kwargs = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                    for k, v in sample.kwargs.items()}
    exact = value_and_gradient(F.cross_entropy, sample.input.double(), exact_args, exact_kwargs, index)
    got = value_and_gradient(function, sample.input, sample.args, sample.kwargs, index)
    return [float((g.double() - e).abs().max()) if e.numel() else 0.0 for g, e in zip(got, exact)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_opinfo_half_samples_are_no_worse_than_torch(dtype):
    for index, sample in enumerate(samples(dtype)):
        ours = error_against_float64(rarekit.cross_entropy, sample, index)
        theirs = error_against_float64(F.cross_entropy, sample, index)
        for what, mine, torchs in zip(("loss", "gradient"), ours, theirs):
            # one unit in the last place of the half result is the noise floor of the comparison
            assert mine <= torchs * 1.01 + 2 * torch.finfo(dtype).eps, (index, sample.kwargs, what, mine, torchs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moduleinfo_inputs_match_torch_cross_entropy_loss(dtype):
    inputs = CROSS_ENTROPY_MODULEINFO.module_inputs_func(CROSS_ENTROPY_MODULEINFO, device="cpu", dtype=dtype,
                                                         requires_grad=True, training=True)
    assert len(inputs) > 20
    for index, module_input in enumerate(inputs):
        args = [detached(a) for a in module_input.constructor_input.args]
        kwargs = {k: detached(v) for k, v in module_input.constructor_input.kwargs.items()}
        theirs = torch.nn.CrossEntropyLoss(*args, **kwargs)
        ours = rarekit.CrossEntropyLoss(*args, **kwargs)
        logits, *rest = module_input.forward_input.args
        expected = value_and_gradient(theirs, logits, rest, module_input.forward_input.kwargs, index)
        actual = value_and_gradient(ours, logits, rest, module_input.forward_input.kwargs, index)
        for mine, torchs in zip(actual, expected):
            torch.testing.assert_close(mine, torchs, equal_nan=True, msg=lambda m: f"{module_input.desc}: {m}")
        assert ours.state_dict().keys() == theirs.state_dict().keys()


# ---- hypothesis properties
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@st.composite
def cross_entropy_cases(draw):
    classes = draw(st.integers(1, 40))
    rows = draw(st.integers(0, 12))
    extra = draw(st.sampled_from([(), (3,), (2, 2)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn((rows, classes) + extra, generator=gen, dtype=torch.float64)
              * draw(st.sampled_from([0.1, 3.0, 30.0]))).to(dtype)
    target = torch.randint(0, classes, (rows,) + extra, generator=gen)
    ignore_index = draw(st.sampled_from([-100, 0, classes - 1]))
    target[torch.rand(target.shape, generator=gen) < draw(st.sampled_from([0.0, 0.3]))] = ignore_index
    weight = (torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1).to(dtype) if draw(st.booleans()) else None
    keywords = dict(ignore_index=ignore_index, reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                    label_smoothing=draw(st.sampled_from([0.0, 0.05, 0.5])))
    return logits, target, weight, keywords


@settings(max_examples=60, deadline=None, derandomize=False)
@given(cross_entropy_cases())
def test_property_cross_entropy_equals_torch_in_loss_and_gradient(case):
    logits, target, weight, keywords = case
    expected = value_and_gradient(lambda z, t, w: F.cross_entropy(z, t, w, **keywords), logits, (target, weight), {})
    actual = value_and_gradient(lambda z, t, w: rarekit.cross_entropy(z, t, w, **keywords), logits, (target, weight),
                                {})
    for ours, theirs in zip(actual, expected):
        torch.testing.assert_close(ours, theirs, equal_nan=True)
