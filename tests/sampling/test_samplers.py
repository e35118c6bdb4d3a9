"""rarekit.RandomOverSampler / RandomUnderSampler as imbalanced-learn estimators: scikit-learn's protocol and
imbalanced-learn's estimator checks, pipelines and grid search, target types, callable strategies with
keyword arguments, and class counts equal to imbalanced-learn's on generated inputs."""
import collections
import warnings

import numpy as np
import pytest
import torch

import rarekit
from rarekit.sampling.strategy import check_sampling_strategy

imblearn_over = pytest.importorskip("imblearn.over_sampling")
imblearn_under = pytest.importorskip("imblearn.under_sampling")
from imblearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from imblearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402

SAMPLERS = [("RandomOverSampler", imblearn_over), ("RandomUnderSampler", imblearn_under)]


def both(name, **params):
    """rarekit's sampler and imbalanced-learn's, with the same parameters."""
    module = dict(SAMPLERS)[name]
    return getattr(rarekit, name)(**params), getattr(module, name)(**params)


def class_counts(labels) -> collections.Counter:
    return collections.Counter(np.asarray(labels).tolist())


def imbalanced_data(rng, n=300, classes=3, features=4):
    weights = np.geomspace(1, 0.1, classes)
    y = rng.choice(classes, n, p=weights / weights.sum())
    y[:classes] = np.arange(classes)
    X = rng.normal(size=(n, features)) + y[:, None]
    return X, y


CHECKED = [rarekit.RandomOverSampler(random_state=42), rarekit.RandomOverSampler(random_state=42, shrinkage=0.5),
           rarekit.RandomUnderSampler(random_state=42), rarekit.RandomUnderSampler(random_state=42, replacement=True)]


def expected_failures(estimator) -> dict:
    if getattr(estimator, "shrinkage", None) is not None:  # as imbalanced-learn's RandomOverSampler(shrinkage=0.5)
        return {"check_samplers_string": "the smoothed bootstrap adds noise: it refuses string X, as imblearn's does",
                "check_samplers_nan": "the smoothed bootstrap refuses NaN in X, as imblearn's does (its tags allow NaN "
                                      "too)"}
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failures)
def test_imblearn_estimator_checks(estimator, check):
    """The checks imbalanced-learn runs on its own samplers (imblearn/tests/test_common.py: scikit-learn's
    API checks and its sampler checks, with random_state=42 as there). None pins imbalanced-learn's random
    draws, so none is left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.parametrize("estimator", CHECKED, ids=repr)
def test_imblearn_param_validation_and_column_name_checks(estimator):
    """The two other per-estimator checks of imblearn/tests/test_common.py."""
    from imblearn.utils.estimator_checks import check_dataframe_column_names_consistency, check_param_validation
    check_param_validation(type(estimator).__name__, clone(estimator))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_dataframe_column_names_consistency(type(estimator).__name__, clone(estimator))
    assert not [warning for warning in record if "was fitted without feature names" in str(warning.message)]


@pytest.mark.parametrize("name", [name for name, _ in SAMPLERS])
def test_params_clone_and_validation(name):
    ours, theirs = both(name, sampling_strategy="not minority", random_state=3)
    assert set(ours.get_params()) == set(theirs.get_params())
    assert ours.get_params() == theirs.get_params()
    copy = clone(ours)
    assert copy is not ours and copy.get_params() == ours.get_params() and not hasattr(copy, "sampling_strategy_")
    assert ours.set_params(sampling_strategy="all") is ours and ours.sampling_strategy == "all"
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        ours.set_params(bogus=1)
    X, y = imbalanced_data(np.random.default_rng(0))
    for bad in [{"sampling_strategy": 2.0}, {"sampling_strategy": [0]}, {"random_state": "three"},
                {"sampling_strategy": "majority" if name == "RandomOverSampler" else "minority"}]:
        for sampler in both(name, **bad):
            with pytest.raises(InvalidParameterError):
                sampler.fit_resample(X, y)
    for generator in (np.random.default_rng(1), torch.Generator().manual_seed(1)):  # rarekit's extra seeds
        getattr(rarekit, name)(random_state=generator).fit_resample(X, y)


@pytest.mark.parametrize("name", [name for name, _ in SAMPLERS])
def test_fit_sets_the_strategy_without_resampling(name):
    X, y = imbalanced_data(np.random.default_rng(1))
    ours, theirs = both(name, sampling_strategy="all")
    assert ours.fit(X, y) is ours and not hasattr(ours, "sample_indices_")
    assert ours.sampling_strategy_ == theirs.fit(X, y).sampling_strategy_
    assert ours.n_features_in_ == theirs.n_features_in_ == 4


def test_feature_names_and_tags():
    pd = pytest.importorskip("pandas")
    X, y = imbalanced_data(np.random.default_rng(2))
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    for name, _ in SAMPLERS:
        ours, theirs = both(name, random_state=0)
        ours.fit_resample(frame, y)
        theirs.fit_resample(frame, y)
        assert list(ours.get_feature_names_out()) == list(theirs.get_feature_names_out()) == ["a", "b", "c", "d"]
        assert list(ours.feature_names_in_) == list(theirs.feature_names_in_)
        ours_tags, their_tags = ours.__sklearn_tags__(), theirs.__sklearn_tags__()
        assert ours_tags.estimator_type == their_tags.estimator_type == "sampler"
        assert ours_tags.input_tags == their_tags.input_tags and ours_tags.sampler_tags == their_tags.sampler_tags


def test_grid_search_over_strategy_and_shrinkage_in_a_pipeline():
    rng = np.random.default_rng(3)
    X, y = imbalanced_data(rng, n=400, classes=2)
    grids = {"RandomOverSampler": {"sampler__sampling_strategy": [0.5, "minority"], "sampler__shrinkage": [None, 1.5]},
             "RandomUnderSampler": {"sampler__sampling_strategy": [0.5, "majority"],
                                    "sampler__replacement": [False, True]}}
    for name, grid in grids.items():
        results = []
        for sampler in both(name, random_state=0):
            pipeline = Pipeline([("sampler", sampler), ("model", LogisticRegression())])
            search = GridSearchCV(pipeline, grid, cv=StratifiedKFold(3), scoring="balanced_accuracy").fit(X, y)
            results.append(search)
        ours, theirs = results
        assert isinstance(ours.best_estimator_.steps[0][1], getattr(rarekit, name))
        assert len(ours.cv_results_["params"]) == len(theirs.cv_results_["params"]) == len(ParameterGrid(grid))
        # the same balanced accuracy within what one draw of the resample changes
        np.testing.assert_allclose(ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"],
                                   atol=0.08)
        assert ours.best_score_ > 0.7


def test_cross_val_score():
    X, y = imbalanced_data(np.random.default_rng(4), n=300, classes=3)
    for name, _ in SAMPLERS:
        scores = [cross_val_score(make_pipeline(sampler, LogisticRegression()), X, y, cv=StratifiedKFold(3),
                                  scoring="balanced_accuracy") for sampler in both(name, random_state=0)]
        assert len(scores[0]) == 3 and np.all(np.isfinite(scores[0]))
        np.testing.assert_allclose(scores[0].mean(), scores[1].mean(), atol=0.08)


TARGETS = {
    "binary": lambda y: y % 2,
    "multiclass": lambda y: y,
    "one-hot": lambda y: np.eye(3, dtype=np.int64)[y],
    "column": lambda y: y[:, None],
    "tuple": lambda y: tuple(y.tolist()),
    "list of strings": lambda y: [f"class {label}" for label in y.tolist()],
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", [name for name, _ in SAMPLERS])
def test_target_types_come_back_as_imblearn_returns_them(name, target):
    X, labels = imbalanced_data(np.random.default_rng(5), n=120)
    y = TARGETS[target](labels)
    ours, theirs = both(name, random_state=0)
    (X_res, y_res), (X_theirs, y_theirs) = ours.fit_resample(X, y), theirs.fit_resample(X, y)
    assert type(y_res) is type(y_theirs) and np.shape(y_res) == np.shape(y_theirs)
    assert np.asarray(y_res).dtype == np.asarray(y_theirs).dtype
    assert ours.sampling_strategy_ == theirs.sampling_strategy_
    assert np.array_equal(X_res, X[ours.sample_indices_])
    expected = np.asarray(y)[ours.sample_indices_]
    assert np.array_equal(np.asarray(y_res).reshape(expected.shape), expected)


@pytest.mark.parametrize("name", [name for name, _ in SAMPLERS])
def test_pandas_targets_keep_name_dtype_and_columns(name):
    pd = pytest.importorskip("pandas")
    X, labels = imbalanced_data(np.random.default_rng(6), n=120)
    frame = pd.DataFrame(X, columns=list("abcd"), index=np.arange(120) * 7)
    for y in (pd.Series(labels, name="target", dtype="int16", index=frame.index),
              pd.DataFrame({"target": labels.astype(np.int8)}, index=frame.index)):
        ours, theirs = both(name, random_state=0)
        (X_res, y_res), (X_theirs, y_theirs) = ours.fit_resample(frame, y), theirs.fit_resample(frame, y)
        assert type(y_res) is type(y_theirs) and y_res.shape == y_theirs.shape
        if isinstance(y, pd.Series):
            assert y_res.name == y_theirs.name == "target" and y_res.dtype == y_theirs.dtype == np.int16
        else:
            assert list(y_res.columns) == ["target"] and (y_res.dtypes == y_theirs.dtypes).all()
        # imblearn's index: the over-sampler renumbers the rows, the under-sampler keeps their labels
        expected = frame.index[ours.sample_indices_] if name == "RandomUnderSampler" else pd.RangeIndex(len(X_res))
        assert X_res.index.equals(expected) and y_res.index.equals(expected)
        assert type(X_theirs.index) is type(expected) and y_theirs.index.equals(X_theirs.index)
        assert np.array_equal(np.asarray(y_res).ravel(), labels[ours.sample_indices_])


def test_refused_targets_raise_as_imblearn():
    X = np.zeros((6, 1))
    cases = [(np.array([0.5, 1.5, 2.0, 0.1, 3.3, 1.0]), ValueError),  # continuous
             (np.array([[1, 1], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]), ValueError),  # multilabel
             (np.zeros(6, dtype=int), ValueError)]  # one class
    for y, error in cases:
        for name, _ in SAMPLERS:
            for sampler in both(name):
                with pytest.raises(error):
                    sampler.fit_resample(X, y)


def test_callable_strategy_with_keyword_arguments():
    y = np.array([1] * 50 + [2] * 100 + [3] * 25)

    def multiply(labels, multiplier):
        counts = collections.Counter(labels.tolist())
        return {label: int(count * multiplier[label]) for label, count in counts.items()}

    from imblearn.utils import check_sampling_strategy as imblearn_check
    for kind, multiplier in (("over-sampling", {1: 1.5, 2: 1, 3: 3}), ("under-sampling", {1: 0.5, 2: 0.2, 3: 1})):
        ours = check_sampling_strategy(multiply, y, kind, multiplier=multiplier)
        assert ours == imblearn_check(multiply, y, kind, multiplier=multiplier)
    assert ours == {1: 25, 2: 20, 3: 25}
    with pytest.raises(TypeError, match="multiplier"):
        check_sampling_strategy(multiply, y, "over-sampling")
    # in a sampler the keyword arguments are bound beforehand, e.g. with functools.partial
    import functools
    sampler = rarekit.RandomOverSampler(sampling_strategy=functools.partial(multiply, multiplier={1: 2, 2: 1, 3: 4}))
    _, y_res = sampler.fit_resample(np.zeros((len(y), 1)), y)
    assert class_counts(y_res) == {1: 100, 2: 100, 3: 100}


def test_missing_imbalanced_learn_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "imblearn.over_sampling.base", None)
    monkeypatch.delitem(sys.modules, "rarekit.sampling.samplers")
    with pytest.raises(ImportError, match=r"rarekit\[sampling\]"):
        importlib.import_module("rarekit.sampling.samplers")
    monkeypatch.undo()
    importlib.import_module("rarekit.sampling.samplers")


# --- generated inputs: class counts equal imbalanced-learn's -------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def labels_and_strategy(draw):
    """Labels of 2-6 classes of 1-40 samples each (integer or string labels) and a sampling_strategy of
    any form: a string, a float (binary labels), a dict or a callable."""
    sizes = draw(st.lists(st.integers(1, 40), min_size=2, max_size=6))
    values = draw(st.sampled_from(["int", "str"]))
    y = np.repeat(np.arange(len(sizes)) * 3 - 2, sizes)
    if values == "str":
        y = np.array([f"c{label}" for label in y])
    y = y[draw(st.permutations(range(len(y))))]
    name = draw(st.sampled_from([name for name, _ in SAMPLERS]))
    counts = class_counts(y)
    classes = sorted(counts)
    form = draw(st.sampled_from(["string", "float", "dict", "callable"]))
    if form == "string":
        strategy = draw(st.sampled_from(["auto", "all", "not minority", "not majority",
                                         "minority" if name == "RandomOverSampler" else "majority"]))
    elif form == "float":
        strategy = draw(st.floats(0.05, 1.0))
    else:
        chosen = draw(st.lists(st.sampled_from(classes), min_size=1, unique=True))
        if name == "RandomOverSampler":
            requested = {c: counts[c] + draw(st.integers(0, 50)) for c in chosen}
        else:
            requested = {c: draw(st.integers(0, counts[c])) for c in chosen}
        strategy = requested if form == "dict" else (lambda labels, requested=requested: requested)
    return name, y, strategy, draw(st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels_and_strategy())
def test_class_counts_equal_imblearns(case):
    name, y, strategy, replacement = case
    params = {"sampling_strategy": strategy, "random_state": 0}
    if name == "RandomUnderSampler":
        params["replacement"] = replacement
    ours, theirs = both(name, **params)
    X = np.arange(len(y))[:, None]
    try:
        _, y_theirs = theirs.fit_resample(X, y)
    except ValueError:
        with pytest.raises(ValueError):
            ours.fit_resample(X, y)
        return
    X_res, y_res = ours.fit_resample(X, y)
    assert class_counts(y_res) == class_counts(y_theirs)
    assert ours.sampling_strategy_ == theirs.sampling_strategy_
    assert np.array_equal(X_res[:, 0], ours.sample_indices_) and np.array_equal(y[ours.sample_indices_], y_res)
