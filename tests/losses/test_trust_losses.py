"""Regression tests of issue 20 for the losses: each compares rarekit.linear_cross_entropy (or
rarekit.cross_entropy) with torch's composite F.linear + rarekit.cross_entropy on fresh inputs."""

import pytest
import torch
import torch.nn.functional as F

import rarekit


def composite(hidden, classifier, target, weight=None, *, bias=None, **keywords):
    """What linear_cross_entropy must equal: F.linear, then rarekit.cross_entropy over the rows."""
    logits = F.linear(hidden, classifier, bias).reshape(-1, classifier.shape[0])
    loss = rarekit.cross_entropy(logits, target.reshape(-1), weight, **keywords)
    return loss.reshape(target.shape) if keywords.get("reduction") == "none" else loss


def make_inputs(gen, rows=9, dim=6, classes=11, dtype=torch.float32):
    hidden = torch.randn(rows, dim, generator=gen, dtype=torch.float64).to(dtype)
    classifier = (torch.randn(classes, dim, generator=gen, dtype=torch.float64) / dim ** 0.5).to(dtype)
    bias = torch.randn(classes, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[1] = -100
    return hidden, classifier, bias, target


# ---------------------------------------------------------------------------------------------
# item 6: under autocast, cast only what F.linear casts (floating point other than float64)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_autocast_casts_only_what_linear_casts(gen, autocast_dtype, dtype):
    hidden, classifier, bias, target = make_inputs(gen, dtype=dtype)
    weight = torch.rand(classifier.shape[0], generator=gen) + 0.5
    leaves = [tensor.clone().requires_grad_() for tensor in (hidden, classifier, bias)]
    expected_leaves = [tensor.clone().requires_grad_() for tensor in (hidden, classifier, bias)]
    with torch.autocast("cpu", dtype=autocast_dtype):
        loss = rarekit.linear_cross_entropy(leaves[0], leaves[1], target, weight, bias=leaves[2], chunk_size=4)
        expected = composite(expected_leaves[0], expected_leaves[1], target, weight, bias=expected_leaves[2])
    assert loss.dtype == expected.dtype
    grads = torch.autograd.grad(loss, leaves)
    expected_grads = torch.autograd.grad(expected, expected_leaves)
    tolerance = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 3e-2, "atol": 3e-2}
    torch.testing.assert_close(loss, expected, **tolerance)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == expected_grad.dtype == dtype
        torch.testing.assert_close(grad, expected_grad, **tolerance)


def test_autocast_float64_hidden_with_float32_classifier_refused_as_linear(gen):
    hidden, classifier, _, target = make_inputs(gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            F.linear(hidden.double(), classifier)
        with pytest.raises(TypeError, match="classifier must have the dtype"):
            rarekit.linear_cross_entropy(hidden.double(), classifier, target)


# ---------------------------------------------------------------------------------------------
# item 7: each backward hands autograd fresh gradients, as the composite does


def leaves_of(hidden, classifier, bias):
    return [tensor.clone().requires_grad_() for tensor in (hidden, classifier, bias)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_retained_graph_gives_independent_gradients(gen, reduction):
    """Two autograd.grad calls on a retained graph: separate storage, and an in-place edit of the
    first result (or of .grad) leaves the next backward as the composite's."""
    hidden, classifier, bias, target = make_inputs(gen)
    results = []
    for loss_fn in (rarekit.linear_cross_entropy, composite):
        leaves = leaves_of(hidden, classifier, bias)
        loss = loss_fn(leaves[0], leaves[1], target, bias=leaves[2], reduction=reduction)
        loss = loss.sum() if reduction == "none" else loss
        first = torch.autograd.grad(loss, leaves, retain_graph=True)
        second = torch.autograd.grad(loss, leaves, retain_graph=True)
        for grad in first:
            grad.mul_(10)  # the caller owns what it was handed
        third = torch.autograd.grad(loss, leaves, retain_graph=True)
        results.append((first, second, third))
        for grad_first, grad_second in zip(first, second):
            assert grad_first.untyped_storage().data_ptr() != grad_second.untyped_storage().data_ptr()
    for actual, expected in zip(*results):
        for grad, expected_grad in zip(actual, expected):
            torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("upstream", [1.0, 0.5])
def test_grad_accumulates_over_three_backwards(gen, reduction, upstream):
    """.grad over three backwards through one retained graph, with an in-place edit of .grad between
    them, is the composite's."""
    hidden, classifier, bias, target = make_inputs(gen)
    grads = []
    for loss_fn in (rarekit.linear_cross_entropy, composite):
        leaves = leaves_of(hidden, classifier, bias)
        loss = loss_fn(leaves[0], leaves[1], target, bias=leaves[2], reduction=reduction, chunk_size=4) \
            if loss_fn is rarekit.linear_cross_entropy else \
            loss_fn(leaves[0], leaves[1], target, bias=leaves[2], reduction=reduction)
        loss = loss.sum() if reduction == "none" else loss
        (loss * upstream).backward(retain_graph=True)
        leaves[0].grad.mul_(2)
        (loss * upstream).backward(retain_graph=True)
        leaves[1].grad.add_(1)
        (loss * upstream).backward()
        grads.append([leaf.grad for leaf in leaves])
    for grad, expected_grad in zip(*grads):
        torch.testing.assert_close(grad, expected_grad)


def test_partial_grad_then_full_backward(gen):
    """autograd.grad of hidden alone, then a backward into every input: the second backward still
    gives every gradient."""
    hidden, classifier, bias, target = make_inputs(gen)
    grads = []
    for loss_fn in (rarekit.linear_cross_entropy, composite):
        leaves = leaves_of(hidden, classifier, bias)
        loss = loss_fn(leaves[0], leaves[1], target, bias=leaves[2])
        only_hidden, = torch.autograd.grad(loss, leaves[0], retain_graph=True)
        loss.backward()
        grads.append([only_hidden] + [leaf.grad for leaf in leaves])
    for grad, expected_grad in zip(*grads):
        torch.testing.assert_close(grad, expected_grad)


# ---------------------------------------------------------------------------------------------
# item 12: the option checks trace under torch.compile(fullgraph=True, dynamic=True)


def test_compile_fullgraph_dynamic_with_softcap_argument(gen):
    hidden, classifier, bias, target = make_inputs(gen)

    def loss_fn(hidden, classifier, bias, softcap, label_smoothing, z_loss):
        return rarekit.linear_cross_entropy(hidden, classifier, target, bias=bias, softcap=softcap,
                                            label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=4)

    def expected_fn(hidden, classifier, bias, softcap, label_smoothing, z_loss):
        logits = F.linear(hidden, classifier, bias)
        return rarekit.cross_entropy(softcap * torch.tanh(logits / softcap), target,
                                     label_smoothing=label_smoothing, z_loss=z_loss)

    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=True)
    try:
        for softcap in (3.0,):
            leaves = leaves_of(hidden, classifier, bias)
            expected_leaves = leaves_of(hidden, classifier, bias)
            loss = compiled(*leaves, softcap, 0.1, 1e-3)
            expected = expected_fn(*expected_leaves, softcap, 0.1, 1e-3)
            torch.testing.assert_close(loss, expected)
            for grad, expected_grad in zip(torch.autograd.grad(loss, leaves),
                                           torch.autograd.grad(expected, expected_leaves)):
                torch.testing.assert_close(grad, expected_grad)
        with pytest.raises(Exception, match="softcap must be None or a finite number > 0"):
            compiled(hidden, classifier, bias, float("nan"), 0.1, 1e-3)
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# item 14: clear errors, or torch's answer, at the edges


def test_chunk_size_beyond_int64_is_a_value_error(gen):
    hidden, classifier, _, target = make_inputs(gen)
    with pytest.raises(ValueError, match=r"chunk_size .*2\*\*63"):
        rarekit.linear_cross_entropy(hidden, classifier, target, chunk_size=2**63)
    largest = rarekit.linear_cross_entropy(hidden, classifier, target, chunk_size=2**63 - 1)
    torch.testing.assert_close(largest, composite(hidden, classifier, target))


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_width_hidden_is_the_composite(gen, backend, reduction):
    """hidden (..., 0): F.linear gives the bias (or zeros) as logits; so does linear_cross_entropy."""
    _, _, bias, target = make_inputs(gen)
    hidden, classifier = torch.zeros(3, 3, 0), torch.zeros(bias.shape[0], 0)
    target = target[:9].reshape(3, 3)
    results = []
    rarekit.set_backend(backend)
    try:
        for loss_fn in (rarekit.linear_cross_entropy, composite):
            leaves = leaves_of(hidden, classifier, bias)
            loss = loss_fn(leaves[0], leaves[1], target, bias=leaves[2], reduction=reduction)
            results.append((loss, torch.autograd.grad(loss.sum(), leaves)))
            results.append((loss_fn(hidden, classifier, target, reduction=reduction), ()))  # no bias, no grad
    finally:
        rarekit.set_backend("native")
    for (loss, grads), (expected, expected_grads) in ((results[0], results[2]), (results[1], results[3])):
        assert loss.shape == expected.shape
        torch.testing.assert_close(loss, expected)
        for grad, expected_grad in zip(grads, expected_grads):
            assert grad.shape == expected_grad.shape
            torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_func_transforms_match_torch(gen, reduction):
    """torch.func.grad (each input), jacrev, vjp and vmap of grad (per-row gradients) of
    linear_cross_entropy and cross_entropy equal those of F.linear + F.cross_entropy."""
    hidden, classifier, bias, target = [tensor.double() if tensor.is_floating_point() else tensor
                                        for tensor in make_inputs(gen)]
    weight = torch.rand(classifier.shape[0], generator=gen, dtype=torch.float64) + 0.5
    keywords = dict(reduction=reduction, label_smoothing=0.1)

    def fused(hidden, classifier, bias, target=target):
        return rarekit.linear_cross_entropy(hidden, classifier, target, weight, bias=bias, chunk_size=4, **keywords)

    def split(hidden, classifier, bias, target=target):
        return rarekit.cross_entropy(F.linear(hidden, classifier, bias), target, weight, **keywords)

    def torch_loss(hidden, classifier, bias, target=target):
        return F.cross_entropy(F.linear(hidden, classifier, bias), target, weight, **keywords)

    inputs = (hidden, classifier, bias)
    expected = torch.func.grad(lambda *args: torch_loss(*args).sum(), argnums=(0, 1, 2))(*inputs)
    expected_jacobian = torch.func.jacrev(torch_loss)(*inputs)
    upstream = torch.randn(torch_loss(*inputs).shape, generator=gen, dtype=torch.float64)
    expected_vjp = torch.func.vjp(torch_loss, *inputs)[1](upstream)
    per_row = torch.func.vmap(torch.func.grad(lambda row, label: torch_loss(row[None], classifier, bias,
                                                                            label[None]).sum()))
    expected_per_row = per_row(hidden, target)
    for loss_fn in (fused, split):
        grads = torch.func.grad(lambda *args: loss_fn(*args).sum(), argnums=(0, 1, 2))(*inputs)
        torch.testing.assert_close(grads, expected)
        torch.testing.assert_close(torch.func.jacrev(loss_fn)(*inputs), expected_jacobian)
        torch.testing.assert_close(torch.func.vjp(loss_fn, *inputs)[1](upstream), expected_vjp)
        rows = torch.func.vmap(torch.func.grad(lambda row, label: loss_fn(row[None], classifier, bias,
                                                                          label[None]).sum()))
        torch.testing.assert_close(rows(hidden, target), expected_per_row, equal_nan=True)


def test_func_second_derivatives_raise(gen):
    """The fused losses are differentiable once: torch.func.hessian and jacrev of jacrev raise instead
    of answering zeros; forward mode on linear_cross_entropy names it."""
    hidden, classifier, bias, target = [tensor.double() if tensor.is_floating_point() else tensor
                                        for tensor in make_inputs(gen)]
    logits = F.linear(hidden, classifier, bias)
    losses = {
        "cross_entropy": (lambda z: rarekit.cross_entropy(z, target), logits),
        "linear_cross_entropy": (lambda h: rarekit.linear_cross_entropy(h, classifier, target, bias=bias), hidden),
    }
    for name, (loss_fn, argument) in losses.items():
        for transform in (torch.func.hessian, lambda fn: torch.func.jacrev(torch.func.jacrev(fn))):
            with pytest.raises(RuntimeError, match="differentiable once|forward-mode AD"):
                transform(loss_fn)(argument)
    with pytest.raises(RuntimeError, match="linear_cross_entropy does not support forward-mode AD"):
        torch.func.jvp(losses["linear_cross_entropy"][0], (hidden,), (torch.ones_like(hidden),))


@pytest.mark.parametrize("transform", ["grad", "vmap", "jvp"])
def test_inplace_backward_under_torch_func_is_a_clear_error(transform):
    """Wrapped logits have no buffer to overwrite: a ValueError naming inplace_backward, not torch's
    "Cannot access data pointer of Tensor that doesn't have storage"."""
    logits = torch.randn(4, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (4,))

    def loss(z):
        return rarekit.cross_entropy(z * 1.0, target, inplace_backward=True)

    calls = {"grad": lambda: torch.func.grad(loss)(logits),
             "vmap": lambda: torch.func.vmap(lambda row: rarekit.cross_entropy(row[None] * 1.0, target[:1],
                                                                           inplace_backward=True))(logits),
             "jvp": lambda: torch.func.jvp(loss, (logits,), (torch.ones_like(logits),))}
    with pytest.raises(ValueError, match="inplace_backward=True is not supported under torch.func"):
        calls[transform]()
