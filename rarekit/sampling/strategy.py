"""``sampling_strategy``, every form imbalanced-learn accepts, validated and resolved in one place
(:func:`resolve_sampling_strategy`; :func:`check_sampling_strategy` is imbalanced-learn's function of
that name), and the label encoding the resamplers share (:func:`encode_labels`).

=================================  ============================  ============================  ==================
form                               ``kind="over"``               ``kind="under"``              ``kind="clean"``
=================================  ============================  ============================  ==================
``"auto"``                         ``"not majority"``            ``"not minority"``            as ``"under"``
``"minority"``                     the minority class            ValueError                    ValueError
``"majority"``                     ValueError                    the majority class            as ``"under"``
``"not minority"``, ...            up to the majority count      down to the minority count    as ``"under"``
float ``α`` in (0, 1], binary y    ``N_min = α N_maj`` after     ``N_maj = N_min / α`` after   ValueError
dict ``{class: count}``            counts ≥ the original         counts ≤ the original         ValueError
list ``[class, ...]``              ValueError                    ValueError                    the minority count
callable ``y, **kw -> dict``       as the dict                   as the dict                   ValueError
=================================  ============================  ============================  ==================

``"clean"`` is imbalanced-learn's ``"clean-sampling"`` (cleaning methods such as Tomek links), for
:func:`check_sampling_strategy`; rarekit's samplers over- or under-sample.

Ties go to the smallest class: the majority is the first class (in sorted order) of largest count,
the minority the first of smallest count, as in imbalanced-learn.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from rarekit.counting import as_ids, is_integer, is_real_number

KINDS = ("over", "under", "clean")
# imbalanced-learn's sampling_type -> kind; "ensemble" and "bypass" take sampling_strategy as it is
SAMPLING_TYPES = {"over-sampling": "over", "under-sampling": "under", "clean-sampling": "clean", "ensemble": None,
                  "bypass": None}
STRING_FORMS = ("auto", "minority", "majority", "not minority", "not majority", "all")


class EncodedLabels(NamedTuple):
    """Labels as a 1-D integer tensor: the integer labels themselves (``classes`` is None), or, for
    labels of other types (strings, objects, integral floats), indices into the sorted ``classes``."""
    codes: torch.Tensor
    classes: np.ndarray | None


def encode_labels(y, name: str = "y") -> EncodedLabels:
    """Integer labels (tensors of any integer dtype, on any device; numpy arrays, lists) stay as they are,
    bool labels become uint8; any other labels (strings, objects, integral floats, uint64) are encoded
    on the host with one ``numpy.unique``. Raises TypeError or ValueError naming ``name``."""
    if isinstance(y, torch.Tensor):
        if y.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one label per sample), got shape {tuple(y.shape)}")
        return EncodedLabels(as_ids(y.to(torch.uint8) if y.dtype == torch.bool else y, name), None)
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {labels.shape}")
    if labels.dtype.kind == "b" or (labels.dtype.kind in "iu" and labels.dtype != np.uint64):
        if labels.dtype.kind == "b":
            labels = labels.astype(np.uint8)
        return EncodedLabels(as_ids(torch.from_numpy(np.require(labels, requirements=["C", "W"])), name), None)
    if labels.dtype.kind in "fc":
        if labels.dtype.kind == "c" or not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{name} holds continuous values, not class labels (e.g. {labels[:5].tolist()})")
    try:
        classes, codes = np.unique(labels, return_inverse=True)
    except TypeError as error:
        raise TypeError(f"{name} mixes label types that cannot be sorted together: {error}") from error
    return EncodedLabels(torch.from_numpy(codes.reshape(-1).astype(np.int64)), classes)


def strategy_input(y):
    """What a callable ``sampling_strategy`` receives: tensors and numpy arrays as given, anything else
    (lists, pandas Series) as a numpy array, as imbalanced-learn passes it."""
    return y if isinstance(y, (torch.Tensor, np.ndarray)) else np.asarray(y)


def resolve_sampling_strategy(strategy, class_counts: Mapping, kind: str, *, y=None,
                              strategy_kwargs: Mapping | None = None) -> dict:
    """imbalanced-learn's ``sampling_strategy_``: ``{class: n}`` over the targeted classes, in sorted
    class order, where ``n`` is the number of samples to generate (``kind="over"``) or to keep
    (``kind="under"`` and ``"clean"``).

    Args:
        strategy: a form of the table above.
        class_counts: ``{class: count}`` of every class present, in sorted class order.
        kind: ``"over"``, ``"under"`` or ``"clean"``.
        y: the labels, passed to a callable ``strategy`` (see :func:`strategy_input`).
        strategy_kwargs: keyword arguments of a callable ``strategy``: ``strategy(y, **strategy_kwargs)``.

    Raises ValueError, as imbalanced-learn does, for an invalid form or value; the message names it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if len(class_counts) < 2:
        raise ValueError(f"y needs more than 1 class to resample, got {len(class_counts)}: {list(class_counts)}")
    counts = {label: int(count) for label, count in class_counts.items()}
    majority = max(counts, key=counts.__getitem__)
    minority = min(counts, key=counts.__getitem__)
    n_majority, n_minority = counts[majority], counts[minority]
    over = kind == "over"

    if isinstance(strategy, str):
        if strategy not in STRING_FORMS:
            raise ValueError(f"sampling_strategy must be one of {STRING_FORMS} as a string, got {strategy!r}")
        form = ("not majority" if over else "not minority") if strategy == "auto" else strategy
        if form == ("majority" if over else "minority"):
            raise ValueError(f"sampling_strategy={strategy!r} cannot be used with {kind}-sampling")
        excluded = {"minority": set(counts) - {minority}, "majority": set(counts) - {majority},
                    "not minority": {minority}, "not majority": {majority}, "all": set()}[form]
        return {label: n_majority - count if over else n_minority
                for label, count in counts.items() if label not in excluded}

    if isinstance(strategy, list):
        if kind != "clean":
            raise ValueError(f"sampling_strategy can be a list of classes only for clean-sampling, not {kind}-sampling; "
                             f"got {strategy!r}")
        _check_present(strategy, counts)
        return {label: n_minority for label in counts if label in strategy}
    if kind == "clean" and not isinstance(strategy, str):
        raise ValueError(f"sampling_strategy for clean-sampling is a string or a list of classes, got "
                         f"{type(strategy).__name__} {strategy!r}")

    if is_real_number(strategy):
        if not 0 < strategy <= 1:
            raise ValueError(f"sampling_strategy as a float must be in (0, 1], got {strategy!r}")
        if len(counts) != 2:
            raise ValueError(f"sampling_strategy can be a float only for binary labels; y has {len(counts)} "
                             "classes (use a dict)")
        if over:
            targets = {label: int(n_majority * strategy - count) for label, count in counts.items()
                       if label != majority}
            if any(n <= 0 for n in targets.values()):
                raise ValueError(f"sampling_strategy={strategy!r} would remove samples from the minority class "
                                 f"({n_minority} of {n_majority}) while over-sampling; increase the ratio")
        else:
            targets = {label: int(n_minority / strategy) for label in counts if label != minority}
            if any(n > counts[label] for label, n in targets.items()):
                raise ValueError(f"sampling_strategy={strategy!r} would add samples to the majority class "
                                 f"({n_majority}, minority {n_minority}) while under-sampling; increase the ratio")
        return targets

    if callable(strategy) and not isinstance(strategy, Mapping):
        requested = strategy(y, **(strategy_kwargs or {}))
        if not isinstance(requested, Mapping):
            raise ValueError(f"a callable sampling_strategy must return a dict {{class: count}}, got "
                             f"{type(requested).__name__}")
        return _resolve_counts(requested, counts, over)
    if isinstance(strategy, Mapping):
        return _resolve_counts(strategy, counts, over)
    raise ValueError(f"sampling_strategy must be a string, a float, a dict or a callable, got "
                     f"{type(strategy).__name__} {strategy!r}")


def _resolve_counts(requested: Mapping, counts: dict, over: bool) -> dict:
    """The dict form: requested counts after resampling, checked against the original ones."""
    _check_present(requested, counts)
    targets = {}
    for label, count in counts.items():
        if label not in requested:
            continue
        wanted = requested[label]
        if not is_integer(wanted):
            raise ValueError(f"sampling_strategy[{label!r}] must be an integer count, got {wanted!r}")
        if wanted < 0:
            raise ValueError(f"sampling_strategy[{label!r}] must be >= 0, got {wanted}")
        if over and wanted < count:
            raise ValueError(f"over-sampling keeps every sample: sampling_strategy[{label!r}] = {wanted} is below "
                             f"the {count} samples of the class")
        if not over and wanted > count:
            raise ValueError(f"under-sampling cannot add samples: sampling_strategy[{label!r}] = {wanted} exceeds "
                             f"the {count} samples of the class")
        targets[label] = int(wanted) - count if over else int(wanted)
    return targets


def _check_present(labels, counts: dict) -> None:
    absent = [label for label in labels if label not in counts]
    if absent:
        raise ValueError(f"sampling_strategy names classes not present in y: {absent}")


def class_counts(y, name: str = "y") -> dict:
    """``{class: count}`` of the labels ``y`` (any kind :func:`encode_labels` takes), in sorted class order."""
    codes, classes = encode_labels(y, name)
    values, counts = torch.unique(codes.long(), return_counts=True)
    labels = values.tolist() if classes is None else classes[values.cpu().numpy()].tolist()
    return dict(zip(labels, counts.tolist()))


def check_sampling_strategy(sampling_strategy, y, sampling_type: str, **kwargs) -> dict:
    """imbalanced-learn's ``imblearn.utils.check_sampling_strategy`` on :func:`resolve_sampling_strategy`:
    ``sampling_type`` is one of :data:`SAMPLING_TYPES`, ``kwargs`` go to a callable ``sampling_strategy``.
    ``"ensemble"`` and ``"bypass"`` return ``sampling_strategy`` itself (after the class count check)."""
    if sampling_type not in SAMPLING_TYPES:
        raise ValueError(f"sampling_type must be one of {tuple(SAMPLING_TYPES)}, got {sampling_type!r}")
    counts = class_counts(y)
    if len(counts) < 2:
        raise ValueError(f"y needs more than 1 class to resample, got {len(counts)}: {list(counts)}")
    kind = SAMPLING_TYPES[sampling_type]
    if kind is None:
        return sampling_strategy
    return resolve_sampling_strategy(sampling_strategy, counts, kind, y=strategy_input(y), strategy_kwargs=kwargs)
