"""``torch.ops.rarekit.gather_rows`` is differentiable in ``source`` as ``source[indices]`` is (issue 20):
the raw op on an input that requires grad gives torch's gradient, not a result with no gradient."""

import pytest
import torch

from rarekit import _backend, ops

needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")


def random_case(gen, device, rows=6, picks=9, row_shape=(3, 2), dtype=torch.float64):
    source = torch.randn(rows, *row_shape, generator=gen, dtype=dtype).to(device)
    indices = torch.randint(0, rows, (picks,), generator=gen).to(device)  # repeats: gradients add up
    return source, indices


@needs_native
def test_raw_op_gradient_is_indexings(device, gen):
    source, indices = random_case(gen, device, dtype=torch.float32)
    upstream = torch.randn(indices.shape[0], *source.shape[1:], generator=gen).to(device)
    leaf, expected_leaf = source.clone().requires_grad_(), source.clone().requires_grad_()
    torch.autograd.backward(torch.ops.rarekit.gather_rows(leaf, indices, True), upstream)
    torch.autograd.backward(expected_leaf[indices], upstream)
    torch.testing.assert_close(leaf.grad, expected_leaf.grad)


@needs_native
def test_raw_op_gradcheck_and_second_derivative(gen):
    source, indices = random_case(gen, "cpu")
    leaf = source.requires_grad_()
    for check in (True, False):
        assert torch.autograd.gradcheck(lambda tensor: torch.ops.rarekit.gather_rows(tensor, indices, check), (leaf,))
        assert torch.autograd.gradgradcheck(lambda tensor: torch.ops.rarekit.gather_rows(tensor, indices, check),
                                            (leaf,))


@pytest.mark.cuda
@needs_native
def test_unchecked_index_outside_adds_no_gradient(gen):
    """CUDA, check=False: a row left zero for an index outside source is constant, so it adds nothing."""
    source, indices = random_case(gen, "cuda", dtype=torch.float32)
    indices[[1, 4]] = torch.tensor([-1, source.shape[0]], device="cuda")
    inside = (indices >= 0) & (indices < source.shape[0])
    upstream = torch.randn(indices.shape[0], *source.shape[1:], generator=gen).cuda()
    leaf, expected_leaf = source.clone().requires_grad_(), source.clone().requires_grad_()
    out = torch.ops.rarekit.gather_rows(leaf, indices, False)
    assert torch.all(out[~inside] == 0)
    torch.autograd.backward(out, upstream)
    torch.autograd.backward(expected_leaf[indices[inside]], upstream[inside])
    torch.testing.assert_close(leaf.grad, expected_leaf.grad)


@needs_native
def test_raw_op_opcheck(device, gen):
    for requires_grad in (False, True):
        source, indices = random_case(gen, device)
        torch.library.opcheck(torch.ops.rarekit.gather_rows.default,
                              (source.requires_grad_(requires_grad), indices, True))
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.rarekit.gather_rows.default, (source.requires_grad_(), empty, True))


def test_wrapper_gradient_is_indexings(device, gen):
    source, indices = random_case(gen, device)
    leaf = source.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda tensor: ops.gather_rows(tensor, indices), (leaf,))
