"""Issue 20's regressions in resampling: each test compares with imbalanced-learn, torch's samplers or an
independent computation."""
import numpy as np
import pytest
import torch

import rarekit

imblearn_over = pytest.importorskip("imblearn.over_sampling")
sparse = pytest.importorskip("scipy.sparse")
pd = pytest.importorskip("pandas")


# --- item 4: the smoothed bootstrap refuses NaN and infinity in X, as imbalanced-learn does ---------

def features_with(value, row: int) -> np.ndarray:
    X = np.random.default_rng(row).normal(size=(17, 3))
    X[row, 1] = value
    return X


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 12])  # in the majority class (not resampled), in a minority class
@pytest.mark.parametrize("shrinkage", [1.0, 0.0, {1: 0.5, 2: 2.0}])
def test_shrinkage_refuses_a_non_finite_X_as_imblearn(value, row, shrinkage):
    y = np.array([0] * 10 + [1] * 3 + [2] * 4)
    X = features_with(value, row)
    with pytest.raises(ValueError):
        imblearn_over.RandomOverSampler(shrinkage=shrinkage, random_state=0).fit_resample(X, y)
    inputs = [X, sparse.csr_matrix(X), sparse.csc_matrix(X), pd.DataFrame(X), X.tolist(), torch.from_numpy(X),
              torch.from_numpy(X).float()]
    for X_in in inputs:
        with pytest.raises(ValueError, match="shrinkage needs X of finite numerical data"):
            rarekit.RandomOverSampler(shrinkage=shrinkage, random_state=0).fit_resample(X_in, y)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_without_shrinkage_non_finite_rows_are_copied_as_imblearn(value):
    """Without shrinkage both copy rows as they are: the NaN reaches exactly the copies of its row."""
    y = np.array([0] * 10 + [1] * 3 + [2] * 4)
    X = features_with(value, 12)
    ours = rarekit.RandomOverSampler(random_state=0)
    X_res, y_res = ours.fit_resample(X, y)
    X_theirs, y_theirs = imblearn_over.RandomOverSampler(random_state=0).fit_resample(X, y)
    assert X_res.shape == X_theirs.shape and np.array_equal(np.sort(y_res), np.sort(y_theirs))
    np.testing.assert_array_equal(X_res, X[ours.sample_indices_])  # NaN compares equal here
    assert np.array_equal(~np.isfinite(X_res).all(1), ours.sample_indices_ == 12)


# --- item 18: BalancedSampler's epoch is the dataset's length and advances by itself -------------

def imbalanced_labels(n=2000, minority=0.1, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < minority).astype(np.int64)


@pytest.mark.parametrize("replacement", [True, False])
def test_epoch_is_the_datasets_length_as_torchs_samplers(replacement):
    y = imbalanced_labels()
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(y))
    sampler = rarekit.BalancedSampler(y, replacement=replacement)
    assert len(sampler) == len(torch.utils.data.RandomSampler(dataset)) == len(y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler)
    assert len(loader) == len(torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True))
    assert sum(len(batch) for (batch,) in loader) == len(y)
    weights = torch.rand(len(y), dtype=torch.float64)
    assert len(rarekit.BalancedSampler(weights=weights)) == len(list(rarekit.BalancedSampler(weights=weights))) \
        == len(y)  # as WeightedRandomSampler(weights, num_samples=len(weights))
    resample = rarekit.BalancedSampler(y, replacement=replacement, num_samples="resample")
    expected = 2 * np.bincount(y).max() if replacement else 2 * np.bincount(y).min()  # imblearn's resample size
    assert len(resample) == len(list(resample)) == expected


@pytest.mark.parametrize("shuffle", [True, False])
def test_an_epoch_of_the_datasets_length_is_balanced(shuffle):
    """Fewer draws than the resample: a uniform subset of it, balanced in expectation (with shuffle=False
    too, where the head of imbalanced-learn's order would be the original, imbalanced data)."""
    y = imbalanced_labels()
    sampler = rarekit.BalancedSampler(y, shuffle=shuffle, seed=3, num_samples=len(y))  # the default
    minority_share = [y[list(sampler)].mean() for _ in range(20)]
    # each epoch: 2000 draws from a resample of 2 x 1800 rows, half of each class
    assert abs(np.mean(minority_share) - 0.5) < 0.01 and max(abs(np.array(minority_share) - 0.5)) < 0.06
    if not shuffle:  # in the resample's order: original rows ascending, then added minority rows
        stream = np.array(list(sampler))
        descents = np.flatnonzero(np.diff(stream) <= 0)
        added = stream[descents[0] + 1:] if len(descents) else stream[:0]
        assert len(added) > 500 and np.all(y[added] == 1)


def test_each_iteration_draws_anew_like_random_sampler():
    y = imbalanced_labels(n=500)
    dataset = torch.utils.data.TensorDataset(torch.arange(len(y)))
    sampler = rarekit.BalancedSampler(y, seed=5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=50, sampler=sampler)
    passes = [torch.cat([batch for (batch,) in loader]).tolist() for _ in range(3)]
    assert passes[0] != passes[1] != passes[2]  # as a DataLoader(shuffle=True) reshuffles each pass
    for epoch, seen in enumerate(passes):  # the same streams as set_epoch(0), (1), (2): reproducible
        pinned = rarekit.BalancedSampler(y, seed=5)
        pinned.set_epoch(epoch)
        assert list(pinned) == seen


def test_set_epoch_pins_the_epoch_as_distributed_sampler():
    """An explicit set_epoch, and num_replicas > 1, behave as DistributedSampler: the epoch changes only
    by set_epoch."""
    y = imbalanced_labels(n=500)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(y))
    for num_replicas, rank in ((1, 0), (2, 1)):
        reference = torch.utils.data.DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, seed=5)
        ours = rarekit.BalancedSampler(y, num_replicas=num_replicas, rank=rank, seed=5)
        if num_replicas == 1:
            ours.set_epoch(0)
        for sampler in (reference, ours):
            first, again = list(sampler), list(sampler)
            sampler.set_epoch(1)
            assert first == again and list(sampler) != first and list(sampler) == list(sampler)
        assert len(ours) == len(reference)


def test_num_samples_forms():
    y = imbalanced_labels(n=100)
    with pytest.raises(ValueError, match="num_samples"):
        rarekit.BalancedSampler(y, num_samples="all")
    with pytest.raises(ValueError, match="num_samples='resample' needs labels"):
        rarekit.BalancedSampler(weights=torch.ones(10), num_samples="resample")
    assert len(rarekit.BalancedSampler(y, num_samples=7)) == len(list(rarekit.BalancedSampler(y, num_samples=7))) == 7


# --- item 14: a sampling_strategy too large for memory or int64 is a clear ValueError ------------

@pytest.mark.parametrize("requested", [10**13, 2**62, 2**63 + 5, 10**30])
def test_huge_sampling_strategy_is_refused_before_allocating(requested):
    y = np.array([0] * 10 + [1] * 3)
    strategy = {0: 10, 1: requested}
    calls = [lambda: rarekit.oversample_indices(y, strategy, seed=0),
             lambda: rarekit.oversample_indices(torch.from_numpy(y), strategy, seed=0),
             lambda: rarekit.BalancedSampler(y, sampling_strategy=strategy)]
    calls += [lambda X=X: rarekit.RandomOverSampler(sampling_strategy=strategy).fit_resample(X, y)
              for X in (np.zeros((13, 2)), torch.zeros(13, 2), pd.DataFrame(np.zeros((13, 2))),
                        sparse.csr_matrix(np.eye(13, 2)), ["a text"] * 13)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"sampling_strategy asks for {requested:,} samples of class 1") as error:
            call()
        assert "alloc" not in str(error.value) and "frame #" not in str(error.value)


def test_large_sampling_strategy_that_fits_still_resamples():
    y = np.array([0] * 10 + [1] * 3)
    indices = rarekit.oversample_indices(y, {0: 10, 1: 3_000_000}, seed=0)
    assert len(indices) == 3_000_010 and np.bincount(y[indices.numpy()]).tolist() == [10, 3_000_000]


def test_huge_num_samples_is_refused():
    with pytest.raises(ValueError, match=r"num_samples=1,000,000,000,000 needs"):
        rarekit.BalancedSampler([0, 1, 1], num_samples=10**12)
    with pytest.raises(ValueError, match="num_samples="):
        rarekit.BalancedSampler(weights=torch.ones(3), num_samples=2**70)
