"""rarekit::gather_rows against its reference and numpy: every dtype, row shapes, edge cases, bad arguments."""
import numpy as np
import pytest
import torch

import rarekit
from rarekit import _backend, ops, reference
from rarekit.samplers import gather_array

needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")
DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.int32, torch.float32,
          torch.int64, torch.float64, torch.complex64, torch.complex128, torch.uint16, torch.uint32, torch.uint64]


def random_source(gen, dtype, shape, device):
    data = torch.randint(-100, 100, shape, generator=gen)
    return (data > 0 if dtype == torch.bool else data.abs().to(dtype)).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trailing", [(), (1,), (3,), (2, 5), (0,)])
def test_matches_reference_for_every_dtype_and_row_shape(device, gen, dtype, trailing):
    rows = int(torch.randint(1, 300, (), generator=gen))
    source = random_source(gen, dtype, (rows, *trailing), device)
    indices = torch.randint(0, rows, (int(torch.randint(0, 5000, (), generator=gen)),), generator=gen).to(device)
    out = ops.gather_rows(source, indices)
    assert out.dtype == dtype and out.shape == (indices.numel(), *trailing) and out.is_contiguous()
    assert torch.equal(out, reference.gather_rows(source, indices))
    assert torch.equal(out.cpu(), source.cpu()[indices.cpu()])


def test_large_input_uses_threads_and_strided_sources(gen):
    source = torch.randn(50_000, 3, generator=gen, dtype=torch.float64)
    indices = torch.randint(0, 50_000, (400_000,), generator=gen)
    assert torch.equal(ops.gather_rows(source, indices), source[indices])
    strided = source[::2, ::2]  # not contiguous: copied once, then gathered
    small = indices[indices < 25_000]
    assert torch.equal(ops.gather_rows(strided, small), strided[small])
    assert torch.equal(ops.gather_rows(source.t(), torch.tensor([2, 0])), source.t()[[2, 0]])


def test_empty_inputs(device):
    assert ops.gather_rows(torch.zeros(4, 2, device=device), torch.zeros(0, dtype=torch.int64, device=device)).shape \
        == (0, 2)
    with pytest.raises(IndexError, match="outside the 0 rows"):
        ops.gather_rows(torch.zeros(0, 2, device=device), torch.zeros(1, dtype=torch.int64, device=device))


@pytest.mark.parametrize("path", ["native", "reference"])
def test_bad_arguments_raise_before_reading(path):
    if path == "native" and _backend._C is None:
        pytest.skip("compiled extension not built")
    gather = (lambda s, i: torch.ops.rarekit.gather_rows(s, i, True)) if path == "native" else reference.gather_rows
    source = torch.arange(10.0).reshape(5, 2)
    for bad, error, match in [(torch.tensor([0, 5]), IndexError, r"indices\[1\] = 5 is outside the 5 rows"),
                              (torch.tensor([-1]), IndexError, r"indices\[0\] = -1"),
                              (torch.tensor([[0]]), ValueError, "1-D"),
                              (torch.tensor([0], dtype=torch.int32), TypeError, "int64")]:
        with pytest.raises(error, match=match):
            gather(source, bad)
    with pytest.raises(ValueError, match="row dimension"):
        gather(torch.tensor(1.0), torch.tensor([0]))


@needs_native
def test_opcheck_and_compile(gen):
    source = torch.randn(40, 3, generator=gen)
    indices = torch.randint(0, 40, (100,), generator=gen)
    torch.library.opcheck(torch.ops.rarekit.gather_rows.default, (source, indices, True))
    compiled = torch.compile(lambda s, i: ops.gather_rows(s, i) * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(source, indices), source[indices] * 2)


@pytest.mark.cuda
def test_cuda_skips_the_index_check_on_request(gen):
    source = torch.randn(8, 3, generator=gen).cuda()
    indices = torch.tensor([1, 9, 2], device="cuda")
    out = torch.ops.rarekit.gather_rows(source, indices, False)
    assert torch.equal(out[1], torch.zeros(3, device="cuda")) and torch.equal(out[[0, 2]], source[[1, 2]])
    with pytest.raises(IndexError, match=r"indices\[1\] = 9"):
        torch.ops.rarekit.gather_rows(source, indices, True)


@pytest.mark.parametrize("array", [
    lambda rng: rng.normal(size=(300, 4)).astype(np.float32),
    lambda rng: rng.integers(0, 9, 300).astype(np.uint64),
    lambda rng: rng.normal(size=(300, 2)).astype(">f8"),  # big-endian bytes are copied as they are
    lambda rng: np.array([f"w{i}" * (i % 4) for i in range(300)]),  # fixed-width unicode
    lambda rng: np.arange(300).astype("datetime64[s]"),
    lambda rng: np.array([(i, 0.5 * i) for i in range(300)], dtype=[("a", "i4"), ("b", "f8")]),
    lambda rng: rng.normal(size=(300, 3))[::-1],  # negative strides: numpy's take
    lambda rng: np.array([{"k": i} for i in range(300)], dtype=object),
    lambda rng: np.zeros((300, 0)),
])
def test_gather_array_keeps_every_numpy_dtype(gen, array):
    rng = np.random.default_rng(int(torch.randint(2**31, (), generator=gen)))
    values = array(rng)
    rows = torch.from_numpy(rng.integers(0, 300, 1000))
    out = gather_array(values, rows)
    assert out.dtype == values.dtype and out.shape == (1000, *values.shape[1:])
    assert np.array_equal(out, values[rows.numpy()])
    values.setflags(write=False)  # read-only input: read, not written
    assert np.array_equal(gather_array(values, rows), out)


def test_forced_reference_backend_gathers_too(gen):
    source = torch.randn(30, 2, generator=gen)
    indices = torch.randint(0, 30, (70,), generator=gen)
    rarekit.set_backend("reference")
    try:
        assert torch.equal(ops.gather_rows(source, indices), source[indices])
    finally:
        rarekit.set_backend("native")
