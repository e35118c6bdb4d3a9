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
