"""imbalanced-learn's ``RandomOverSampler`` and ``RandomUnderSampler`` as drop-ins, on rarekit's kernels.

Both are imbalanced-learn samplers (subclasses of its ``BaseOverSampler`` and ``BaseUnderSampler``), so
scikit-learn's estimator protocol — ``get_params`` / ``set_params`` / ``clone``, parameter validation
(``_parameter_constraints``), tags, ``get_feature_names_out`` — and imbalanced-learn's pipelines work
as for imbalanced-learn's own. ``fit_resample`` takes imbalanced-learn's steps (target checks,
``sampling_strategy_``, the output in the input's form); the labels are bucketed and the indices drawn
by the index kernels (:mod:`rarekit.sampling`), and each array is gathered by one multi-threaded
``rarekit::gather_rows`` call, byte for byte, without a dtype conversion.

Beyond imbalanced-learn: ``X`` and ``y`` may be torch tensors (gathered on their device; ``X`` of any
trailing shape), ``X`` a 1-D list (e.g. texts) or a pandas Series, ``random_state`` a numpy Generator or
a ``torch.Generator``. The README's "Differences from imbalanced-learn" lists what else differs.
Needs the ``rarekit[sampling]`` extra (imbalanced-learn, scikit-learn).
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping
from numbers import Real
from typing import NamedTuple

import numpy as np
import torch

from rarekit import _backend, ops
from rarekit.counting import is_real_number
from rarekit.sampling.indices import (INDEX_BYTES, LabelBuckets, bucket_labels, check_resample_size, resample,
                                     resample_runs, seed_from_random_state)
from rarekit.sampling.strategy import resolve_sampling_strategy, strategy_input

try:
    from imblearn.over_sampling.base import BaseOverSampler
    from imblearn.under_sampling.base import BaseUnderSampler
    from imblearn.utils import check_target_type
    from scipy import sparse
    from sklearn.preprocessing import label_binarize
    from sklearn.utils import check_array
    from sklearn.utils._param_validation import Interval
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.sparsefuncs import mean_variance_axis
    from sklearn_compat.utils.validation import validate_data
except ImportError as error:
    raise ImportError(f"rarekit.RandomOverSampler and RandomUnderSampler need imbalanced-learn and scikit-learn, "
                      f"which could not be imported ({error}); install them with `pip install rarekit[sampling]`"
                      ) from error

RANDOM_STATE_CONSTRAINT = ["random_state", np.random.Generator, torch.Generator]
# numpy dtype kinds whose equal labels have equal bytes (bool, integers, strings): these are written, not gathered
WRITTEN_LABEL_KINDS = "biuUS"


# --- data of every kind ---------------------------------------------------------------------------

def _pandas_type(data) -> str | None:
    """"DataFrame" or "Series" for pandas data, else None (pandas is not imported for the question)."""
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        for name in ("DataFrame", "Series"):
            if isinstance(data, getattr(pandas, name)):
                return name
    return None


def readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)`` for an array that is only read (pandas and sklearn hand out read-only
    arrays, of which torch warns)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def gather_array(array: np.ndarray, rows: torch.Tensor) -> np.ndarray:
    """``array[rows]`` along the first axis by ``rarekit::gather_rows``: rows are copied as bytes through a
    uint8 view, so every fixed-size dtype keeps its dtype. Object arrays and arrays whose rows are not
    contiguous go through ``numpy.take``."""
    if array.dtype.hasobject or not array.flags.c_contiguous or array.ndim == 0:
        return array.take(rows.cpu().numpy(), axis=0)
    gathered = ops.gather_rows(byte_rows(array), rows.cpu()).numpy()
    return gathered.view(array.dtype).reshape((len(rows),) + array.shape[1:])


def gather_tensor(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` on the tensor's device (``index_select`` where autograd needs the graph). ``rows``
    are the samplers' own draws, within range by construction: on CUDA the gather skips its index check
    (``check=False``), which would wait for the kernel."""
    rows = rows.to(tensor.device)
    if tensor.requires_grad:
        return tensor.index_select(0, rows)
    return ops.gather_rows(tensor, rows, check=False)


def resampled_labels(y, buckets: LabelBuckets, runs: tuple[int, list[int]], indices: torch.Tensor):
    """``y[indices]`` for the indices of :func:`rarekit.sampling.indices.resample`, laid out as ``runs =
    (prefix, lengths)``, written without reading the indices: the first ``prefix`` labels of ``y``, then
    class ``labels[i]``'s label ``lengths[i]`` times (``rarekit::repeat_rows_into``). Labels whose equal
    values can differ in their bytes (floats: -0.0 and 0.0) or that are objects are gathered."""
    if isinstance(y, torch.Tensor):
        if y.is_floating_point() or y.is_complex() or y.dim() != 1:
            return gather_tensor(y, indices)
        rows = y
    else:
        y = np.asarray(y)
        if y.dtype.kind not in WRITTEN_LABEL_KINDS or y.ndim != 1 or not y.flags.c_contiguous:
            return gather_array(y, indices)
        rows = byte_rows(y)
    prefix, lengths = runs
    device = rows.device
    one_of_each_class = buckets.order[buckets.offsets[buckets.bucket_of_class.to(device)]].to(device)
    total = prefix + sum(lengths)
    if isinstance(y, torch.Tensor):
        out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=device)
        _backend.advise_huge_pages(out)
    else:
        labels = np.empty(total, dtype=y.dtype)  # numpy's own, as imbalanced-learn returns it
        out = byte_rows(labels, writable=True)
    out[:prefix].copy_(rows[:prefix])
    # the lengths are the draws' own counts: no CUDA host sync to re-check them (CPU always checks)
    ops.repeat_rows_into(rows.index_select(0, one_of_each_class), torch.tensor(lengths, device=device), out[prefix:],
                         check=False)
    return out if isinstance(y, torch.Tensor) else labels


def row_bytes(data) -> int:
    """The bytes one row of ``data`` takes in the resample: its values for arrays, tensors, sparse
    matrices and pandas data, a reference for the rows of a list."""
    if isinstance(data, torch.Tensor):
        return data.element_size() * math.prod(data.shape[1:])
    if isinstance(data, np.ndarray):
        return data.itemsize * math.prod(data.shape[1:])
    rows = max(data.shape[0] if sparse.issparse(data) else len(data), 1)
    if sparse.issparse(data):
        return -(-sum(part.nbytes for part in (data.data, data.indices) if part is not None) // rows)
    if _pandas_type(data):
        return -(-int(np.sum(data.memory_usage(index=False))) // rows)
    return 8


def byte_rows(array: np.ndarray, writable: bool = False) -> torch.Tensor:
    """The C-contiguous ``array`` as a (rows, bytes per row) uint8 tensor sharing its memory (only read
    unless ``writable``)."""
    row_bytes = array.dtype.itemsize * math.prod(array.shape[1:])
    rows = array.reshape(-1).view(np.uint8).reshape(len(array), row_bytes)
    return torch.from_numpy(rows) if writable else readonly_tensor(rows)


def gather_sparse(matrix, rows: torch.Tensor):
    """``matrix[rows]`` of a scipy sparse matrix or array, of its class and format, as scipy gives it. The
    values and column indices of CSR rows are copied by one multi-threaded ``rarekit::gather_segments_into``
    pass each; other formats are gathered by scipy."""
    positions = rows.cpu()
    if matrix.format != "csr" or matrix.ndim != 2 or len(positions) == 0:
        return matrix[positions.numpy()].asformat(matrix.format)
    indptr = torch.from_numpy(matrix.indptr.astype(np.int64, copy=False))
    starts = ops.gather_rows(indptr[:-1], positions)  # where each chosen row's values begin
    indptr_res = np.empty(len(positions) + 1, dtype=np.int64)  # numpy's own, as below
    out_indptr = torch.from_numpy(indptr_res)
    out_indptr[0] = 0
    torch.cumsum(ops.gather_rows(indptr.diff(), positions), 0, out=out_indptr[1:])
    nnz = int(out_indptr[-1])
    parts = []
    for array in (matrix.data, matrix.indices):
        array = np.ascontiguousarray(array)
        out = np.empty(nnz, dtype=array.dtype)  # numpy's own: scipy copies arrays that are views of others
        ops.gather_segments_into(byte_rows(array), starts, out_indptr, byte_rows(out, writable=True))
        parts.append(out)
    index_dtype = sparse.get_index_dtype((matrix.indptr, matrix.indices), maxval=nnz)  # as scipy's own indexing
    return type(matrix)((parts[0], parts[1].astype(index_dtype, copy=False),
                         indptr_res.astype(index_dtype, copy=False)),
                        shape=(len(positions), matrix.shape[1]), copy=False)


def gather_frame(frame, rows: torch.Tensor, keep_index: bool):
    """The rows of a pandas DataFrame or Series, column by column (:func:`gather_array` for numpy-backed
    columns, ``take`` for extension types), with imbalanced-learn's index: the original labels of the
    rows (``keep_index``, as its under-sampler) or a fresh RangeIndex (as its over-sampler)."""
    import pandas

    positions = rows.cpu().numpy()
    index = frame.index[positions] if keep_index else pandas.RangeIndex(len(positions))

    def column(series):
        values = series.array
        if isinstance(values, pandas.arrays.NumpyExtensionArray):
            return pandas.Series(gather_array(series.to_numpy(), rows), index=index, name=series.name,
                                 dtype=series.dtype, copy=False)
        return pandas.Series(values.take(positions), index=index, name=series.name)

    if _pandas_type(frame) == "Series":
        return column(frame)
    gathered = pandas.concat([column(frame.iloc[:, i]) for i in range(frame.shape[1])], axis=1) \
        if frame.shape[1] else pandas.DataFrame(index=index)
    gathered.columns = frame.columns
    return gathered


def gather_rows(data, rows: torch.Tensor, keep_index: bool):
    """The rows ``rows`` of ``data`` (checked by :meth:`_IndexSampler._check_X`), of the same kind."""
    if isinstance(data, torch.Tensor):
        return gather_tensor(data, rows)
    if isinstance(data, np.ndarray):
        return gather_array(data, rows)
    if sparse.issparse(data):
        return gather_sparse(data, rows)
    if _pandas_type(data):
        return gather_frame(data, rows, keep_index)
    return [data[row] for row in rows.tolist()]


def restore_form(values: np.ndarray, original):
    """``values`` in the form of the input ``original``, as imbalanced-learn's ``ArraysTransformer``
    returns it: a list as a list, a DataFrame (from a dense or a sparse matrix) with its columns and
    dtypes, a Series with its name and dtype, anything else (a tuple, a column vector) as the array."""
    kind = _pandas_type(original)
    if isinstance(original, list):
        return values.tolist()
    if kind == "DataFrame":
        import pandas
        if sparse.issparse(values):  # the smoothed bootstrap of sparse columns
            return pandas.DataFrame.sparse.from_spmatrix(values, columns=original.columns).astype(original.dtypes)
        return pandas.DataFrame(values, columns=original.columns, copy=False).astype(original.dtypes)
    if kind == "Series":  # values are fresh: no copy
        import pandas
        return pandas.Series(values, dtype=original.dtype, name=original.name, copy=False)
    return values


def checked_targets(y) -> tuple[np.ndarray, bool]:
    """imbalanced-learn's target checks (``check_classification_targets``, ``check_target_type``): the
    labels as a 1-D array, and whether ``y`` was one-hot (multilabel-indicator). 1-D integer and bool
    labels are binary or multiclass by their dtype alone, which saves sklearn's sort of ``y``."""
    labels = y.to_numpy() if _pandas_type(y) == "Series" else y
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iub":
        return labels, False
    check_classification_targets(y)
    return check_target_type(y, indicate_one_vs_all=True)


# --- the smoothed bootstrap -----------------------------------------------------------------------

def smoothed_bootstrap_scale(X: torch.Tensor, classes: torch.Tensor, shrinkage: torch.Tensor) -> torch.Tensor:
    """Per-class, per-feature noise scale of the smoothed bootstrap, imbalanced-learn's formula:
    ``σ[c, f] = shrinkage[c] · h · std(X[classes = c, f])`` with the population standard deviation and
    ``h = (4 / ((d + 2) n))^(1 / (d + 4))``, the normal-reference bandwidth factor (Silverman 1986, §4.3.2)
    for ``n`` samples of ``d`` features. ``X`` is (n, d), ``classes`` in ``[0, K)``, ``shrinkage`` (K,);
    float64 (K, d)."""
    n, d = X.shape
    x = X.double()
    num_classes = shrinkage.numel()
    sizes = torch.zeros(num_classes, dtype=torch.float64, device=X.device).index_add_(
        0, classes, torch.ones(n, dtype=torch.float64, device=X.device)).clamp(min=1)[:, None]
    mean = x.new_zeros(num_classes, d).index_add_(0, classes, x) / sizes
    variance = x.new_zeros(num_classes, d).index_add_(0, classes, (x - mean[classes]).square()) / sizes
    return shrinkage.double()[:, None] * bandwidth_factor(n, d) * variance.sqrt()


def bandwidth_factor(n: int, d: int) -> float:
    """``h = (4 / ((d + 2) n))^(1 / (d + 4))`` (see :func:`smoothed_bootstrap_scale`)."""
    return (4 / ((d + 2) * n)) ** (1 / (d + 4))


def sparse_bootstrap_scale(X, buckets: LabelBuckets, shrinkage: list[float]) -> torch.Tensor:
    """:func:`smoothed_bootstrap_scale` of a scipy sparse ``X``, class by class with
    ``sklearn.utils.sparsefuncs.mean_variance_axis``, as imbalanced-learn computes it."""
    n, d = X.shape
    scale = torch.zeros(len(shrinkage), d, dtype=torch.float64)
    order, offsets = buckets.order.cpu().numpy(), buckets.offsets.cpu().tolist()  # one copy, not one per class
    for i, (bucket, factor) in enumerate(zip(buckets.bucket_of_class.tolist(), shrinkage)):
        if factor:
            members = order[offsets[bucket]:offsets[bucket + 1]]
            _, variance = mean_variance_axis(X[members], axis=0)
            scale[i] = factor * bandwidth_factor(n, d) * torch.from_numpy(np.sqrt(variance).astype(np.float64))
    return scale


class Prepared(NamedTuple):
    """A checked ``fit_resample`` input: ``X`` (:meth:`_IndexSampler._check_X`), the 1-D ``labels``,
    whether ``y`` was one-hot, and the labels grouped by class."""
    X: object
    labels: object
    one_hot: bool
    buckets: LabelBuckets


# --- the samplers ---------------------------------------------------------------------------------

class _IndexSampler:
    """``fit`` and ``fit_resample`` of both samplers, in imbalanced-learn's steps."""

    _kind: str  # "over" or "under"
    random_state: object  # imbalanced-learn's parameters, set by the estimator's constructor
    sampling_strategy: object

    def fit(self, X, y, **params):
        """Checks ``X`` and ``y`` and sets ``sampling_strategy_``; returns ``self``."""
        self._validate_params()
        self._prepare(X, y)
        return self

    def fit_resample(self, X, y, **params):
        """The resampled ``X`` and ``y``, each of the kind it came in; sets ``sampling_strategy_`` and
        ``sample_indices_`` (a LongTensor for tensor ``y``, an int64 numpy array otherwise)."""
        self._validate_params()
        data = self._prepare(X, y)
        X_res, y_res = self._fit_resample(data.X, data.labels, buckets=data.buckets)
        if isinstance(X, list) and isinstance(X_res, np.ndarray):  # a list of rows comes back a list, as in imblearn
            X_res = X_res.tolist()
        if isinstance(y, torch.Tensor):
            return X_res, y_res
        if data.one_hot:
            y_res = label_binarize(y_res, classes=data.buckets.labels)
        y_res = restore_form(y_res, y)
        if _pandas_type(X) == "DataFrame" and _pandas_type(y):
            y_res.index = X_res.index
        return X_res, y_res

    def _fit_resample(self, X, y, buckets: LabelBuckets | None = None):
        """imbalanced-learn's step after the checks: checked ``X`` and 1-D labels ``y`` (grouped in
        ``buckets``), ``sampling_strategy_`` set; returns the rows of both and sets ``sample_indices_``."""
        buckets = bucket_labels(y) if buckets is None else buckets
        check_resample_size(buckets, self.sampling_strategy_, self._kind, INDEX_BYTES + row_bytes(X) + row_bytes(y))
        seed = seed_from_random_state(self.random_state)
        indices = resample(buckets, self.sampling_strategy_, self._kind, getattr(self, "replacement", True), seed)
        self.sample_indices_ = indices if isinstance(y, torch.Tensor) else indices.cpu().numpy()
        y_res = resampled_labels(y, buckets, resample_runs(buckets, self.sampling_strategy_, self._kind), indices)
        return self._resampled_X(Prepared(X, y, False, buckets), indices, seed), y_res

    def _resampled_X(self, data: Prepared, indices: torch.Tensor, seed: int):
        return gather_rows(data.X, indices, keep_index=self._kind == "under")

    def _prepare(self, X, y) -> Prepared:
        """imbalanced-learn's input checks and ``sampling_strategy_``."""
        labels: torch.Tensor | np.ndarray
        if isinstance(y, torch.Tensor):
            labels, one_hot = y, False
        else:
            labels, one_hot = checked_targets(y)
        X = self._check_X(X)
        if isinstance(X, (np.ndarray, torch.Tensor)) and X.ndim == 2 or sparse.issparse(X) \
                or _pandas_type(X) == "DataFrame":
            validate_data(self, X=X, y=labels, reset=True, skip_check_array=True)
        rows = X.shape[0] if isinstance(X, torch.Tensor) or sparse.issparse(X) else len(X)
        if rows != len(labels):
            raise ValueError(f"X and y must have one row per sample: X has {rows} rows, y has {len(labels)} labels")
        buckets = bucket_labels(labels)
        self.sampling_strategy_ = resolve_sampling_strategy(self.sampling_strategy, buckets.class_counts, self._kind,
                                                            y=strategy_input(labels))
        return Prepared(X, labels, one_hot, buckets)

    @staticmethod
    def _check_X(X):
        """imbalanced-learn's check of ``X`` (DataFrames as they are; arrays, lists of rows and sparse
        matrices through ``check_array``, CSR and CSC kept, others made CSR), plus rarekit's kinds:
        torch tensors, pandas Series and 1-D lists or tuples of any items (e.g. texts)."""
        if isinstance(X, torch.Tensor):
            if X.dim() == 0:
                raise ValueError("X must have one row per sample, got a 0-d tensor")
            return X
        if _pandas_type(X):
            if len(X) < 1:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
            return X
        if isinstance(X, (list, tuple)) and not any(isinstance(item, (list, tuple, np.ndarray)) for item in X[:1]):
            if len(X) < 1:
                raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
            return X
        if not (isinstance(X, (np.ndarray, list, tuple)) or sparse.issparse(X)):
            raise TypeError(f"X must be a numpy array, a torch tensor, a list, a pandas DataFrame or Series or a "
                            f"scipy sparse matrix, got {type(X).__name__}")
        return check_array(X, dtype=None, accept_sparse=["csr", "csc"], ensure_all_finite=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.sampler_tags.sample_indices = True
        return tags


class RandomOverSampler(_IndexSampler, BaseOverSampler):
    """imbalanced-learn's ``RandomOverSampler`` on rarekit's kernels (see :func:`rarekit.oversample_indices`
    for the draw and the module docstring for the inputs).

    ``shrinkage`` (a float, or ``{class: float}`` with a factor for every resampled class) makes the new
    rows a smoothed bootstrap, ``X[i] + σ_c ⊙ z`` with ``z ~ N(0, I)`` and ``σ`` from
    :func:`smoothed_bootstrap_scale`; it needs numerical ``X`` (dense or sparse) of finite values: NaN or
    infinity anywhere in ``X`` raises ValueError, as in imbalanced-learn (without ``shrinkage`` rows are
    copied, NaN included). Floating-point ``X`` keeps its dtype, other numbers give float64.

    Attributes after ``fit_resample``: ``sampling_strategy_`` ``{class: samples added}``,
    ``sample_indices_`` and ``shrinkage_`` (imbalanced-learn's: the dict given, or the float for each
    class of ``sampling_strategy_``; None without shrinkage).
    """

    _kind = "over"
    _parameter_constraints: dict = {
        **BaseOverSampler._parameter_constraints,
        "random_state": RANDOM_STATE_CONSTRAINT,
        "shrinkage": [Interval(Real, 0, None, closed="left"), Mapping, None],
    }

    def __init__(self, sampling_strategy="auto", random_state=None, shrinkage=None):
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.shrinkage = shrinkage

    def _resampled_X(self, data: Prepared, indices: torch.Tensor, seed: int):
        self.shrinkage_ = self._checked_shrinkage()
        if self.shrinkage_ is None:
            return super()._resampled_X(data, indices, seed)
        factors = [float(self.shrinkage_[label]) if label in self.sampling_strategy_ else 0.0
                   for label in data.buckets.labels]
        n, X = data.buckets.order.numel(), data.X
        if isinstance(X, torch.Tensor):
            if not (X.is_floating_point() and X.dim() == 2):
                raise ValueError(f"shrinkage needs X as a 2-D floating-point tensor, got {X.dtype} of shape "
                                 f"{tuple(X.shape)}")
            finite = torch.isfinite(X).all(1)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0, 0])
                raise ValueError(f"shrinkage needs X of finite numerical data only (to add noise to it), got a "
                                 f"tensor whose row {row} is {X[row].tolist()}")
            return self._smoothed_rows(X, data.buckets, indices[n:], factors, seed)
        try:  # imbalanced-learn's check: numbers, all finite (a NaN or infinity would spread through the scale)
            matrix = check_array(X, accept_sparse=["csr", "csc"], dtype="numeric")
        except (ValueError, TypeError) as error:
            raise ValueError(f"shrinkage needs X of finite numerical data only (to add noise to it), got "
                             f"{type(X).__name__}: {error}") from error
        if sparse.issparse(matrix):
            scale = sparse_bootstrap_scale(matrix, data.buckets, factors)
            base = torch.from_numpy(matrix[indices[n:].cpu().numpy()].toarray().astype(np.float64, copy=False))
            new = self._noisy(base, data.buckets, scale, seed)
            return restore_form(sparse.vstack([matrix, sparse.csr_matrix(new.numpy(), dtype=matrix.dtype)],
                                              format=matrix.format), X)
        if matrix.dtype.kind != "f":
            matrix = matrix.astype(np.float64)
        rows = self._smoothed_rows(readonly_tensor(np.ascontiguousarray(matrix)), data.buckets, indices[n:], factors,
                                   seed)
        return restore_form(rows.numpy(), X)

    def _checked_shrinkage(self) -> dict | None:
        """imbalanced-learn's ``shrinkage_``, checked as it does: a factor for each resampled class, every
        factor >= 0 (also for classes not resampled or absent from y); rarekit refuses NaN and infinity."""
        if self.shrinkage is None:
            return None
        if isinstance(self.shrinkage, Mapping):
            factors = dict(self.shrinkage)
        else:
            factors = {label: self.shrinkage for label in self.sampling_strategy_}
        missing = [label for label in self.sampling_strategy_ if label not in factors]
        if missing:
            raise ValueError(f"shrinkage must give a factor for each resampled class {list(self.sampling_strategy_)}; "
                             f"missing {missing}")
        for label, factor in factors.items():
            if not is_real_number(factor):
                raise TypeError(f"shrinkage[{label!r}] must be a number, got {factor!r}")
            if not math.isfinite(factor) or factor < 0:
                raise ValueError(f"shrinkage[{label!r}] must be a finite number >= 0, got {factor!r}")
        return factors

    def _smoothed_rows(self, X: torch.Tensor, buckets: LabelBuckets, new: torch.Tensor, factors: list[float],
                       seed: int) -> torch.Tensor:
        """``X`` followed by its rows ``new`` plus Gaussian noise of each class's scale, in ``X``'s dtype."""
        device = X.device
        sample_class = torch.empty(X.shape[0], dtype=torch.int64, device=device)
        sample_class[buckets.order.to(device)] = torch.repeat_interleave(
            torch.arange(len(buckets.labels), device=device), torch.tensor(buckets.counts, device=device),
            output_size=X.shape[0])
        scale = smoothed_bootstrap_scale(X, sample_class, torch.tensor(factors, dtype=torch.float64, device=device))
        rows = self._noisy(gather_tensor(X, new).double(), buckets, scale, seed)
        return torch.cat([X, rows.to(X.dtype)])

    def _noisy(self, base: torch.Tensor, buckets: LabelBuckets, scale: torch.Tensor, seed: int) -> torch.Tensor:
        """``base`` (float64 rows drawn class after class, as ``sampling_strategy_`` counts them) plus
        ``scale[class] ⊙ z``, ``z ~ N(0, I)`` from a generator seeded with ``seed``."""
        device = base.device
        new_class = torch.repeat_interleave(
            torch.arange(len(buckets.labels), device=device),
            torch.tensor([self.sampling_strategy_.get(label, 0) for label in buckets.labels], device=device),
            output_size=base.shape[0])
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(base.shape, generator=generator, dtype=torch.float64, device=device)
        return base + noise * scale.to(device)[new_class]


class RandomUnderSampler(_IndexSampler, BaseUnderSampler):
    """imbalanced-learn's ``RandomUnderSampler`` on rarekit's kernels (see
    :func:`rarekit.undersample_indices` for the draw and the module docstring for the inputs).

    Attributes after ``fit_resample``: ``sampling_strategy_`` ``{class: samples kept}`` and
    ``sample_indices_``.
    """

    _kind = "under"
    _parameter_constraints: dict = {
        **BaseUnderSampler._parameter_constraints,
        "replacement": ["boolean"],
        "random_state": RANDOM_STATE_CONSTRAINT,
    }

    def __init__(self, sampling_strategy="auto", random_state=None, replacement: bool = False):
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.replacement = replacement
