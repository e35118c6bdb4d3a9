"""imbalanced-learn's own tests, run against rarekit: the installed test modules of RandomOverSampler and
RandomUnderSampler, and the sampling_strategy tests of imblearn/utils/tests/test_validation.py.

Nothing is copied: each module is imported from the installed imbalanced-learn and its names are bound
to rarekit's at collection — ``RandomOverSampler`` / ``RandomUnderSampler`` to rarekit's classes,
``check_sampling_strategy`` to :func:`rarekit.sampling.strategy.check_sampling_strategy` — and its tests (and
fixtures) are collected here. Exception types are compared, not messages: the modules' ``pytest`` is
bound to a copy whose ``raises`` ignores ``match`` (rarekit words its errors its own way).

Left out, because they pin imbalanced-learn's ``RandomState`` stream — the exact rows that
``numpy.random.RandomState.choice`` draws for ``random_state=0`` (rarekit draws from counter-based
streams of its own kernels; README, "Differences from imbalanced-learn"):

- ``test_ros_fit_resample`` (6 parametrizations): the 4 over-sampled rows of class 0 are rows 1, 3, 1, 3;
- ``test_rus_fit_resample`` (2): the kept rows are rows 1, 3, 8 of class 0 and 6, 7, 0 of class 1, with
  ``replacement=True``;
- ``test_rus_fit_resample_half`` (1): rows 1, 3, 1 and 5, 5, 5, 2, 5, 7, drawn with replacement.

Every other test of the three modules runs (82 - 9 = 73).
"""
import importlib
import types

import pytest

import rarekit
from rarekit.sampling.strategy import check_sampling_strategy

pytest.importorskip("imblearn")

RNG_PINNED = {
    "test_ros_fit_resample": "pins the rows RandomState(0).choice draws for class 0",
    "test_rus_fit_resample": "pins the rows RandomState(0).choice draws with replacement",
    "test_rus_fit_resample_half": "pins the rows RandomState(0).choice draws with replacement",
}
# module -> (prefix of its tests here, which of its tests run)
MODULES = {
    "imblearn.over_sampling.tests.test_random_over_sampler": ("over", lambda name: True),
    "imblearn.under_sampling._prototype_selection.tests.test_random_under_sampler": ("under", lambda name: True),
    "imblearn.utils.tests.test_validation": ("validation", lambda name: "sampling_strategy" in name),
}


def _raises_by_type(expected_exception, *args, match=None, **kwargs):
    """``pytest.raises`` that checks the exception type only."""
    return pytest.raises(expected_exception, *args, **kwargs)


def _bind_to_rarekit(module) -> None:
    """Points the module's sampler and validation names at rarekit's, and its pytest at a copy whose
    ``raises`` compares types only."""
    for name, replacement in (("RandomOverSampler", rarekit.RandomOverSampler),
                              ("RandomUnderSampler", rarekit.RandomUnderSampler),
                              ("check_sampling_strategy", check_sampling_strategy)):
        if hasattr(module, name):
            setattr(module, name, replacement)
    shim = types.ModuleType("pytest")
    shim.__dict__.update(vars(pytest))
    shim.raises = _raises_by_type
    module.pytest = shim


def _collect() -> dict:
    """The tests and fixtures of the modules, bound to rarekit, each test as ``test_<prefix>__<its name>``
    (both sampler modules have a test_multiclass_fit_resample); RNG-pinned tests skipped with their reason."""
    collected = {}
    for module_name, (prefix, wanted) in MODULES.items():
        module = importlib.import_module(module_name)
        _bind_to_rarekit(module)
        for name, value in vars(module).items():
            if name.startswith("test_") and callable(value) and wanted(name):
                if name in RNG_PINNED:
                    value = pytest.mark.skip(reason=f"imbalanced-learn's RandomState stream: {RNG_PINNED[name]}")(value)
                collected[f"test_{prefix}__{name[5:]}"] = value
            elif hasattr(value, "_fixture_function_marker") or type(value).__name__ == "FixtureFunctionDefinition":
                collected[name] = value
    return collected


globals().update(_collect())
