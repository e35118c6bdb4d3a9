"""rarekit.count against the reference and torch.bincount, on fresh random inputs."""
import pytest
import torch

import rarekit
from rarekit import _backend, reference

ID_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32]
needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")


def random_ids(gen, shape, num_bins, dtype, device):
    high = min(num_bins, torch.iinfo(dtype).max + 1)
    return torch.randint(0, max(high, 1), shape, generator=gen).to(dtype).to(device)


def bincount(ids, num_bins, weights=None):
    """Independent check: torch.bincount over the kept ids."""
    flat = ids.reshape(-1).long().cpu()
    keep = (flat >= 0) & (flat < num_bins)
    w = None if weights is None else weights.reshape(-1).cpu().double()[keep]
    return torch.bincount(flat[keep], weights=w, minlength=num_bins)


@pytest.mark.parametrize("dtype", ID_DTYPES)
@pytest.mark.parametrize("shape,num_bins", [((1000,), 37), ((64, 33), 200), ((5, 7, 11), 1), ((3000,), 128256)])
def test_matches_bincount_and_reference(device, gen, dtype, shape, num_bins):
    ids = random_ids(gen, shape, num_bins, dtype, device)
    counts = rarekit.count(ids, num_bins)
    assert counts.dtype == torch.int64 and counts.shape == (num_bins,) and counts.device == ids.device
    assert torch.equal(counts.cpu(), bincount(ids, num_bins))
    assert torch.equal(counts, reference.count(ids, num_bins))


def test_large_zipf_input_uses_all_threads(device, gen):
    ids = (torch.distributions.Geometric(probs=torch.tensor(0.01)).sample((2_000_000,)).long() % 5000).to(device)
    assert torch.equal(rarekit.count(ids, 5000).cpu(), bincount(ids, 5000))


def test_non_contiguous_views(device, gen):
    base = torch.randint(0, 50, (40, 30), generator=gen).to(device)
    for view in (base.t(), base[::3, 1::2], base.unsqueeze(0).expand(4, 40, 30)):
        assert not view.is_contiguous()
        assert torch.equal(rarekit.count(view, 50).cpu(), bincount(view, 50))


def test_empty_and_all_ignored(device):
    empty = torch.empty(0, dtype=torch.int64, device=device)
    assert torch.equal(rarekit.count(empty, 4).cpu(), torch.zeros(4, dtype=torch.int64))
    assert rarekit.count(empty).shape == (0,)
    ignored = torch.full((100,), -100, device=device)
    assert torch.equal(rarekit.count(ignored, 3, ignore_index=-100).cpu(), torch.zeros(3, dtype=torch.int64))
    assert rarekit.count(ignored, ignore_index=-100).shape == (0,)


def test_ignore_index_inside_range_is_skipped(device, gen):
    ids = torch.randint(0, 10, (5000,), generator=gen).to(device)
    counts = rarekit.count(ids, 10, ignore_index=3)
    expected = bincount(ids, 10)
    expected[3] = 0
    assert torch.equal(counts.cpu(), expected)


def test_num_bins_none_takes_max_plus_one(device, gen):
    ids = torch.randint(0, 77, (500,), generator=gen).to(device)
    ids[0] = 80
    assert rarekit.count(ids).shape == (81,)
    padded = torch.cat([ids, torch.full((9,), -100, device=device)])
    assert torch.equal(rarekit.count(padded, ignore_index=-100).cpu(), bincount(ids, 81))


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weighted_sums(device, gen, weight_dtype):
    ids = torch.randint(-3, 60, (7, 300), generator=gen).to(device)
    weights = torch.rand(7, 300, generator=gen).to(weight_dtype).to(device)
    sums = rarekit.count(ids, 50, weights=weights, check=False)
    assert sums.dtype == (torch.float64 if weight_dtype == torch.float64 else torch.float32)
    expected = bincount(ids, 50, weights)  # summed in float64 from the weights as given
    tolerance = 1e-12 if weight_dtype == torch.float64 else 1e-6
    torch.testing.assert_close(sums.cpu().double(), expected, rtol=tolerance, atol=tolerance)


def test_float64_weights_keep_every_bit(device):
    """1 + 2^-40 is 1 in float32: a kernel that rounds float64 weights through float32 loses the 2^-40
    (csrc/cuda/count.cu once did, issue 13)."""
    ids = torch.tensor([0, 0, 1, 2, 2, 2], device=device)
    weights = torch.tensor([1 + 2**-40, 2**-45, 3.0, 2**-30, 1 + 2**-50, 1.0], dtype=torch.float64, device=device)
    sums = rarekit.count(ids, 3, weights=weights)
    assert sums.dtype == torch.float64
    assert torch.equal(sums.cpu(), bincount(ids, 3, weights))
    assert sums[0].item() != 1.0 and sums[0].item() == 1 + 2**-40 + 2**-45


def test_weighted_sums_do_not_depend_on_thread_count(gen):
    ids = torch.randint(0, 1000, (200_000,), generator=gen)
    weights = torch.randn(200_000, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rarekit.count(ids, 1000, weights=weights)
        torch.set_num_threads(max(threads, 2))
        many = rarekit.count(ids, 1000, weights=weights)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_weight_gradient(device, gen):
    ids = torch.randint(-2, 12, (200,), generator=gen).to(device)
    weights = torch.rand(200, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    probe = torch.randn(10, generator=gen, dtype=torch.float64).to(device)
    (rarekit.count(ids, 10, ignore_index=5, weights=weights, check=False) * probe).sum().backward()
    ref_weights = weights.detach().clone().requires_grad_()
    (reference.count(ids, 10, 5, ref_weights) * probe).sum().backward()
    torch.testing.assert_close(weights.grad, ref_weights.grad)


def test_out_of_range_raises_value_error_naming_the_value(device):
    ids = torch.tensor([1, 2, 9, 3, -4], device=device)
    with pytest.raises(ValueError, match=r"ids\[2\] = 9"):
        rarekit.count(ids, 5)
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        rarekit.count(torch.tensor([-1, 0], device=device), 3)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_tasks_of_ids(gen, threads):
    """More ids than one CPU task takes (2^20): every task is counted once, on any thread count, and
    the first bad id is named even when it lies in a late task."""
    ids = torch.randint(0, 5000, (3_000_017,), generator=gen)
    ids[2_900_000] = 5000
    ids[2_950_000] = -7
    kept = ids[(ids >= 0) & (ids < 5000)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        counts = rarekit.count(ids, 5000, check=False)
        with pytest.raises(ValueError, match=r"ids\[2900000\] = 5000"):
            rarekit.count(ids, 5000)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(counts, torch.bincount(kept, minlength=5000))


def test_check_false_drops_bad_ids_without_writing_out_of_bounds(device):
    ids = torch.tensor([0, 1, 2**40, -(2**40), 4, 5, 1], device=device)
    counts = rarekit.count(ids, 5, check=False)
    assert torch.equal(counts.cpu(), torch.tensor([1, 2, 0, 0, 1]))
    assert torch.equal(rarekit.count(ids, 0, check=False).cpu(), torch.zeros(0, dtype=torch.int64))


def test_input_is_not_mutated(device, gen):
    ids = torch.randint(0, 9, (100,), generator=gen).to(device)
    before = ids.clone()
    rarekit.count(ids, 9, ignore_index=4)
    assert torch.equal(ids, before)


@pytest.mark.parametrize("bad,error,match", [
    (torch.rand(4), TypeError, "integer dtype"),
    (torch.tensor([True, False]), TypeError, "integer dtype"),
    ("text", TypeError, "ids must be"),
])
def test_bad_ids(bad, error, match):
    with pytest.raises(error, match=match):
        rarekit.count(bad, 3)


def test_bad_arguments():
    ids = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="num_bins"):
        rarekit.count(ids, -1)
    with pytest.raises(ValueError, match="below 2\\^63"):  # not torch's internal type error
        rarekit.count(ids, 2**63)
    with pytest.raises(ValueError, match="ignore_index must fit int64"):
        rarekit.count(ids, 3, ignore_index=-(2**63) - 1)
    with pytest.raises(ValueError, match="one value per id"):
        rarekit.count(ids, 3, weights=torch.ones(4))
    with pytest.raises(TypeError, match="weights"):
        rarekit.count(ids, 3, weights=torch.ones(3, dtype=torch.int64))


def test_lists_and_numpy_arrays_are_accepted():
    np = pytest.importorskip("numpy")
    assert torch.equal(rarekit.count([0, 2, 2], 3), torch.tensor([1, 0, 2]))
    assert torch.equal(rarekit.count(np.array([1, 1, 0], dtype=np.uint16), 2), torch.tensor([1, 2]))


@needs_native
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("num_bins", [2900, 50_000])  # histograms that fit L1, and larger (prefetched ids)
@pytest.mark.parametrize("ignore_index", [None, -5, 7])
def test_every_cpu_isa_agrees(gen, dtype, num_bins, ignore_index):
    low = 0 if dtype == torch.uint8 else -5
    high = min(num_bins + 100, torch.iinfo(dtype).max + 1)
    ids = torch.randint(low, high, (100_003,), generator=gen).to(dtype)
    ids[5_000:9_000] = ids[5_000:9_000].clamp(0, min(num_bins, high) - 1)  # long in-range stretches take the fast path
    kept = ids if ignore_index is None else ids[ids.long() != ignore_index]
    expected = bincount(kept, num_bins)
    active = _backend._C.cpu_isa()
    try:
        for isa in _backend._C.supported_cpu_isas():
            _backend._C.set_cpu_isa(isa)
            got = rarekit.count(ids, num_bins, ignore_index=ignore_index, check=False)
            assert torch.equal(got, expected), isa
    finally:
        _backend._C.set_cpu_isa(active)


def test_forced_reference_path_matches(gen):
    ids = torch.randint(0, 40, (999,), generator=gen)
    native = rarekit.count(ids, 40)
    rarekit.set_backend("reference")
    try:
        assert rarekit.backend_info()["cpu"] == "reference"
        assert torch.equal(rarekit.count(ids, 40), native)
        with pytest.raises(ValueError, match=r"ids\[\d+\] = 40"):
            rarekit.count(torch.cat([ids, torch.tensor([40])]), 40)
    finally:
        rarekit.set_backend("native")


@needs_native
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck(device, gen, weighted):
    ids = torch.randint(-1, 20, (300,), generator=gen).to(device)
    weights = torch.rand(300, generator=gen, dtype=torch.float64).to(device).requires_grad_() if weighted else None
    torch.library.opcheck(torch.ops.rarekit.count.default, (ids, 20, -1, weights, False))


@needs_native
def test_compiles_without_graph_breaks(device, gen):
    torch._dynamo.reset()
    ids = torch.randint(0, 30, (4, 64), generator=gen).to(device)
    weights = torch.rand(4, 64, generator=gen).to(device)

    def histogram_and_mass(ids, weights):
        return rarekit.count(ids, 30, check=False) * 2, rarekit.count(ids, 30, weights=weights, check=False).sum()

    explanation = torch._dynamo.explain(histogram_and_mass)(ids, weights)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(histogram_and_mass, fullgraph=True)
    counts, mass = compiled(ids, weights)
    assert torch.equal(counts.cpu(), 2 * bincount(ids, 30))
    torch.testing.assert_close(mass, weights.sum())


@pytest.mark.parametrize("ignore_index", ["pad", 1.5, True])
def test_bad_ignore_index(ignore_index):
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        rarekit.count(torch.tensor([0, 1]), 2, ignore_index=ignore_index)


@pytest.mark.parametrize("shape", [(4, 3), (12,), (3, 4, 1)])
def test_weights_of_another_shape_are_refused_up_front(shape):
    """Same number of elements, another shape: refused by the forward, not by autograd in backward."""
    ids = torch.randint(0, 5, (3, 4))
    weights = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"weights must have the shape of ids.*\(3, 4\)"):
        rarekit.count(ids, 5, weights=weights)
    if _backend._C is not None:
        with pytest.raises(ValueError, match="weights must have the shape of ids"):
            torch.ops.rarekit.count(ids, 5, None, weights.detach(), True)
    matching = weights.detach().reshape(3, 4).requires_grad_()
    rarekit.count(ids, 5, weights=matching).sum().backward()
    assert torch.equal(matching.grad, torch.ones(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("ignore_index", [None, -100])
def test_all_negative_ids_with_num_bins_none(ignore_index):
    ids = torch.tensor([-2, -3, -100])
    with pytest.raises(ValueError, match=r"every id is negative \(max\(ids\) = -2\)"):
        rarekit.count(ids, ignore_index=ignore_index)
    dropped = rarekit.count(ids, ignore_index=ignore_index, check=False)
    assert dropped.shape == (0,) and dropped.dtype == torch.int64
    assert rarekit.count(torch.tensor([-100, -100]), ignore_index=-100).shape == (0,)  # nothing to count
    assert rarekit.count(torch.tensor([156, 3], dtype=torch.uint8), ignore_index=-100).shape == (157,)  # not 156 - 100


def test_uint64_ids_at_or_above_2_63_are_named_as_such():
    np = pytest.importorskip("numpy")
    large = np.array([3, 2**63 + 7, 1], dtype=np.uint64)
    for ids in (large, torch.from_numpy(large.view(np.int64)).view(torch.uint64)):
        with pytest.raises(ValueError, match=r"ids\[1\] = 9223372036854775815 does not fit int64"):
            rarekit.count(ids, 10)
    small = np.array([3, 2, 3], dtype=np.uint64)
    assert torch.equal(rarekit.count(small, 4), torch.tensor([0, 0, 1, 2]))
    assert torch.equal(rarekit.count(torch.from_numpy(small.view(np.int64)).view(torch.uint64), 4),
                       torch.tensor([0, 0, 1, 2]))


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=60, deadline=None, derandomize=False)
@hypothesis.given(
    values=st.lists(st.integers(-5, 70), max_size=300),
    num_bins=st.integers(0, 64),
    dtype=st.sampled_from(ID_DTYPES),
    ignore_index=st.one_of(st.none(), st.integers(-5, 70)),
    weighted=st.sampled_from([None, torch.float32, torch.float64]),
    rows=st.sampled_from([1, 2, 3]),
)
def test_property_count_equals_torch_bincount(values, num_bins, dtype, ignore_index, weighted, rows):
    """For any ids (in and out of range), ignore_index and weights: count == torch.bincount of the kept ids."""
    info = torch.iinfo(dtype)
    values = [value for value in values if info.min <= value <= info.max]
    values = values[:len(values) // rows * rows]
    ids = torch.tensor(values, dtype=torch.int64).to(dtype).reshape(rows, -1)
    weights = None if weighted is None else torch.linspace(-2, 3, ids.numel(), dtype=weighted).reshape(ids.shape)
    counts = rarekit.count(ids, num_bins, ignore_index=ignore_index, weights=weights, check=False)
    flat = ids.reshape(-1).long()
    keep = (flat >= 0) & (flat < num_bins)
    if ignore_index is not None:
        keep &= flat != ignore_index
    expected = torch.bincount(flat[keep], None if weights is None else weights.reshape(-1)[keep].double(),
                              minlength=num_bins)
    if weights is None:
        assert counts.dtype == torch.int64 and torch.equal(counts, expected)
    else:
        assert counts.dtype == weighted
        torch.testing.assert_close(counts.double(), expected.double(), rtol=1e-6, atol=1e-6)  # bincount: int64 if empty


@pytest.mark.cuda
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cuda_tiny_inputs(n, weighted):
    ids = torch.full((n,), 3, device="cuda")
    weights = torch.full((n,), 0.5, dtype=torch.float64, device="cuda") if weighted else None
    counts = rarekit.count(ids, 5, weights=weights)
    expected = torch.zeros(5, dtype=torch.float64 if weighted else torch.int64)
    expected[3] = n * (0.5 if weighted else 1)
    assert torch.equal(counts.cpu(), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("num_bins", [64, 12288, 128256])
def test_cuda_counts_are_bitwise_reproducible(gen, num_bins):
    """Integer counts, and weighted sums of dyadic weights (exact in float64 whatever the atomic order)."""
    ids = torch.randint(0, num_bins, (1 << 20,), generator=gen).cuda()
    weights = (torch.randint(0, 64, (1 << 20,), generator=gen) / 8).double().cuda()
    first = rarekit.count(ids, num_bins), rarekit.count(ids, num_bins, weights=weights)
    second = rarekit.count(ids, num_bins), rarekit.count(ids, num_bins, weights=weights)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(first[0].cpu(), bincount(ids, num_bins))
    assert torch.equal(first[1].cpu(), bincount(ids, num_bins, weights))


@pytest.mark.cuda
def test_cuda_count_on_a_side_stream(gen):
    ids = torch.randint(0, 1000, (1 << 18,), generator=gen).cuda()
    weights = torch.rand(1 << 18, generator=gen, dtype=torch.float64).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        counts = rarekit.count(ids, 1000, check=False)
        sums = rarekit.count(ids, 1000, weights=weights, check=False)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(counts.cpu(), bincount(ids, 1000))
    torch.testing.assert_close(sums.cpu(), bincount(ids, 1000, weights), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("check", [True, False])
def test_count_and_token_counter_follow_one_rule(device, gen, check):
    """rarekit.count and TokenCounter share one rule and its defaults: ignore_index=-100 (the padding of
    PyTorch's losses) is skipped, any other id outside [0, num_bins) raises ValueError naming it, or, with
    check=False, is dropped: torch.bincount of the kept ids either way, and the two agree on every input."""
    num_bins = 30
    in_range = torch.randint(0, num_bins, (500,), generator=gen)
    padded = torch.where(torch.rand(500, generator=gen) < 0.2, -100, in_range)
    expected = torch.bincount(in_range[padded != -100], minlength=num_bins)
    counter = rarekit.TokenCounter(num_bins, check=check, device=device)
    assert torch.equal(rarekit.count(padded.to(device), num_bins, check=check).cpu(), expected)
    assert torch.equal(counter.update(padded.to(device)).counts.cpu(), expected)
    for outside in (-1, num_bins, -101, 2**40):
        ids = padded.clone()
        ids[7] = outside
        ids = ids.to(device)
        if check:
            with pytest.raises(ValueError, match=rf"ids\[7\] = {outside}\b"):
                rarekit.count(ids, num_bins)
            with pytest.raises(ValueError, match=rf"TokenCounter\(num_bins=30\).update: .*ids\[7\] = {outside}\b"):
                counter.update(ids)
            assert torch.equal(counter.counts.cpu(), expected)  # nothing added
        else:
            kept = torch.bincount(ids.cpu()[(ids.cpu() >= 0) & (ids.cpu() < num_bins)], minlength=num_bins)
            assert torch.equal(rarekit.count(ids, num_bins, check=False).cpu(), kept)
            fresh = rarekit.TokenCounter(num_bins, check=False, device=device).update(ids)
            assert torch.equal(fresh.counts.cpu(), kept)
    every_id = rarekit.TokenCounter(num_bins, ignore_index=None, check=check, device=device)
    if check:  # without ignore_index, -100 is an id out of range for both
        with pytest.raises(ValueError, match="= -100"):
            rarekit.count(padded.to(device), num_bins, ignore_index=None)
        with pytest.raises(ValueError, match="= -100"):
            every_id.update(padded.to(device))
    else:
        assert torch.equal(rarekit.count(padded.to(device), num_bins, ignore_index=None, check=False).cpu(),
                           every_id.update(padded.to(device)).counts.cpu())
    with pytest.raises(TypeError, match="check must be a bool"):
        rarekit.TokenCounter(num_bins, check=1)
