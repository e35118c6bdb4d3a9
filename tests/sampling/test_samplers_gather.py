"""rarekit::gather_rows against its reference and numpy: every dtype, row shapes, edge cases, bad arguments."""
import numpy as np
import pytest
import torch

import rarekit
from rarekit import _backend, ops, reference
from rarekit.sampling.samplers import gather_array

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


# --- rarekit::repeat_rows_into -----------------------------------------------------------------------

def random_repeats(gen, rows: int, device) -> torch.Tensor:
    """Repeats of 0 to 40 per row, a third of them 0 (empty runs at either end included)."""
    repeats = torch.randint(0, 40, (rows,), generator=gen)
    return (repeats * (torch.rand(rows, generator=gen) > 0.33)).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trailing", [(), (1,), (3,), (2, 5), (0,)])
def test_repeat_rows_matches_repeat_interleave(device, gen, dtype, trailing):
    rows = int(torch.randint(1, 300, (), generator=gen))
    source = random_source(gen, dtype, (rows, *trailing), device)
    repeats = random_repeats(gen, rows, device)
    out = torch.empty((int(repeats.sum()), *trailing), dtype=dtype, device=device)
    ops.repeat_rows_into(source, repeats, out)
    expected = torch.repeat_interleave(source.cpu(), repeats.cpu(), dim=0)
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(reference.repeat_rows(source, repeats, out.shape[0]).cpu(), expected)


def test_repeat_rows_fills_large_outputs_on_threads_into_a_slice(gen):
    source = torch.randn(3, 100, generator=gen, dtype=torch.float64).t()  # strided: copied once
    repeats = torch.randint(0, 20_000, (100,), generator=gen)
    buffer = torch.full((int(repeats.sum()) + 7, 3), -1.0, dtype=torch.float64)
    ops.repeat_rows_into(source, repeats, buffer[7:])
    assert torch.equal(buffer[7:], torch.repeat_interleave(source, repeats, dim=0))
    assert torch.equal(buffer[:7], torch.full((7, 3), -1.0, dtype=torch.float64))  # nothing outside out is written


def test_repeat_rows_of_nothing(device):
    out = torch.empty(0, 2, device=device)
    ops.repeat_rows_into(torch.zeros(0, 2, device=device), torch.zeros(0, dtype=torch.int64, device=device), out)
    ops.repeat_rows_into(torch.ones(3, 2, device=device), torch.zeros(3, dtype=torch.int64, device=device), out)
    assert out.shape == (0, 2)


@pytest.mark.parametrize("path", ["native", "reference"])
def test_repeat_rows_refuses_inconsistent_repeats(path):
    if path == "native" and _backend._C is None:
        pytest.skip("compiled extension not built")
    source, out = torch.arange(6.0).reshape(3, 2), torch.empty(3, 2)
    rarekit.set_backend("native" if path == "native" else "reference")
    try:
        for repeats, error, match in [(torch.tensor([2, -1, 2]), ValueError, r"repeats\[1\] = -1"),
                                      (torch.tensor([2, 1, 1]), ValueError, "must equal the 3 rows of out"),
                                      (torch.tensor([1, 0, 1]), ValueError, r"repeats.sum\(\) = 2"),
                                      (torch.tensor([1 << 62] * 3), ValueError, "must equal the 3 rows of out"),
                                      (torch.tensor([1, 2]), ValueError, "one entry per row"),
                                      (torch.tensor([1, 1, 1], dtype=torch.int32), TypeError, "int64")]:
            with pytest.raises(error, match=match):
                ops.repeat_rows_into(source, repeats, out)
        with pytest.raises(TypeError, match="dtype"):
            ops.repeat_rows_into(source, torch.tensor([1, 1, 1]), torch.empty(3, 2, dtype=torch.float64))
    finally:
        rarekit.set_backend("native")


@needs_native
def test_repeat_rows_opcheck_and_compile(gen):
    source = torch.randn(6, 3, generator=gen)
    repeats = torch.tensor([3, 0, 1, 5, 0, 2])
    torch.library.opcheck(torch.ops.rarekit.repeat_rows_into.default, (source, repeats, torch.empty(11, 3), True))

    def fill(s, r):
        out = torch.empty(11, 3)
        ops.repeat_rows_into(s, r, out)
        return out * 2

    compiled = torch.compile(fill, fullgraph=True, backend="eager")
    assert torch.equal(compiled(source, repeats), torch.repeat_interleave(source, repeats, dim=0) * 2)


@pytest.mark.cuda
def test_cuda_repeat_rows_unchecked_never_reads_outside_source(gen):
    source = torch.randn(4, 3, generator=gen).cuda()
    short = torch.tensor([1, 2, 0, 1], device="cuda")  # 4 rows for an out of 6: rows 4 and 5 stay zero
    out = torch.full((6, 3), 7.0, device="cuda")
    torch.ops.rarekit.repeat_rows_into(source, short, out, False)
    assert torch.equal(out[:4], torch.repeat_interleave(source, short, dim=0))
    assert torch.equal(out[4:], torch.zeros(2, 3, device="cuda"))
    with pytest.raises(ValueError, match=r"repeats.sum\(\) = 4"):
        torch.ops.rarekit.repeat_rows_into(source, short, out, True)
    negative = torch.tensor([3, -1, 2, 2], device="cuda")
    torch.ops.rarekit.repeat_rows_into(source, negative, out, False)  # some row of source in every output row
    assert all(any(torch.equal(row, candidate) for candidate in source) or not row.any() for row in out)


@pytest.mark.parametrize("labels", [
    lambda rng: rng.integers(0, 5, 400).astype(np.int8),
    lambda rng: rng.integers(0, 2, 400).astype(bool),
    lambda rng: np.array(["cat", "dog", "emu", "a"])[rng.integers(0, 4, 400)],  # fixed-width unicode
    lambda rng: np.array([b"x", b"yy"])[rng.integers(0, 2, 400)],
    lambda rng: np.where(rng.integers(0, 2, 400) > 0, 0.0, -0.0) + rng.integers(0, 3, 400),  # -0.0 == 0.0: gathered
    lambda rng: np.array([("a", 1), ("b", 2)], dtype=object)[rng.integers(0, 2, 400)][:, 0],
    lambda rng: torch.from_numpy(rng.integers(0, 5, 400)),
])
@pytest.mark.parametrize("kind", ["over", "under"])
def test_resampled_labels_equal_the_labels_at_the_indices(gen, labels, kind):
    """The labels are written class by class, not gathered, and must still be y[indices] bit for bit."""
    from rarekit.sampling.indices import bucket_labels, resample, resample_runs
    from rarekit.sampling.samplers import resampled_labels

    rng = np.random.default_rng(int(torch.randint(2**31, (), generator=gen)))
    y = labels(rng)
    buckets = bucket_labels(y)
    smallest = min(buckets.counts)
    targets = ({label: max(buckets.counts) - count for label, count in buckets.class_counts.items()}
               if kind == "over" else {label: smallest for label in buckets.labels[1:]})
    indices = resample(buckets, targets, kind, False, 7)
    out = resampled_labels(y, buckets, resample_runs(buckets, targets, kind), indices)
    if isinstance(y, torch.Tensor):
        assert out.dtype == y.dtype and torch.equal(out, y[indices])
    else:
        expected = y[indices.numpy()]
        assert out.dtype == y.dtype and out.tobytes() == expected.tobytes()


# --- rarekit::gather_segments_into ---------------------------------------------------------------------

def csr_like(gen, rows: int, device):
    """CSR-style offsets of ``rows`` segments of 0 to 9 rows (a third empty)."""
    lengths = torch.randint(0, 10, (rows,), generator=gen) * (torch.rand(rows, generator=gen) > 0.33)
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)


def chosen_segments(offsets: torch.Tensor, chosen: torch.Tensor):
    """The starts and output offsets that copy segments ``chosen`` of ``offsets`` one after the other."""
    lengths = (offsets[1:] - offsets[:-1])[chosen]
    return offsets[:-1][chosen], torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trailing", [(), (1,), (3,), (2, 5), (0,)])
def test_gather_segments_matches_a_python_loop(device, gen, dtype, trailing):
    segments = int(torch.randint(1, 200, (), generator=gen))
    offsets = csr_like(gen, segments, device)
    values = random_source(gen, dtype, (int(offsets[-1]), *trailing), device)
    chosen = torch.randint(0, segments, (int(torch.randint(0, 3000, (), generator=gen)),), generator=gen).to(device)
    starts, out_offsets = chosen_segments(offsets, chosen)
    out = torch.empty((int(out_offsets[-1]), *trailing), dtype=dtype, device=device)
    ops.gather_segments_into(values, starts, out_offsets, out)
    loop = [values[offsets[i]:offsets[i + 1]] for i in chosen.tolist()]
    expected = torch.cat(loop) if loop else values[:0]
    assert torch.equal(out, expected)
    via_reference = torch.empty_like(out)
    reference.gather_segments_into(values, starts, out_offsets, via_reference)
    assert torch.equal(via_reference, expected)


def test_gather_segments_on_threads_with_short_blocks_at_range_edges(gen):
    """Many short segments (copied as fixed blocks) split over threads, into the middle of a buffer whose
    rows outside out_offsets must stay untouched."""
    offsets = csr_like(gen, 50_000, "cpu")
    for dtype in (torch.float64, torch.int32, torch.int16):
        values = torch.arange(int(offsets[-1])).to(dtype)
        chosen = torch.randint(0, 50_000, (300_000,), generator=gen)
        starts, out_offsets = chosen_segments(offsets, chosen)
        out = torch.full((int(out_offsets[-1]) + 5,), -1).to(dtype)
        ops.gather_segments_into(values, starts, out_offsets + 2, out)
        expected = torch.cat([values[offsets[i]:offsets[i + 1]] for i in chosen.tolist()])
        assert torch.equal(out[2:-3], expected)
        assert (out[:2] == -1).all() and (out[-3:] == -1).all()


@pytest.mark.parametrize("path", ["native", "reference"])
def test_gather_segments_refuses_runs_outside_values_or_out(path):
    if path == "native" and _backend._C is None:
        pytest.skip("compiled extension not built")
    values, out = torch.arange(6.0), torch.empty(3)
    rarekit.set_backend("native" if path == "native" else "reference")
    try:
        for starts, out_offsets, match in [([2, 6, 0], [0, 0, 1, 3], r"segment 1 \(out_offsets\[1\] = 0"),
                                           ([2, 5, -1], [0, 0, 1, 3], r"starts\[2\] = -1"),
                                           ([2, 5, 0], [0, 1, 0, 3], "segment 1"),
                                           ([2, 5, 0], [0, 0, 1, 4], "inside the 3 rows of out")]:
            with pytest.raises(ValueError, match=match):
                ops.gather_segments_into(values, torch.tensor(starts), torch.tensor(out_offsets), out)
        with pytest.raises(ValueError, match="one entry more than starts"):
            ops.gather_segments_into(values, torch.tensor([0, 1]), torch.tensor([0, 1]), out)
    finally:
        rarekit.set_backend("native")


@needs_native
def test_gather_segments_opcheck_and_compile():
    values = torch.randn(6, 2)
    starts, out_offsets = torch.tensor([2, 5, 0]), torch.tensor([0, 0, 1, 3])
    torch.library.opcheck(torch.ops.rarekit.gather_segments_into.default,
                          (values, starts, out_offsets, torch.empty(3, 2), True))

    def gather(v, s, o):
        out = torch.empty(3, 2)
        ops.gather_segments_into(v, s, o, out)
        return out + 1

    compiled = torch.compile(gather, fullgraph=True, backend="eager")
    assert torch.equal(compiled(values, starts, out_offsets), values[[5, 0, 1]] + 1)


@pytest.mark.cuda
def test_cuda_gather_segments_unchecked_leaves_bad_runs_unwritten(gen):
    values = torch.arange(6.0, device="cuda")
    out = torch.full((3,), -1.0, device="cuda")
    starts, out_offsets = torch.tensor([2, 6, 0], device="cuda"), torch.tensor([0, 0, 1, 3], device="cuda")
    torch.ops.rarekit.gather_segments_into(values, starts, out_offsets, out, False)
    assert out.tolist() == [-1.0, 0.0, 1.0]  # segment 1 (values 6:7) is outside values: not written
    with pytest.raises(ValueError, match="segment 1"):
        torch.ops.rarekit.gather_segments_into(values, starts, out_offsets, out, True)


@pytest.mark.parametrize("container", ["csr_matrix", "csr_array"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int8, np.complex128, bool])
def test_gather_sparse_equals_scipy_indexing(gen, container, dtype):
    """CSR rows gathered by rarekit are scipy's ``matrix[rows]``: values, structure, class, index dtypes."""
    from scipy import sparse as scipy_sparse

    from rarekit.sampling.samplers import gather_sparse

    rng = np.random.default_rng(int(torch.randint(2**31, (), generator=gen)))
    dense = (rng.random((500, 7)) < 0.3) * rng.integers(1, 9, (500, 7))
    dense[rng.integers(0, 500, 50)] = 0  # empty rows
    matrix = getattr(scipy_sparse, container)(dense.astype(dtype))
    rows = torch.from_numpy(rng.integers(0, 500, 3000))
    ours, theirs = gather_sparse(matrix, rows), matrix[rows.numpy()]
    assert type(ours) is type(theirs) and ours.format == "csr" and ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype and ours.indices.dtype == theirs.indices.dtype
    assert ours.indptr.dtype == theirs.indptr.dtype
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert gather_sparse(matrix, rows[:0]).shape == (0, 7)
