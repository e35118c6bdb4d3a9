"""Resampling: the index kernels against their references, the samplers against imbalanced-learn, every
input kind, the smoothed bootstrap, BalancedSampler and sequence_weights, on fresh random inputs."""
import collections
import time

import numpy as np
import pytest
import torch

import rarekit
from rarekit import _backend, ops, reference
from rarekit.sampling.samplers import smoothed_bootstrap_scale
from rarekit.sampling.indices import bucket_labels
from rarekit.sampling.strategy import resolve_sampling_strategy

imblearn_over = pytest.importorskip("imblearn.over_sampling")
imblearn_under = pytest.importorskip("imblearn.under_sampling")

ID_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32]
STRING_FORMS = ["auto", "minority", "majority", "not minority", "not majority", "all"]
needs_native = pytest.mark.skipif(_backend._C is None, reason="compiled extension not built")


def numpy_rng(gen) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(2**31, (), generator=gen)))


def random_labels(rng, n=None, classes=None, values=None):
    """Labels of 2-7 imbalanced classes with arbitrary (negative, sparse) integer values; every class occurs
    (a class the draw missed replaces one label of the most frequent class: a 3-class y must not come out
    binary, and the length stays n)."""
    classes = classes or int(rng.integers(2, 8))
    values = values if values is not None else rng.choice(np.arange(-50, 50) * 7919, classes, replace=False)
    weights = rng.dirichlet(np.full(classes, 0.7)) + 0.02
    y = rng.choice(values, size=n or int(rng.integers(30, 400)), p=weights / weights.sum())
    missing = np.setdiff1d(values, y)
    labels, counts = np.unique(y, return_counts=True)
    y[np.flatnonzero(y == labels[counts.argmax()])[:len(missing)]] = missing
    return y


def class_counts(labels) -> collections.Counter:
    return collections.Counter(np.asarray(labels).tolist())


def random_buckets(gen, device, num_buckets=6, n=500):
    codes = torch.randint(0, num_buckets, (n,), generator=gen)
    codes[:num_buckets - 1] = torch.arange(num_buckets - 1)  # every bucket but the last is non-empty
    codes[codes == num_buckets - 1] = 0  # the last is empty
    order, offsets = reference.class_buckets(codes, num_buckets)
    return order.to(device), offsets.to(device), offsets.diff()


# --- index kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ID_DTYPES)
@pytest.mark.parametrize("n,num_classes", [(1000, 7), (50_003, 300), (10, 1), (0, 4), (200, 0)])
def test_class_buckets_matches_reference_and_a_stable_sort(device, gen, dtype, n, num_classes):
    high = min(num_classes + 3, torch.iinfo(dtype).max)
    low = -3 if dtype.is_signed else 0
    codes = torch.randint(low, max(high, low + 1), (n,), generator=gen).to(dtype)
    order, offsets = rarekit.ops.class_buckets(codes.to(device), num_classes)
    assert order.dtype == offsets.dtype == torch.int64 and order.device == offsets.device == codes.to(device).device
    expected_order, expected_offsets = reference.class_buckets(codes, num_classes)
    assert torch.equal(order.cpu(), expected_order) and torch.equal(offsets.cpu(), expected_offsets)
    wide = codes.long()
    in_range = (wide >= 0) & (wide < num_classes)
    # independent check: positions by (code, position), out-of-range codes last
    key = torch.where(in_range, wide, num_classes) * (n + 1) + torch.arange(n)
    assert torch.equal(expected_order, key.argsort())
    assert offsets[-1].item() == int(in_range.sum())


def test_class_buckets_uses_threads_and_large_inputs(device, gen):
    codes = (torch.distributions.Geometric(probs=torch.tensor(0.02)).sample((1_000_003,)).long() % 1000).to(device)
    order, offsets = rarekit.ops.class_buckets(codes, 1000)
    expected = reference.class_buckets(codes.cpu(), 1000)
    assert torch.equal(order.cpu(), expected[0]) and torch.equal(offsets.cpu(), expected[1])


@pytest.mark.parametrize("replacement", [True, False])
def test_draws_match_reference(device, gen, replacement):
    order, offsets, sizes = random_buckets(gen, device)
    if replacement:
        draw_counts = torch.randint(0, 200, (sizes.numel(),), generator=gen) * (sizes > 0)
    else:  # partial, full and empty buckets
        draw_counts = torch.minimum(torch.randint(0, 120, (sizes.numel(),), generator=gen), sizes)
        draw_counts[1] = sizes[1]
    total = int(draw_counts.sum())
    seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=gen))
    draws = ops.draw_from_buckets(order, offsets, draw_counts.to(device), total, seed, replacement)
    expected = reference.draw_from_buckets(order.cpu(), offsets.cpu(), draw_counts, total, seed, replacement)
    assert draws.device == order.device and torch.equal(draws.cpu(), expected)
    # bucket after bucket, each draw from its own bucket
    codes = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)[order.cpu().argsort()]
    assert torch.equal(codes[expected], torch.repeat_interleave(torch.arange(sizes.numel()), draw_counts))
    if not replacement:
        assert expected.unique().numel() == total
        full = order.cpu()[offsets[1]:offsets[2]]
        start = int(draw_counts[:1].sum())
        assert torch.equal(expected[start:start + full.numel()], full)  # a bucket drawn in full keeps its order


def test_every_cpu_isa_draws_the_same(gen):
    """The AVX-512 draw (positions in blocks of 256) and the one-loop draws agree with the reference bit for
    bit, on buckets of every size, runs that start and end inside a block, and a thread split."""
    from rarekit import _backend

    if _backend._C is None:
        pytest.skip("compiled extension not built")
    sizes = torch.tensor([1, 0, 3, 700, 2, 100_000])
    order = torch.randperm(int(sizes.sum()), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    draw_counts = torch.tensor([257, 0, 1, 90_001, 255, 3]) * (sizes > 0)
    total = int(draw_counts.sum())
    expected = reference.draw_from_buckets(order, offsets, draw_counts, total, 12345, True)
    active = _backend._C.cpu_isa()
    try:
        for isa in _backend._C.supported_cpu_isas():
            _backend._C.set_cpu_isa(isa)
            assert torch.equal(ops.draw_from_buckets(order, offsets, draw_counts, total, 12345, True), expected), isa
    finally:
        _backend._C.set_cpu_isa(active)


def test_same_draws_on_every_device(device, gen):
    y = torch.randint(0, 9, (5000,), generator=gen)
    for draw in (lambda labels: rarekit.oversample_indices(labels, seed=5),
                 lambda labels: rarekit.undersample_indices(labels, seed=5),
                 lambda labels: rarekit.undersample_indices(labels, "all", replacement=True, seed=5)):
        assert torch.equal(draw(y.to(device)).cpu(), draw(y))


def test_draws_are_uniform(gen):
    order, offsets = torch.arange(10), torch.tensor([0, 10])
    seed = int(torch.randint(2**62, (), generator=gen))
    draws = ops.draw_from_buckets(order, offsets, torch.tensor([200_000]), 200_000, seed, True)
    frequencies = torch.bincount(draws, minlength=10) / 200_000
    assert (frequencies - 0.1).abs().max() < 0.005  # 7 standard deviations
    kept = torch.stack([ops.draw_from_buckets(order, offsets, torch.tensor([3]), 3, seed + s, False)
                        for s in range(2000)])
    assert all(row.unique().numel() == 3 for row in kept)
    inclusion = torch.bincount(kept.flatten(), minlength=10) / 2000
    assert (inclusion - 0.3).abs().max() < 0.05  # 5 standard deviations
    first = torch.bincount(kept[:, 0], minlength=10) / 2000
    assert (first - 0.1).abs().max() < 0.04  # the order of a subset is random too


def test_draw_into_writes_only_its_slice(device, gen):
    order, offsets, sizes = random_buckets(gen, device)
    draw_counts = (sizes > 0).long() * 7
    buffer = torch.full((int(draw_counts.sum()) + 10,), -5, device=device)
    ops.draw_from_buckets_into(order, offsets, draw_counts.to(device), 11, True, buffer[4:-6])
    assert (buffer[:4] == -5).all() and (buffer[-6:] == -5).all()
    assert torch.equal(buffer[4:-6], ops.draw_from_buckets(order, offsets, draw_counts.to(device),
                                                           int(draw_counts.sum()), 11, True))


def test_results_do_not_depend_on_the_thread_count(gen):
    y = torch.from_numpy(random_labels(numpy_rng(gen), n=300_000))
    codes = y - int(y.min())

    def run():
        return (rarekit.oversample_indices(y, seed=3), rarekit.undersample_indices(y, seed=3),
                *rarekit.ops.class_buckets(codes, int(codes.max()) + 1))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(threads, 2))
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))
    assert not torch.equal(rarekit.oversample_indices(y, seed=4), one[0])


@needs_native
def test_inconsistent_draw_arguments_raise_value_error():
    order, offsets = torch.arange(6), torch.tensor([0, 2, 2, 6])
    draw = torch.ops.rarekit.draw_from_buckets
    cases = [
        ((order, offsets, torch.tensor([1, 0, 1]), 3, 0, True), "must equal the number of outputs"),
        ((order, offsets, torch.tensor([1, 1, 1]), 3, 0, True), r"draw_counts\[1\] = 1 draws with replacement"),
        ((order, offsets, torch.tensor([3, 0, 0]), 3, 0, False), r"draw_counts\[0\] = 3 draws without"),
        ((order, offsets, torch.tensor([-1, 0, 1]), 0, 0, True), "must be >= 0"),
        ((order, torch.tensor([0, 3, 2, 6]), torch.tensor([1, 0, 1]), 2, 0, True), "non-decreasing"),
        ((order, torch.tensor([0, 2, 2, 7]), torch.tensor([1, 0, 1]), 2, 0, True), "exceeds the length"),
        ((order, torch.tensor([1, 2, 2, 6]), torch.tensor([1, 0, 1]), 2, 0, True), r"offsets\[0\] must be 0"),
        ((order, offsets, torch.tensor([1, 1]), 2, 0, True), "one entry more"),
        ((order, offsets, torch.tensor([1, 0, 1]), -1, 0, True), "total must be >= 0"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            draw(*args)
    with pytest.raises(TypeError, match="1-D int64"):  # a wrong dtype is a TypeError
        draw(order.int(), offsets, torch.tensor([1, 0, 1]), 2, 0, True)
    with pytest.raises(ValueError, match="out must be contiguous"):
        torch.ops.rarekit.draw_from_buckets_into(order, offsets, torch.tensor([1, 0, 1]), 0, True,
                                                 torch.empty(4, dtype=torch.int64)[::2])
    with pytest.raises(ValueError, match="1-D"):
        torch.ops.rarekit.class_buckets(torch.zeros(2, 2, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="integer dtype"):
        torch.ops.rarekit.class_buckets(torch.zeros(3), 3)
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        torch.ops.rarekit.class_buckets(torch.zeros(3, dtype=torch.int64), -1)


@needs_native
def test_opcheck(device, gen):
    codes = torch.randint(-1, 12, (400,), generator=gen).to(device)
    torch.library.opcheck(torch.ops.rarekit.class_buckets.default, (codes, 10))
    order, offsets = torch.ops.rarekit.class_buckets(codes, 10)
    sizes = offsets.diff().cpu()
    with_replacement = (torch.randint(0, 30, (10,), generator=gen) * (sizes > 0)).to(device)
    without = torch.minimum(torch.randint(0, 30, (10,), generator=gen), sizes).to(device)
    for draw_counts, replacement in ((with_replacement, True), (without, False)):
        total = int(draw_counts.sum())
        torch.library.opcheck(torch.ops.rarekit.draw_from_buckets.default,
                              (order, offsets, draw_counts, total, 9, replacement))
        torch.library.opcheck(torch.ops.rarekit.draw_from_buckets_into.default,
                              (order, offsets, draw_counts, 9, replacement, torch.empty(total, dtype=torch.int64,
                                                                                        device=device)))


@needs_native
def test_compiles_without_graph_breaks(device, gen):
    torch._dynamo.reset()
    codes = torch.randint(0, 5, (300,), generator=gen).to(device)
    codes[:5] = torch.arange(5)
    draw_counts = torch.tensor([40, 0, 3, 7, 1], device=device)

    def resample(codes, draw_counts):
        order, offsets = ops.class_buckets(codes, 5)
        return torch.cat([ops.draw_from_buckets(order, offsets, draw_counts, 51, 123, True),
                          ops.draw_from_buckets(order, offsets, draw_counts.clamp(max=1), 4, 123, False)])

    explanation = torch._dynamo.explain(resample)(codes, draw_counts)
    assert explanation.graph_break_count == 0
    assert torch.equal(torch.compile(resample, fullgraph=True)(codes, draw_counts), resample(codes, draw_counts))


def test_forced_reference_path_matches(gen):
    y = random_labels(numpy_rng(gen), n=2000)
    native = (rarekit.oversample_indices(y, seed=8), rarekit.undersample_indices(y, seed=8),
              rarekit.undersample_indices(y, "not majority", replacement=True, seed=8))
    rarekit.set_backend("reference")
    try:
        forced = (rarekit.oversample_indices(y, seed=8), rarekit.undersample_indices(y, seed=8),
                  rarekit.undersample_indices(y, "not majority", replacement=True, seed=8))
    finally:
        rarekit.set_backend("native")
    assert all(torch.equal(a, b) for a, b in zip(native, forced))


# --- sampling_strategy: imbalanced-learn equivalence --------------------------------------------------

def imblearn_sampler(kind, strategy, replacement=False):
    if kind == "over":
        return imblearn_over.RandomOverSampler(sampling_strategy=strategy, random_state=0)
    return imblearn_under.RandomUnderSampler(sampling_strategy=strategy, random_state=0, replacement=replacement)


def rarekit_sampler(kind, strategy, replacement=False):
    if kind == "over":
        return rarekit.RandomOverSampler(sampling_strategy=strategy, random_state=0)
    return rarekit.RandomUnderSampler(sampling_strategy=strategy, random_state=0, replacement=replacement)


def assert_same_outcome(kind, strategy, y, replacement=False):
    """Both raise ValueError, or both give the same class counts and sampling_strategy_."""
    X = np.arange(len(y))[:, None]
    try:
        _, y_expected = (expected := imblearn_sampler(kind, strategy, replacement)).fit_resample(X, y)
    except ValueError:
        with pytest.raises(ValueError):
            rarekit_sampler(kind, strategy, replacement).fit_resample(X, y)
        return False
    ours = rarekit_sampler(kind, strategy, replacement)
    X_res, y_res = ours.fit_resample(X, y)
    assert class_counts(y_res) == class_counts(y_expected), (kind, strategy)
    assert ours.sampling_strategy_ == dict(expected.sampling_strategy_), (kind, strategy)
    assert np.array_equal(X_res[:, 0], ours.sample_indices_) and np.array_equal(y[ours.sample_indices_], y_res)
    return True


@pytest.mark.parametrize("kind", ["over", "under"])
@pytest.mark.parametrize("strategy", STRING_FORMS)
def test_string_forms_match_imblearn(gen, kind, strategy):
    rng = numpy_rng(gen)
    for _ in range(5):
        assert_same_outcome(kind, strategy, random_labels(rng), replacement=bool(rng.integers(2)))


@pytest.mark.parametrize("kind", ["over", "under"])
def test_float_forms_match_imblearn(gen, kind):
    rng = numpy_rng(gen)
    resampled = 0
    for _ in range(30):
        y = random_labels(rng, classes=2)
        resampled += assert_same_outcome(kind, float(rng.uniform(0.05, 1.0)), y)
    assert_same_outcome(kind, 1, random_labels(rng, classes=2))
    assert_same_outcome(kind, 0.5, random_labels(rng, classes=3))  # multi-class: both raise
    assert resampled > 0


@pytest.mark.parametrize("kind", ["over", "under"])
def test_dict_and_callable_forms_match_imblearn(gen, kind):
    rng = numpy_rng(gen)
    for _ in range(5):
        y = random_labels(rng)
        counts = class_counts(y)
        chosen = rng.choice(sorted(counts), size=int(rng.integers(1, len(counts) + 1)), replace=False)
        factor = (lambda c: int(c * rng.uniform(1, 3))) if kind == "over" else (lambda c: int(c * rng.uniform(0, 1)))
        requested = {label: factor(counts[label.item()]) for label in chosen}
        assert assert_same_outcome(kind, requested, y)
        assert assert_same_outcome(kind, lambda labels: requested, y)
        assert assert_same_outcome(kind, lambda labels: {c: int((labels == c).sum()) for c in np.unique(labels)}, y)


@pytest.mark.parametrize("kind", ["over", "under"])
def test_invalid_strategies_raise_value_error_like_imblearn(gen, kind):
    rng = numpy_rng(gen)
    y = random_labels(rng, classes=3)
    counts = class_counts(y)
    smallest, largest = min(counts, key=counts.get), max(counts, key=counts.get)
    invalid = ["minority" if kind == "under" else "majority", "bogus", 1.5, 0.0, -0.5, 0.5, [smallest],
               {10**9: 3}, {smallest: -1},
               {largest: counts[largest] - 1} if kind == "over" else {smallest: counts[smallest] + 1}]
    for strategy in invalid:
        assert not assert_same_outcome(kind, strategy, y), strategy
    assert not assert_same_outcome(kind, "auto", np.zeros(10, dtype=int))  # a single class
    binary = random_labels(rng, classes=2)
    binary_counts = class_counts(binary)
    ratio = min(binary_counts.values()) / max(binary_counts.values())
    assert not assert_same_outcome(kind, ratio / 2, binary)  # over: drops minority samples; under: grows majority
    with pytest.raises(ValueError, match="must return a dict"):
        rarekit_sampler(kind, lambda labels: [1]).fit_resample(np.zeros((len(y), 1)), y)
    with pytest.raises(ValueError, match="integer count"):
        rarekit_sampler(kind, {largest: 2.5}).fit_resample(np.zeros((len(y), 1)), y)


def test_resolve_sampling_strategy_directly():
    counts = {"a": 5, "b": 2, "c": 5}
    assert resolve_sampling_strategy("auto", counts, "over") == {"b": 3, "c": 0}  # ties: the first class is majority
    assert resolve_sampling_strategy("auto", counts, "under") == {"a": 2, "c": 2}
    assert resolve_sampling_strategy({"c": 4}, counts, "under") == {"c": 4}
    with pytest.raises(ValueError, match="kind"):
        resolve_sampling_strategy("auto", counts, "sideways")
    with pytest.raises(ValueError, match="more than 1 class"):
        resolve_sampling_strategy("auto", {"a": 3}, "over")


def test_output_order_follows_imblearn(gen):
    y = random_labels(numpy_rng(gen), n=500)
    over = rarekit.oversample_indices(y, seed=1).numpy()
    assert np.array_equal(over[:len(y)], np.arange(len(y)))
    assert np.all(np.diff(y[over[len(y):]]) >= 0)  # new draws class by class, in sorted class order
    for replacement in (False, True):
        under = rarekit.undersample_indices(y, "not majority", replacement=replacement, seed=1).numpy()
        assert np.all(np.diff(y[under]) >= 0)
        majority = collections.Counter(y.tolist()).most_common(1)[0][0]
        kept = under[y[under] == majority]
        assert np.array_equal(kept, np.flatnonzero(y == majority))  # untargeted classes whole, in order
    subset = rarekit.undersample_indices(y, "all", seed=1).numpy()
    assert len(np.unique(subset)) == len(subset)


@pytest.mark.parametrize("labels", [
    lambda rng: rng.choice(np.array([10**12, -10**12, 5]), 300),  # sparse values: the torch.unique path
    lambda rng: rng.choice(np.array(["cat", "dog", "emu"], dtype=object), 300),
    lambda rng: rng.choice(["cat", "dog", "emu"], 300).tolist(),
    lambda rng: rng.choice(np.array([1.0, 2.0, 7.0]), 300),
    lambda rng: rng.choice(np.array([True, False]), 300),
    lambda rng: torch.from_numpy(rng.choice(np.array([3, 900, 77]), 300)).to(torch.uint16),
    lambda rng: rng.choice(np.array([2**64 - 1, 3], dtype=np.uint64), 300),
])
def test_label_kinds_match_imblearn(gen, labels):
    y = labels(numpy_rng(gen))
    y_numpy = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    for kind in ("over", "under"):
        ours = rarekit_sampler(kind, "auto")
        _, y_res = ours.fit_resample(np.zeros((len(y_numpy), 1)), y)
        expected = imblearn_sampler(kind, "auto")
        _, y_expected = expected.fit_resample(np.zeros((len(y_numpy), 1)), y_numpy)
        assert class_counts(y_res) == class_counts(y_expected)
        assert ours.sampling_strategy_ == dict(expected.sampling_strategy_)


def test_bad_labels():
    with pytest.raises(ValueError, match="continuous"):
        rarekit.oversample_indices(np.array([0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        rarekit.oversample_indices(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        rarekit.oversample_indices(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        rarekit.undersample_indices([])
    with pytest.raises(TypeError, match="cannot be sorted"):
        rarekit.oversample_indices(np.array([1, "a", None], dtype=object))
    with pytest.raises(ValueError, match="not both"):
        rarekit.oversample_indices([0, 1, 1], seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="seed"):
        rarekit.oversample_indices([0, 1, 1], seed=1.5)


def test_seeds_and_generators(gen):
    y = random_labels(numpy_rng(gen), n=400)
    torch.manual_seed(7)
    first = rarekit.oversample_indices(y)
    torch.manual_seed(7)
    assert torch.equal(rarekit.oversample_indices(y), first)
    assert torch.equal(rarekit.oversample_indices(y, generator=torch.Generator().manual_seed(2)),
                       rarekit.oversample_indices(y, generator=torch.Generator().manual_seed(2)))
    for state in (3, np.random.RandomState(3), np.random.default_rng(3), torch.Generator().manual_seed(3)):
        rarekit.RandomOverSampler(random_state=state).fit_resample(np.zeros((len(y), 1)), y)
    with pytest.raises(ValueError, match="random_state"):
        rarekit.RandomOverSampler(random_state="three").fit_resample(np.zeros((len(y), 1)), y)


def test_inputs_are_not_mutated(device, gen):
    y = torch.from_numpy(random_labels(numpy_rng(gen), n=300)).to(device)
    X = torch.randn(300, 3, generator=gen).to(device)
    before = (y.clone(), X.clone())
    rarekit.RandomOverSampler(random_state=0, shrinkage=1.0).fit_resample(X, y)
    rarekit.RandomUnderSampler(random_state=0, replacement=True).fit_resample(X, y)
    assert torch.equal(y, before[0]) and torch.equal(X, before[1])


# --- input kinds ------------------------------------------------------------------------------------

def assert_rows(X_res, X, indices, row=lambda data, i: data[i]):
    assert len(X_res) == len(indices)
    for position in np.random.default_rng(0).choice(len(indices), size=min(50, len(indices)), replace=False):
        expected, got = row(X, int(indices[position])), row(X_res, position)
        assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("sampler", [lambda: rarekit.RandomOverSampler(random_state=1),
                                     lambda: rarekit.RandomUnderSampler(random_state=1)])
def test_round_trip_numpy_and_lists(gen, sampler):
    rng = numpy_rng(gen)
    y = random_labels(rng, n=200)
    text = [f"sentence {i} " * int(rng.integers(1, 4)) for i in range(200)]
    string_labels = [f"class-{label}" for label in y.tolist()]
    X = rng.normal(size=(200, 4)).astype(np.float32)
    for X_in, y_in in ((X, y), (text, string_labels), (X.tolist(), y.tolist()), (X, string_labels)):
        resampler = sampler()
        X_res, y_res = resampler.fit_resample(X_in, y_in)
        assert type(X_res) is (np.ndarray if isinstance(X_in, np.ndarray) else list)
        assert type(y_res) is (np.ndarray if isinstance(y_in, np.ndarray) else list)
        assert_rows(X_res, X_in, resampler.sample_indices_)
        assert list(y_res) == [y_in[i] for i in resampler.sample_indices_]
        if isinstance(X_res, np.ndarray):
            assert X_res.dtype == X.dtype


def test_round_trip_tensors(device, gen):
    y = torch.from_numpy(random_labels(numpy_rng(gen), n=300)).to(device)
    X = torch.randn(300, 2, 5, generator=gen).to(device)  # any trailing shape without shrinkage
    for resampler in (rarekit.RandomOverSampler(random_state=2), rarekit.RandomUnderSampler(random_state=2)):
        X_res, y_res = resampler.fit_resample(X, y)
        indices = resampler.sample_indices_
        assert isinstance(indices, torch.Tensor) and indices.device == y.device
        assert X_res.device == X.device and y_res.device == y.device
        assert torch.equal(X_res, X[indices]) and torch.equal(y_res, y[indices])
    X_res, _ = rarekit.RandomOverSampler(random_state=2).fit_resample(X, y.cpu())  # y on the CPU, X anywhere
    assert X_res.device == X.device


def test_round_trip_pandas(gen):
    pd = pytest.importorskip("pandas")
    rng = numpy_rng(gen)
    y = random_labels(rng, n=150)
    X = pd.DataFrame({"length": rng.normal(size=150), "word": [f"w{i}" for i in range(150)],
                      "flag": rng.integers(0, 2, 150).astype(bool)}, index=np.arange(150) * 3)
    series = pd.Series([f"c{label}" for label in y], name="label", index=X.index)
    for resampler in (rarekit.RandomOverSampler(random_state=3), rarekit.RandomUnderSampler(random_state=3)):
        X_res, y_res = resampler.fit_resample(X, series)
        assert isinstance(X_res, pd.DataFrame) and isinstance(y_res, pd.Series)
        assert list(X_res.columns) == list(X.columns) and (X_res.dtypes == X.dtypes).all() and y_res.name == "label"
        expected = X.iloc[resampler.sample_indices_]  # imblearn: the over-sampler renumbers the rows,
        if isinstance(resampler, rarekit.RandomOverSampler):  # the under-sampler keeps their labels
            expected = expected.reset_index(drop=True)
        assert X_res.equals(expected) and y_res.index.equals(X_res.index)
        assert y_res.tolist() == series.iloc[resampler.sample_indices_].tolist()
        theirs = type(resampler).__name__
        module = imblearn_over if theirs == "RandomOverSampler" else imblearn_under
        X_theirs, y_theirs = getattr(module, theirs)(random_state=3).fit_resample(X, series)
        assert type(X_theirs.index) is type(X_res.index) and (X_theirs.dtypes == X_res.dtypes).all()
        assert y_theirs.dtype == y_res.dtype and y_theirs.name == y_res.name
        X_res, y_res = resampler.fit_resample(X["length"], y)  # a Series as X
        assert isinstance(X_res, pd.Series) and isinstance(y_res, np.ndarray)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_round_trip_scipy_sparse(gen, fmt):
    sparse = pytest.importorskip("scipy.sparse")
    rng = numpy_rng(gen)
    y = random_labels(rng, n=120)
    X = sparse.random(120, 30, density=0.1, format=fmt, random_state=int(rng.integers(1000)))
    for resampler in (rarekit.RandomOverSampler(random_state=4), rarekit.RandomUnderSampler(random_state=4)):
        X_res, y_res = resampler.fit_resample(X, y)
        assert sparse.issparse(X_res) and X_res.format == ("csr" if fmt == "coo" else fmt)  # as imblearn
        assert np.array_equal(X_res.toarray(), X.toarray()[resampler.sample_indices_])
        assert np.array_equal(y_res, y[resampler.sample_indices_])


def test_bad_inputs():
    y = np.array([0, 1, 1, 1])
    with pytest.raises(ValueError, match="X has 3 rows, y has 4"):
        rarekit.RandomOverSampler().fit_resample(np.zeros((3, 2)), y)
    with pytest.raises(TypeError, match="X must be"):
        rarekit.RandomOverSampler().fit_resample({"a": 1}, y)
    with pytest.raises(TypeError, match="replacement"):
        rarekit.RandomUnderSampler(replacement="yes").fit_resample(np.zeros((4, 2)), y)


# --- smoothed bootstrap -----------------------------------------------------------------------------

def test_smoothed_bootstrap_scale_is_imblearns_formula(gen):
    rng = numpy_rng(gen)
    X = rng.normal(size=(400, 6)) * rng.uniform(0.1, 5, 6)
    classes = rng.integers(0, 3, 400)
    shrinkage = np.array([0.5, 1.0, 2.5])
    scale = smoothed_bootstrap_scale(torch.from_numpy(X), torch.from_numpy(classes), torch.from_numpy(shrinkage))
    n, d = X.shape
    smoothing_constant = (4 / ((d + 2) * n)) ** (1 / (d + 4))  # imblearn's RandomOverSampler._fit_resample
    for c in range(3):
        expected = shrinkage[c] * smoothing_constant * np.std(X[classes == c], axis=0)
        np.testing.assert_allclose(scale[c].numpy(), expected, rtol=1e-12)


def test_shrinkage_noise_has_the_scale_of_imblearn(gen):
    rng = numpy_rng(gen)
    y = np.repeat([0, 1, 2], [4000, 300, 50])
    X = rng.normal(size=(len(y), 3)) * np.array([[1.0, 10.0, 0.1]]) + y[:, None]
    shrinkage = {0: 1.0, 1: 0.5, 2: 2.0}
    ours = rarekit.RandomOverSampler(random_state=5, shrinkage=shrinkage)
    X_res, y_res = ours.fit_resample(X.astype(np.float32), y)
    assert X_res.dtype == np.float32 and X_res.shape == (3 * 4000, 3)
    assert ours.shrinkage_ == shrinkage  # imblearn's shrinkage_: the dict given
    assert np.array_equal(X_res[:len(y)], X.astype(np.float32))  # the originals are untouched
    expected = imblearn_over.RandomOverSampler(random_state=5, shrinkage=shrinkage)
    X_expected, y_expected = expected.fit_resample(X, y)
    scale = smoothed_bootstrap_scale(torch.from_numpy(X), torch.from_numpy(y), torch.tensor([1.0, 0.5, 2.0])).numpy()
    for c in (1, 2):
        noise = (X_res[len(y):] - X[ours.sample_indices_[len(y):]])[y_res[len(y):] == c]
        theirs = (X_expected[len(y):] - X[expected.sample_indices_[len(y):]])[y_expected[len(y):] == c]
        assert len(noise) == len(theirs) == 4000 - np.sum(y == c)
        np.testing.assert_allclose(noise.std(axis=0) / scale[c], 1, atol=0.06)  # ~3800 normals: 5 sd
        np.testing.assert_allclose(theirs.std(axis=0) / scale[c], 1, atol=0.06)
        assert np.abs(noise.mean(axis=0) / scale[c]).max() < 0.08


def test_shrinkage_zero_and_tensors(device, gen):
    y = torch.from_numpy(random_labels(numpy_rng(gen), n=200)).to(device)
    X = torch.randn(200, 3, generator=gen, dtype=torch.float64).to(device)
    resampler = rarekit.RandomOverSampler(random_state=0, shrinkage=0.0)
    X_res, _ = resampler.fit_resample(X, y)
    assert torch.equal(X_res, X[resampler.sample_indices_])
    X_res, _ = rarekit.RandomOverSampler(random_state=0, shrinkage=1.0).fit_resample(X, y)
    assert X_res.device == X.device and X_res.dtype == X.dtype and not torch.equal(X_res, X[resampler.sample_indices_])


def test_shrinkage_on_dataframes(gen):
    pd = pytest.importorskip("pandas")
    y = random_labels(numpy_rng(gen), n=100)
    X = pd.DataFrame({"a": np.arange(100.0), "b": np.ones(100, dtype=np.float32)})
    X_res, _ = rarekit.RandomOverSampler(random_state=0, shrinkage=1.0).fit_resample(X, y)
    assert isinstance(X_res, pd.DataFrame) and (X_res.dtypes == X.dtypes).all() and X_res.iloc[:100].equals(X)


def test_bad_shrinkage():
    """shrinkage is checked as imbalanced-learn checks it; rarekit refuses NaN and infinite factors too."""
    y = np.array([0] * 10 + [1] * 3 + [2] * 4)
    X = np.random.default_rng(0).normal(size=(17, 2))
    also_rejected_by_imblearn = [(-1.0, "shrinkage"), ({1: 1.0}, r"missing \[2\]"),
                                 ({1: 1.0, 2: -2.0}, r"shrinkage\[2\]"),
                                 ({0: -1.0, 1: 1.0, 2: 1.0}, r"shrinkage\[0\]")]  # 0 is not resampled
    for shrinkage, match in also_rejected_by_imblearn:
        with pytest.raises(ValueError, match=match):
            rarekit.RandomOverSampler(shrinkage=shrinkage).fit_resample(X, y)
        with pytest.raises(ValueError):
            imblearn_over.RandomOverSampler(shrinkage=shrinkage).fit_resample(X, y)
    for X_in, shrinkage in [(X, float("nan")), (X, {1: 1.0, 2: float("inf")})]:
        with pytest.raises(ValueError, match="shrinkage"):
            rarekit.RandomOverSampler(shrinkage=shrinkage).fit_resample(X_in, y)
    with pytest.raises(ValueError, match="numerical"):
        rarekit.RandomOverSampler(shrinkage=1.0).fit_resample([["a", "b"]] * 17, y)
    with pytest.raises(TypeError, match="shrinkage"):
        rarekit.RandomOverSampler(shrinkage={1: "big", 2: 1.0}).fit_resample(X, y)
    with pytest.raises(ValueError, match="floating-point"):
        rarekit.RandomOverSampler(shrinkage=1.0).fit_resample(torch.ones(17, 2, dtype=torch.int64), y)


def test_shrinkage_accepted_as_imblearn_accepts_it():
    """A factor for a class absent from y, integer X (made float64) and sparse X are accepted by both."""
    sparse = pytest.importorskip("scipy.sparse")
    y = np.array([0] * 10 + [1] * 3 + [2] * 4)
    X = np.random.default_rng(0).normal(size=(17, 2))
    for X_in, shrinkage in [(X, {1: 1.0, 2: 1.0, 9: 1.0}), (X.round().astype(int), 1.0),
                            (sparse.csr_matrix(X), 1.0), (sparse.csc_matrix(X), {1: 0.0, 2: 0.0})]:
        ours = rarekit.RandomOverSampler(shrinkage=shrinkage, random_state=0)
        theirs = imblearn_over.RandomOverSampler(shrinkage=shrinkage, random_state=0)
        (X_res, y_res), (X_theirs, y_theirs) = ours.fit_resample(X_in, y), theirs.fit_resample(X_in, y)
        assert type(X_res) is type(X_theirs) and X_res.dtype == X_theirs.dtype and X_res.shape == X_theirs.shape
        assert class_counts(y_res) == class_counts(y_theirs) and ours.shrinkage_ == theirs.shrinkage_
        dense = X_res.toarray() if sparse.issparse(X_res) else X_res
        original = X_in.toarray() if sparse.issparse(X_in) else X_in
        assert np.array_equal(dense[:17], original)
        if isinstance(shrinkage, dict) and not any(shrinkage.values()):  # zero noise: the drawn rows themselves
            assert np.array_equal(dense[17:], original[ours.sample_indices_[17:]])
        else:
            assert not np.array_equal(dense[17:], original[ours.sample_indices_[17:]])


def test_sparse_shrinkage_noise_has_the_scale_of_imblearn(gen):
    sparse = pytest.importorskip("scipy.sparse")
    rng = numpy_rng(gen)
    y = np.repeat([0, 1], [3000, 200])
    X = sparse.random(3200, 4, density=0.5, format="csr", random_state=int(rng.integers(1000))) * 3
    ours = rarekit.RandomOverSampler(shrinkage=2.0, random_state=1)
    X_res, y_res = ours.fit_resample(X, y)
    members = X[np.flatnonzero(y == 1)].toarray()
    expected = 2.0 * (4 / (6 * 3200)) ** (1 / 8) * members.std(axis=0)  # imblearn's formula
    noise = X_res[3200:].toarray() - X[ours.sample_indices_[3200:]].toarray()
    np.testing.assert_allclose(noise.std(axis=0) / expected, 1, atol=0.06)  # 2800 normals per feature


# --- BalancedSampler --------------------------------------------------------------------------------

def test_balanced_sampler_resamples_each_epoch_deterministically(gen):
    y = random_labels(numpy_rng(gen), n=1000)
    sampler = rarekit.BalancedSampler(y, seed=11, num_samples="resample")
    epochs = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs[0] == epochs[2] and epochs[0] != epochs[1]
    assert list(rarekit.BalancedSampler(y, seed=11, num_samples="resample")) == epochs[0]
    assert list(rarekit.BalancedSampler(y, seed=12, num_samples="resample")) != epochs[0]
    counts = class_counts(y[epochs[1]])
    assert len(set(counts.values())) == 1 and len(epochs[1]) == len(sampler)  # balanced up to the majority
    assert sorted(epochs[0]) == sorted(rarekit.oversample_indices(y, seed=sampler._seed(0)).tolist())
    under = rarekit.BalancedSampler(torch.from_numpy(y), replacement=False, shuffle=False, seed=3,
                                    num_samples="resample")
    stream = list(under)
    assert len(set(class_counts(y[stream]).values())) == 1 and len(set(stream)) == len(stream)
    assert np.all(np.diff(y[stream]) >= 0)  # shuffle=False keeps imblearn's order


def test_balanced_sampler_num_samples_and_dataloader(gen):
    y = random_labels(numpy_rng(gen), n=300)
    size = len(rarekit.BalancedSampler(y, num_samples="resample"))
    for num_samples in (10, size, 2 * size + 7):
        sampler = rarekit.BalancedSampler(y, num_samples=num_samples)
        assert len(list(sampler)) == len(sampler) == num_samples
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64,
                                         sampler=rarekit.BalancedSampler(y, num_samples="resample"))
    seen = torch.cat([batch for (batch,) in loader]).numpy()
    assert len(set(class_counts(seen).values())) == 1


def test_balanced_sampler_with_weights(gen):
    weights = torch.tensor([0.0, 1.0, 2.0, 7.0, 0.0])
    sampler = rarekit.BalancedSampler(weights=weights, num_samples=100_000, seed=int(torch.randint(99, ())))
    frequencies = torch.bincount(torch.tensor(list(sampler)), minlength=5) / 100_000
    assert (frequencies - weights / weights.sum()).abs().max() < 0.01
    without = list(rarekit.BalancedSampler(weights=weights, replacement=False, num_samples=3))
    assert sorted(without) == [1, 2, 3]
    assert list(rarekit.BalancedSampler(weights=weights, num_samples=50, shuffle=False)) == sorted(
        rarekit.BalancedSampler(weights=weights, num_samples=50))
    with pytest.raises(ValueError, match="positive weights; there are 3"):
        rarekit.BalancedSampler(weights=weights, replacement=False, num_samples=4)
    first_picks = collections.Counter(
        next(iter(rarekit.BalancedSampler(weights=weights, replacement=False, num_samples=3, seed=s)))
        for s in range(3000))
    assert abs(first_picks[3] / 3000 - 0.7) < 0.04  # without replacement, the first pick follows the weights


def test_balanced_sampler_has_no_2_24_category_limit():
    n = 2**24 + 10
    weights = torch.zeros(n, dtype=torch.float64)
    weights[[3, n - 1]] = 1.0
    with pytest.raises(RuntimeError):
        torch.multinomial(weights, 1)  # what WeightedRandomSampler would run into
    start = time.perf_counter()
    drawn = set(rarekit.BalancedSampler(weights=weights, num_samples=1000, seed=1))
    assert drawn == {3, n - 1}
    assert time.perf_counter() - start < 30


def test_balanced_sampler_shards_like_distributed_sampler(gen):
    y = random_labels(numpy_rng(gen), n=301)
    for drop_last in (False, True):
        for replicas in (2, 3, 7):
            shards = [list(rarekit.BalancedSampler(y, seed=4, num_replicas=replicas, rank=rank, drop_last=drop_last))
                      for rank in range(replicas)]
            full = list(rarekit.BalancedSampler(y, seed=4))
            assert len({len(shard) for shard in shards}) == 1
            interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
            if drop_last:
                assert interleaved == full[:len(interleaved)] and len(full) - len(interleaved) < replicas
            else:
                assert interleaved[:len(full)] == full and interleaved[len(full):] == full[:len(interleaved) - len(full)]


def test_balanced_sampler_bad_arguments():
    y = [0, 1, 1]
    for kwargs, error, match in [({}, ValueError, "exactly one"), ({"labels": y, "weights": [1.0]}, ValueError, "exactly one"),
                                 ({"labels": y, "rank": 2, "num_replicas": 2}, ValueError, "rank"),
                                 ({"labels": y, "num_replicas": 0}, ValueError, "num_replicas"),
                                 ({"labels": y, "seed": -1}, ValueError, "seed"),
                                 ({"labels": y, "shuffle": 1}, TypeError, "shuffle"),
                                 ({"weights": [0.0, 0.0]}, ValueError, "positive"),
                                 ({"weights": [1.0, -1.0]}, ValueError, "non-negative"),
                                 ({"weights": [[1.0]]}, ValueError, "1-D"),
                                 ({"labels": y, "sampling_strategy": {1: 0, 0: 0}, "replacement": False,
                                   "num_samples": 3}, ValueError, "keeps no sample")]:
        with pytest.raises(error, match=match):
            rarekit.BalancedSampler(**kwargs)
    with pytest.raises(ValueError, match="epoch"):
        rarekit.BalancedSampler(y).set_epoch(-1)


# --- rare tokens ------------------------------------------------------------------------------------

def test_sequence_weights_rules():
    counts = torch.tensor([100, 10, 1, 0, 50])
    padded = torch.tensor([[0, 1, -100], [4, 4, 0], [2, 0, -100], [3, -100, -100], [-100, -100, -100]])
    lists = [[0, 1], [4, 4, 0], [2, 0], [3], []]
    rarest = torch.tensor([1 / 10, 1 / 50, 1.0, 1.0, 0.0])
    mean_inverse = torch.tensor([(1 / 100 + 1 / 10) / 2, (2 / 50 + 1 / 100) / 3, (1 + 1 / 100) / 2, 1.0, 0.0])
    for sequences in (padded, lists):
        torch.testing.assert_close(rarekit.sequence_weights(sequences, counts), rarest)
        torch.testing.assert_close(rarekit.sequence_weights(sequences, counts, rule="mean_inverse"), mean_inverse)
    assert rarekit.sequence_weights(padded, counts).dtype == torch.float32
    torch.testing.assert_close(rarekit.sequence_weights(torch.tensor([[0, 9]]), counts, ignore_index=9),
                               torch.tensor([0.01]))


def test_sequence_weights_bad_input():
    counts = torch.tensor([3, 1])
    with pytest.raises(IndexError, match=r"sequences\[1\] holds token 2"):
        rarekit.sequence_weights([[0], [1, 2]], counts)
    with pytest.raises(ValueError, match="rule"):
        rarekit.sequence_weights([[0]], counts, rule="rarer")
    with pytest.raises(ValueError, match="2-D"):
        rarekit.sequence_weights(torch.tensor([0, 1]), counts)
    with pytest.raises(TypeError, match="sequences"):
        rarekit.sequence_weights("0 1", counts)
    with pytest.raises(ValueError, match="non-negative"):
        rarekit.sequence_weights([[0]], torch.tensor([-1, 2]))


def test_rare_token_exposure_rises_with_sequence_weights(gen):
    vocab, rare_token = 200, 199
    sequences = torch.randint(0, vocab - 1, (5000, 16), generator=gen)
    holders = torch.randperm(5000, generator=gen)[:25]
    sequences[holders, 3] = rare_token
    counts = rarekit.TokenCounter(vocab).update(sequences).counts
    contains_rare = (sequences == rare_token).any(1)

    uniform = 25 / 5000  # the exposure of uniform sampling
    # rarest: a holder weighs 1/25 against ~1/360 (the rarest of 15 common tokens seen ~400 times each),
    # ~13x uniform; mean_inverse dilutes the rare token among 16 tokens: ~1.9x (50,000 draws: sd 0.04x)
    for rule, gain in (("rarest", 5), ("mean_inverse", 1.5)):
        sampler = rarekit.BalancedSampler(weights=rarekit.sequence_weights(sequences, counts, rule=rule),
                                          num_samples=50_000)
        weighted = float(contains_rare[torch.tensor(list(sampler))].float().mean())
        assert weighted > gain * uniform, (rule, weighted)


def test_bucket_labels_dense_and_unique_paths(gen):
    rng = numpy_rng(gen)
    for values in (np.array([0, 3, 4]), np.array([-(2**40), 0, 2**40])):
        y = rng.choice(values, 500)
        buckets = bucket_labels(y)
        assert buckets.labels == sorted(set(y.tolist()))
        assert buckets.counts == [int((y == value).sum()) for value in buckets.labels]
        for label, bucket in zip(buckets.labels, buckets.bucket_of_class.tolist()):
            members = buckets.order[buckets.offsets[bucket]:buckets.offsets[bucket + 1]].numpy()
            assert np.array_equal(members, np.flatnonzero(y == label))


def test_reference_draw_into_refuses_the_outs_the_kernel_refuses(monkeypatch):
    """The pure-PyTorch path raises where the kernel raises instead of converting into a wrong ``out``."""
    from rarekit import _backend
    from rarekit.ops import draw_from_buckets_into

    monkeypatch.setattr(_backend, "native", lambda device: False)
    order, offsets, draws = torch.arange(4), torch.tensor([0, 2, 4]), torch.tensor([1, 1])
    with pytest.raises(TypeError, match="int64"):
        draw_from_buckets_into(order, offsets, draws, 0, True, torch.empty(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous 1-D"):
        draw_from_buckets_into(order, offsets, draws, 0, True, torch.empty(2, 2, dtype=torch.int64)[:, 0])
    out = torch.empty(2, dtype=torch.int64)
    draw_from_buckets_into(order, offsets, draws, 0, True, out)
    assert out[0] in (0, 1) and out[1] in (2, 3)
