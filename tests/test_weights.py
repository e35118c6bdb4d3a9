"""rarekit.rare_ids, class_weights and plot_frequencies against independent numpy computations."""
import sys

import numpy as np
import pytest
import torch

import rarekit
from rarekit import weights as weights_module


def random_counts(gen, size=None, zero_share=0.2):
    """Skewed counts (a few large, many small) with about ``zero_share`` unseen ids."""
    size = size or int(torch.randint(2, 300, (1,), generator=gen))
    counts = (torch.rand(size, generator=gen) ** -1.5).long()
    counts[torch.rand(size, generator=gen) < zero_share] = 0
    counts[int(torch.randint(0, size, (1,), generator=gen))] = 1 + int(torch.randint(0, 50, (1,), generator=gen))
    return counts


def numpy_raw_weights(n, scheme, beta=0.999, log_offset=1.02, total=None):
    """The published formulas, on float64 counts ``n`` ≥ 1 (``total`` = N for the log scheme)."""
    n = np.asarray(n, dtype=np.float64)
    return {
        "inverse": lambda: 1 / n,
        "inverse_sqrt": lambda: 1 / np.sqrt(n),
        "effective_number": lambda: (1 - beta) / (1 - beta ** n),
        "median_frequency": lambda: np.median(n) / n,
        "log": lambda: 1 / np.log(log_offset + n / (n.sum() if total is None else total)),
        "uniform": lambda: np.ones_like(n),
    }[scheme]()


# rare_ids

def test_rare_ids_count_bounds(device, gen):
    counts = random_counts(gen)
    low, high = sorted(torch.randint(0, 20, (2,), generator=gen).tolist())
    numpy_counts = counts.numpy()
    assert rarekit.rare_ids(counts.to(device), max_count=high).cpu().tolist() == \
        np.flatnonzero(numpy_counts <= high).tolist()
    rare = rarekit.rare_ids(counts.to(device), min_count=low, max_count=high)
    assert rare.device == device and rare.dtype == torch.int64
    assert rare.cpu().tolist() == np.flatnonzero((numpy_counts >= low) & (numpy_counts <= high)).tolist()
    assert rarekit.rare_ids(counts, min_count=1).tolist() == np.flatnonzero(numpy_counts).tolist()


def test_rare_ids_quantile(gen):
    counts = random_counts(gen).numpy()
    q = float(torch.rand((), generator=gen))
    seen = np.flatnonzero(counts >= 1)
    threshold = np.quantile(counts[seen], q, method="lower")
    assert rarekit.rare_ids(counts, min_count=1, quantile=q).tolist() == seen[counts[seen] <= threshold].tolist()
    assert rarekit.rare_ids(counts, quantile=1.0).tolist() == list(range(counts.size))
    assert rarekit.rare_ids(counts, quantile=0.0).tolist() == np.flatnonzero(counts == counts.min()).tolist()


def test_rare_ids_bottom_k_breaks_ties_by_id(gen):
    counts = torch.randint(0, 4, (200,), generator=gen)  # many ties
    k = int(torch.randint(0, 200, (1,), generator=gen))
    ids = np.arange(200)
    rarest_first = np.lexsort((ids, counts.numpy()))
    assert rarekit.rare_ids(counts, bottom_k=k).tolist() == sorted(rarest_first[:k].tolist())
    seen = ids[counts.numpy() > 0]
    expected = seen[np.lexsort((seen, counts.numpy()[seen]))][:k]
    assert rarekit.rare_ids(counts, min_count=1, bottom_k=k).tolist() == sorted(expected.tolist())
    assert rarekit.rare_ids(counts, bottom_k=1000).tolist() == ids.tolist()


def test_rare_ids_edge_cases():
    assert rarekit.rare_ids(torch.zeros(0, dtype=torch.int64), max_count=3).tolist() == []
    assert rarekit.rare_ids(torch.zeros(0), quantile=0.5).tolist() == []
    assert rarekit.rare_ids([0, 0, 0], min_count=1, bottom_k=2).tolist() == []
    assert rarekit.rare_ids([7], max_count=7).tolist() == [0]
    assert rarekit.rare_ids(np.array([3.5, 0.5, 2.0]), max_count=2).tolist() == [1, 2]


@pytest.mark.parametrize("kwargs, error, message", [
    ({}, ValueError, "at least one"),
    ({"quantile": 0.1, "bottom_k": 3}, ValueError, "not both"),
    ({"min_count": 5, "max_count": 2}, ValueError, r"min_count \(5\)"),
    ({"max_count": -1}, ValueError, "max_count must be"),
    ({"min_count": float("nan")}, ValueError, "min_count must be"),
    ({"quantile": 1.5}, ValueError, "quantile must be"),
    ({"bottom_k": -1}, ValueError, "bottom_k must be"),
    ({"bottom_k": 2.5}, ValueError, "bottom_k must be"),
])
def test_rare_ids_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        rarekit.rare_ids(torch.tensor([1, 2, 3]), **kwargs)


@pytest.mark.parametrize("counts, error, message", [
    (torch.tensor([1, -2, 3]), ValueError, r"counts\[1\] = -2"),
    (torch.tensor([1.0, float("nan")]), ValueError, r"counts\[1\] = nan"),
    (torch.ones(2, 3), ValueError, r"1-D .* shape \(2, 3\)"),
    (torch.tensor([True, False]), TypeError, "torch.bool"),
    ("many", TypeError, "counts must be"),
])
def test_bad_counts(counts, error, message):
    with pytest.raises(error, match=message):
        rarekit.rare_ids(counts, max_count=1)
    with pytest.raises(error, match=message):
        rarekit.class_weights(counts)


# class_weights

@pytest.mark.parametrize("scheme", weights_module.SCHEMES)
def test_schemes_match_the_formulas(device, gen, scheme):
    counts = random_counts(gen)
    seen = counts.numpy() > 0
    raw = numpy_raw_weights(counts.numpy()[seen], scheme)
    weights = rarekit.class_weights(counts.to(device), scheme, zero_count="zero")
    assert weights.dtype == torch.float32 and weights.device == device
    np.testing.assert_allclose(weights.cpu().numpy()[seen], raw / raw.mean(), rtol=1e-5)
    assert np.all(weights.cpu().numpy()[~seen] == 0)
    assert weights.cpu().numpy()[seen].mean() == pytest.approx(1, rel=1e-5)
    unnormalized = rarekit.class_weights(counts, scheme, normalize=None, zero_count="zero")
    np.testing.assert_allclose(unnormalized.numpy()[seen], raw, rtol=1e-5)
    summed = rarekit.class_weights(counts, scheme, normalize="sum", zero_count="zero")
    np.testing.assert_allclose(summed.numpy()[seen], raw / raw.sum(), rtol=1e-5)


def test_beta_and_power_limits(gen):
    counts = torch.randint(1, 1000, (int(torch.randint(1, 300, (1,), generator=gen)),), generator=gen)
    uniform = np.ones(counts.numel())
    np.testing.assert_allclose(rarekit.class_weights(counts, "effective_number", beta=0.0), uniform, rtol=1e-6)
    inverse = 1 / counts.double().numpy()
    np.testing.assert_allclose(rarekit.class_weights(counts, "effective_number", beta=1 - 1e-9),
                               inverse / inverse.mean(), rtol=1e-4)
    np.testing.assert_allclose(rarekit.class_weights(counts, power=0.0), uniform, rtol=1e-6)
    power = float(torch.rand((), generator=gen)) * 3
    np.testing.assert_allclose(rarekit.class_weights(counts, power=power),
                               inverse ** power / (inverse ** power).mean(), rtol=1e-5)


def test_zero_count_policies(gen):
    counts = random_counts(gen, zero_share=0.3)
    counts[0] = 0
    n = counts.double().numpy()
    seen = n > 0
    raw = numpy_raw_weights(n[seen], "inverse")
    normalized = raw / raw.mean()

    maxed = rarekit.class_weights(counts, zero_count="max").numpy()
    np.testing.assert_allclose(maxed[seen], normalized, rtol=1e-5)
    assert np.all(maxed[~seen] == maxed[seen].max())

    pseudo = rarekit.class_weights(counts, "median_frequency", zero_count="pseudocount").numpy()
    median_raw = np.median(n[seen]) / np.where(seen, n, 1)  # the median of the seen counts only
    np.testing.assert_allclose(pseudo, median_raw / median_raw[seen].mean(), rtol=1e-5)

    with pytest.raises(ValueError, match=r"unseen classes \(count 0\), e.g. ids \[0"):
        rarekit.class_weights(counts, zero_count="error")
    assert rarekit.class_weights(counts[seen], zero_count="error").numel() == int(seen.sum())


@pytest.mark.parametrize("scheme", weights_module.SCHEMES)
@pytest.mark.parametrize("zero_count", ["max", "zero", "pseudocount"])
@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_extreme_counts_never_give_inf_or_nan(scheme, zero_count, normalize):
    counts = torch.tensor([0, 1, 10**15, 3, 0, 2**62])
    for power in (1.0, 40.0):
        weights = rarekit.class_weights(counts, scheme, power=power, normalize=normalize, zero_count=zero_count)
        assert torch.isfinite(weights).all() and (weights >= 0).all()


def test_overflow_without_normalization_raises():
    with pytest.raises(ValueError, match="overflow float32"):
        rarekit.class_weights(torch.tensor([1, 10**15, 10**15]), "median_frequency", power=10.0, normalize=None)


def test_clip(gen):
    counts = random_counts(gen, zero_share=0)
    raw = 1 / counts.double().numpy()
    normalized = raw / raw.mean()
    np.testing.assert_allclose(rarekit.class_weights(counts, clip=2.0), np.minimum(normalized, 2.0), rtol=1e-5)
    np.testing.assert_allclose(rarekit.class_weights(counts, clip=(0.5, 3.0)), np.clip(normalized, 0.5, 3.0),
                               rtol=1e-5)
    np.testing.assert_allclose(rarekit.class_weights(counts, clip=(0.5, None)), np.maximum(normalized, 0.5),
                               rtol=1e-5)
    np.testing.assert_allclose(rarekit.class_weights(counts, clip=(None, None)), normalized, rtol=1e-5)


def test_one_class_and_list_input():
    assert rarekit.class_weights([42]).tolist() == [1.0]
    weighted = rarekit.class_weights([0.5, 2.0, 0.0], zero_count="zero")  # counts from weighted counting
    np.testing.assert_allclose(weighted, [2 / 1.25, 0.5 / 1.25, 0.0], rtol=1e-6)
    assert rarekit.class_weights(np.array([5, 0], dtype=np.uint16), zero_count="zero").tolist() == [1.0, 0.0]


def test_does_not_mutate_counts(device, gen):
    counts = random_counts(gen).to(device)
    before = counts.clone()
    rarekit.class_weights(counts, "effective_number", zero_count="pseudocount")
    rarekit.rare_ids(counts, quantile=0.3)
    assert torch.equal(counts, before)


@pytest.mark.parametrize("kwargs, message", [
    ({"scheme": "focal"}, "scheme must be one of"),
    ({"normalize": "max"}, "normalize must be one of"),
    ({"zero_count": "ignore"}, "zero_count must be one of"),
    ({"beta": 1.0}, r"beta must be a number in \[0, 1\), got 1.0"),
    ({"beta": -0.5}, "beta must be"),
    ({"beta": float("nan")}, "beta must be"),
    ({"power": -1}, "power must be"),
    ({"power": float("inf")}, "power must be"),
    ({"log_offset": 0.5}, "log_offset must be"),
    ({"clip": (3.0, 1.0)}, "low bound must not exceed"),
    ({"clip": -1.0}, "clip bounds must be"),
    ({"clip": "high"}, "clip must be"),
    ({"clip": (1, 2, 3)}, "clip must be"),
])
def test_class_weights_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rarekit.class_weights(torch.tensor([1, 2, 3]), **kwargs)


def test_all_unseen_counts_raise():
    with pytest.raises(ValueError, match="no seen class"):
        rarekit.class_weights(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="no seen class"):
        rarekit.class_weights(torch.zeros(0, dtype=torch.int64))


# ldam_margins

def test_ldam_margins_are_the_quarter_power_law_scaled_to_max_margin(device, gen):
    counts = random_counts(gen, zero_share=0.0)
    max_margin = 0.1 + float(torch.rand((), generator=gen))
    margins = rarekit.ldam_margins(counts.to(device), max_margin)
    assert margins.dtype == torch.float32 and margins.device == device and margins.shape == counts.shape
    expected = 1 / np.sqrt(np.sqrt(counts.numpy().astype(np.float64)))  # Cao et al.'s reference code
    expected *= max_margin / expected.max()
    np.testing.assert_allclose(margins.cpu().numpy(), expected, rtol=1e-6)
    assert margins.max().item() == pytest.approx(max_margin, rel=1e-7)
    assert rarekit.ldam_margins([10**18, 1])[0].item() == pytest.approx(0.5 * 10 ** -4.5, rel=1e-6)  # no overflow


def test_ldam_margins_give_unseen_classes_the_largest_margin_and_leave_the_others_alone(gen):
    counts = random_counts(gen, zero_share=0.3)
    counts[0] = 0
    seen = counts > 0
    margins = rarekit.ldam_margins(counts, 0.7)
    assert torch.all(margins[~seen] == torch.tensor(0.7, dtype=torch.float32))
    assert torch.equal(margins[seen], rarekit.ldam_margins(counts[seen], 0.7))
    fractional = rarekit.ldam_margins([0.5, 2.0, 0.0])  # weighted counts: the rarest seen count is 0.5
    np.testing.assert_allclose(fractional, [0.5, 0.5 * 0.25 ** 0.25, 0.5], rtol=1e-6)


def test_ldam_margins_do_not_mutate_counts(device, gen):
    counts = random_counts(gen).to(device)
    before = counts.clone()
    rarekit.ldam_margins(counts)
    assert torch.equal(counts, before)


@pytest.mark.parametrize("counts, max_margin, error, message", [
    ([], 0.5, ValueError, "class_counts must hold one count per class, got an empty sequence"),
    ([0, 0, 0], 0.5, ValueError, r"class_counts has no seen class \(all 3 counts are 0\)"),
    ([3, -1], 0.5, ValueError, r"class_counts must be finite and non-negative, got class_counts\[1\] = -1"),
    ([3.0, float("nan")], 0.5, ValueError, r"class_counts\[1\] = nan"),
    ([[1, 2]], 0.5, ValueError, r"class_counts must be 1-D"),
    ("many", 0.5, TypeError, "class_counts must be"),
    ([1, 2], 0.0, ValueError, "max_margin must be a finite number > 0, got 0.0"),
    ([1, 2], -0.5, ValueError, "max_margin must be a finite number > 0, got -0.5"),
    ([1, 2], float("inf"), ValueError, "max_margin must be a finite number > 0, got inf"),
    ([1, 2], float("nan"), ValueError, "max_margin must be a finite number > 0, got nan"),
    ([1, 2], True, TypeError, "max_margin must be a number, got bool"),
    ([1, 2], "0.5", TypeError, "max_margin must be a number, got str"),
])
def test_ldam_margins_bad_arguments(counts, max_margin, error, message):
    with pytest.raises(error, match=message):
        rarekit.ldam_margins(counts, max_margin)


# plot_frequencies

def test_plot_frequencies_draws_ranked_counts_and_rare_threshold(tmp_path, gen):
    image = pytest.importorskip("matplotlib.image")
    counts = random_counts(gen, size=500)
    rare = int(torch.randint(1, 5, (1,), generator=gen))
    figure = rarekit.plot_frequencies(counts, tmp_path / "zipf.png", rare=rare)
    assert image.imread(tmp_path / "zipf.png").ndim == 3
    axes = figure.axes[0]
    frequencies, threshold = axes.lines
    n = counts.numpy()
    expected = np.sort(n[n > 0])[::-1]
    np.testing.assert_array_equal(frequencies.get_ydata(), expected)
    np.testing.assert_array_equal(frequencies.get_xdata(), np.arange(1, expected.size + 1))
    assert list(threshold.get_ydata()) == [rare, rare]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"
    tail = expected[expected <= rare]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert f"({tail.size:,} ids, {tail.sum() / expected.sum():.2%} of tokens)" in legend[1]


def test_plot_frequencies_without_threshold_and_as_svg(tmp_path):
    pytest.importorskip("matplotlib")
    figure = rarekit.plot_frequencies([5, 0, 1, 2], tmp_path / "zipf.svg")
    assert (tmp_path / "zipf.svg").read_text().lstrip().startswith("<?xml")
    assert [list(line.get_ydata()) for line in figure.axes[0].lines] == [[5, 2, 1]]


@pytest.mark.parametrize("counts, rare, message", [
    ([0, 0], None, "no seen id"),
    ([1, 2], 0, "rare must be a positive count threshold"),
    ([1, 2], -3, "rare must be"),
    ([1, 2], "few", "rare must be"),
])
def test_plot_frequencies_bad_arguments(tmp_path, counts, rare, message):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match=message):
        rarekit.plot_frequencies(counts, tmp_path / "zipf.png", rare=rare)
    assert not (tmp_path / "zipf.png").exists()


def test_plot_frequencies_names_the_extra_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install rarekit\[plot\]"):
        rarekit.plot_frequencies([3, 1], tmp_path / "zipf.png")
