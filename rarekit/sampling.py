"""Resampling on index kernels: imbalanced-learn-compatible samplers, a PyTorch data sampler, and
per-sequence weights for rare tokens.

The resamplers work in O(N + output): one counting pass over the labels, a prefix sum and a stable
counting-sort scatter into per-class buckets (``rarekit::class_buckets``), then counter-based random
draws within the buckets (``rarekit::draw_from_buckets``). Python only resolves one count per class
on the host; no Python loop touches the samples. Only indices are computed; the data is gathered once, at the end
(:class:`RandomOverSampler`, :class:`RandomUnderSampler`), or never (:class:`BalancedSampler`).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch

from rarekit import _backend, ops
from rarekit.counting import as_counts, as_ids, checked_ignore_index, is_integer, is_real_number
from rarekit.reference import as_int64
from rarekit.strategy import encode_labels, resolve_sampling_strategy, strategy_input

DENSE_LABEL_SPAN = 1 << 16  # integer labels spanning at most max(2 N, this) values index the buckets directly
SEQUENCE_RULES = ("rarest", "mean_inverse")


class LabelBuckets(NamedTuple):
    """The samples grouped by class: bucket ``b`` is ``order[offsets[b]:offsets[b + 1]]``, the sample
    indices of one class in ascending order. ``bucket_of_class[i]`` is the bucket of ``labels[i]``, the
    i-th class in sorted order, which has ``counts[i]`` samples; the other buckets are empty."""
    order: torch.Tensor
    offsets: torch.Tensor
    bucket_of_class: torch.Tensor
    labels: list
    counts: list[int]

    @property
    def class_counts(self) -> dict:
        return dict(zip(self.labels, self.counts))


def bucket_labels(y, name: str = "y") -> LabelBuckets:
    """Groups the samples of ``y`` by class with one stable counting sort (on the device of a tensor ``y``).

    Integer labels spanning at most ``max(2 N, DENSE_LABEL_SPAN)`` values are their own bucket numbers
    (minus the smallest); others are mapped to ``0..K-1`` by one ``torch.unique``; string and object
    labels by one ``numpy.unique`` on the host (:func:`rarekit.strategy.encode_labels`).
    """
    codes, classes = encode_labels(y, name)
    if codes.numel() == 0:
        raise ValueError(f"{name} is empty: there are no samples to resample")
    if codes.dtype in (torch.uint16, torch.uint32):  # few torch ops take these
        codes = codes.long()
    low, high = (int(value) for value in torch.aminmax(codes))
    span = high - low + 1
    if span <= max(2 * codes.numel(), DENSE_LABEL_SPAN):
        order, offsets = ops.class_buckets(codes if low == 0 else codes.long() - low, span)
        sizes = offsets.diff().cpu()
        bucket_of_class = sizes.nonzero().flatten()
        values = bucket_of_class + low
    else:
        values, inverse = torch.unique(codes, return_inverse=True)
        order, offsets = ops.class_buckets(inverse, values.numel())
        sizes = offsets.diff().cpu()
        bucket_of_class, values = torch.arange(values.numel()), values.cpu()
    labels = values.tolist() if classes is None else classes[values.numpy()].tolist()
    return LabelBuckets(order, offsets, bucket_of_class, labels, sizes[bucket_of_class].tolist())


def resolve_seed(seed: int | None = None, generator: torch.Generator | None = None) -> int:
    """The 64-bit seed of the index kernels: ``seed`` modulo 2^64, or drawn from ``generator``, or from
    torch's default generator (so ``torch.manual_seed`` fixes it) when both are None."""
    if seed is not None and generator is not None:
        raise ValueError(f"give seed or generator, not both (got seed={seed!r} and a generator)")
    if seed is not None:
        if not is_integer(seed):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        return as_int64(int(seed))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(1 << 62, (), generator=generator, device=device))


def seed_from_random_state(random_state) -> int:
    """The kernels' seed from a scikit-learn style ``random_state``: None (a fresh seed from torch's
    default generator), an int, a ``numpy.random.RandomState`` or ``Generator``, or a ``torch.Generator``."""
    if random_state is None or is_integer(random_state):
        return resolve_seed(random_state)
    if isinstance(random_state, torch.Generator):
        return resolve_seed(generator=random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(1 << 62, dtype=np.int64))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(1 << 62))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator or a torch.Generator, "
                     f"got {random_state!r}")


def bucket_draw_counts(buckets: LabelBuckets, per_class: list[int]) -> torch.Tensor:
    """The draw count of each bucket: ``per_class[i]`` for the bucket of ``labels[i]``, 0 for empty buckets."""
    draw_counts = torch.zeros(buckets.offsets.numel() - 1, dtype=torch.int64)
    draw_counts[buckets.bucket_of_class] = torch.tensor(per_class, dtype=torch.int64)
    return draw_counts.to(buckets.order.device)


def draw_per_class(buckets: LabelBuckets, per_class: list[int], seed: int, replacement: bool) -> torch.Tensor:
    """``per_class[i]`` random sample indices of class ``labels[i]``, class after class
    (``rarekit::draw_from_buckets``)."""
    return ops.draw_from_buckets(buckets.order, buckets.offsets, bucket_draw_counts(buckets, per_class),
                                 sum(per_class), seed, replacement)


def resample(buckets: LabelBuckets, targets: dict, kind: str, replacement: bool, seed: int) -> torch.Tensor:
    """The indices of the resample, in imbalanced-learn's order, given ``targets``, the resolved
    ``sampling_strategy_`` (:func:`rarekit.strategy.resolve_sampling_strategy`).

    - ``kind="over"``: every index once, ascending, then ``targets[c]`` draws with replacement from each
      targeted class ``c``, class after class;
    - ``kind="under"``: class after class, ``targets[c]`` indices of each targeted class (a random
      subset, or draws with ``replacement``), every index of the others in ascending order.
    """
    n, device = buckets.order.numel(), buckets.order.device
    if kind == "over":  # one buffer: arange(n), then the draws written behind it
        per_class = [targets.get(label, 0) for label in buckets.labels]
        indices = torch.empty(n + sum(per_class), dtype=torch.int64, device=device)
        _backend.advise_huge_pages(indices)
        torch.arange(n, out=indices[:n])
        ops.draw_from_buckets_into(buckets.order, buckets.offsets, bucket_draw_counts(buckets, per_class), seed, True,
                                   indices[n:])
        return indices
    if not replacement:  # untargeted classes are drawn in full, which keeps them in order
        return draw_per_class(buckets, [targets.get(label, count) for label, count in buckets.class_counts.items()],
                              seed, False)
    # with replacement: the targeted classes are drawn, the others kept whole; the two are merged class
    # by class with one gather from cat([draws, order])
    drawn = torch.tensor([targets.get(label, 0) for label in buckets.labels])
    draws = draw_per_class(buckets, drawn.tolist(), seed, True)
    counts = torch.tensor(buckets.counts)
    targeted = torch.tensor([label in targets for label in buckets.labels])
    lengths = torch.where(targeted, drawn, counts)
    source_starts = torch.where(targeted, exclusive_cumsum(drawn), draws.numel() + exclusive_cumsum(counts))
    total = int(lengths.sum())
    shifts = (source_starts - exclusive_cumsum(lengths)).to(device)
    gather = torch.repeat_interleave(shifts, lengths.to(device), output_size=total)
    return torch.cat([draws, buckets.order])[gather + torch.arange(total, device=device)]


def exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    """``[0, v_0, v_0 + v_1, ...]`` without the grand total: where each of consecutive runs starts."""
    return values.cumsum(0) - values


def oversample_indices(y, sampling_strategy="auto", *, seed: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The indices of a random over-sample of ``y``, as imbalanced-learn's ``RandomOverSampler`` draws it:
    ``arange(N)``, then, class after class in sorted order, uniform draws with replacement from each
    targeted class until it reaches its count under ``sampling_strategy`` (see :mod:`rarekit.strategy`).

    Args:
        y: labels: a 1-D tensor of any integer dtype (the work stays on its device), a numpy array or a
            list of integers, strings or other sortable labels.
        seed, generator: the draws are a function of a 64-bit seed (the same indices on any device and
            thread count): ``seed``, one drawn from ``generator``, or one drawn from torch's default
            generator.

    Returns:
        int64 indices on the device of ``y`` (CPU for non-tensors).
    """
    buckets = bucket_labels(y)
    targets = resolve_sampling_strategy(sampling_strategy, buckets.class_counts, "over", y=strategy_input(y))
    return resample(buckets, targets, "over", True, resolve_seed(seed, generator))


def undersample_indices(y, sampling_strategy="auto", *, replacement: bool = False, seed: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The indices of a random under-sample of ``y``, as imbalanced-learn's ``RandomUnderSampler`` draws it:
    class after class in sorted order, a uniform random subset of each targeted class of its count under
    ``sampling_strategy`` (draws with replacement if ``replacement``), and every index of the other
    classes, ascending. Arguments and result as :func:`oversample_indices`.
    """
    if not isinstance(replacement, bool):
        raise TypeError(f"replacement must be a bool, got {replacement!r}")
    buckets = bucket_labels(y)
    targets = resolve_sampling_strategy(sampling_strategy, buckets.class_counts, "under", y=strategy_input(y))
    return resample(buckets, targets, "under", replacement, resolve_seed(seed, generator))


# --- imbalanced-learn drop-ins ----------------------------------------------------------------------

def _optional_module(name: str):
    """``name`` if it is already imported (data of its types can only exist then), else None."""
    return sys.modules.get(name)


def _is_sparse(data) -> bool:
    sparse = _optional_module("scipy.sparse")
    return sparse is not None and sparse.issparse(data)


def _is_pandas(data) -> bool:
    pandas = _optional_module("pandas")
    return pandas is not None and isinstance(data, (pandas.DataFrame, pandas.Series))


def num_rows(data, name: str) -> int:
    """The number of samples (rows) of data of a kind the samplers keep; TypeError for other kinds."""
    if isinstance(data, (torch.Tensor, np.ndarray)) or _is_sparse(data):
        if data.ndim == 0:
            raise ValueError(f"{name} must have one row per sample, got a 0-d {type(data).__name__}")
        return data.shape[0]
    if _is_pandas(data) or isinstance(data, (list, tuple)):
        return len(data)
    raise TypeError(f"{name} must be a numpy array, a torch tensor, a list, a pandas DataFrame or Series or a "
                    f"scipy sparse matrix, got {type(data).__name__}")


def take_rows(data, indices: torch.Tensor):
    """The rows ``indices`` of ``data``, of the same kind: tensors are gathered on their device, pandas
    objects get a fresh RangeIndex (as imbalanced-learn returns them), sparse matrices keep their format,
    lists and tuples become lists."""
    if isinstance(data, torch.Tensor):
        return data.index_select(0, indices.to(data.device))
    rows = indices.cpu().numpy()
    if isinstance(data, np.ndarray):
        return data[rows]
    if _is_sparse(data):
        return data.tocsr()[rows].asformat(data.format)
    if _is_pandas(data):
        return data.iloc[rows].reset_index(drop=True)
    return [data[row] for row in rows.tolist()]


def _check_same_length(X, y) -> int:
    rows, labels = num_rows(X, "X"), num_rows(y, "y")
    if rows != labels:
        raise ValueError(f"X and y must have one row per sample: X has {rows} rows, y has {labels} labels")
    return labels


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
    bandwidth = (4 / ((d + 2) * n)) ** (1 / (d + 4))
    return shrinkage.double()[:, None] * bandwidth * variance.sqrt()


def _float_matrix(X) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """``X`` as a 2-D floating-point tensor and the function that turns rows back into ``X``'s kind."""
    if isinstance(X, torch.Tensor) and X.is_floating_point() and X.dim() == 2:
        return X, lambda rows: rows
    if isinstance(X, np.ndarray) and X.dtype.kind == "f" and X.ndim == 2:
        return torch.from_numpy(np.require(X, requirements=["C", "W"])), lambda rows: rows.numpy()
    pandas = _optional_module("pandas")
    if (pandas is not None and isinstance(X, pandas.DataFrame) and X.shape[1] > 0
            and all(pandas.api.types.is_float_dtype(dtype) for dtype in X.dtypes)):
        return (torch.from_numpy(X.to_numpy(dtype=np.float64)),
                lambda rows: pandas.DataFrame(rows.numpy(), columns=X.columns).astype(X.dtypes.to_dict()))
    kind = "a scipy sparse matrix" if _is_sparse(X) else (
        f"{type(X).__name__} of dtype {getattr(X, 'dtype', None)} and shape {tuple(getattr(X, 'shape', ()))}"
        if hasattr(X, "shape") else type(X).__name__)
    raise ValueError(f"shrinkage needs X as a dense 2-D floating-point numpy array, torch tensor or pandas "
                     f"DataFrame, got {kind}")


def _shrinkage_per_class(shrinkage, targets: dict, labels: list) -> list[float]:
    """imbalanced-learn's ``shrinkage_``: one factor ≥ 0 per targeted class (0 for the others)."""
    def check(factor, name):
        if not is_real_number(factor) or not math.isfinite(factor) or factor < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {factor!r}")
        return float(factor)

    if not isinstance(shrinkage, Mapping):
        factor = check(shrinkage, "shrinkage")
        return [factor if label in targets else 0.0 for label in labels]
    absent = [label for label in shrinkage if label not in labels]
    missing = [label for label in targets if label not in shrinkage]
    if absent or missing:
        raise ValueError(f"shrinkage must give a factor for each resampled class {list(targets)}; "
                         f"missing {missing}, not in y {absent}")
    return [check(shrinkage[label], f"shrinkage[{label!r}]") if label in targets else 0.0 for label in labels]


class RandomOverSampler:
    """imbalanced-learn's ``RandomOverSampler`` on rarekit's index kernels (see :func:`oversample_indices`).

    ``fit_resample(X, y)`` returns ``X`` and ``y`` of the kind they came in: numpy arrays, torch tensors
    (gathered on their device), lists (of strings too), pandas DataFrame / Series, scipy sparse matrices.
    ``shrinkage`` (a float, or ``{class: float}``) makes the new rows a smoothed bootstrap,
    ``X[i] + σ_c ⊙ z`` with ``z ~ N(0, I)`` and ``σ`` from :func:`smoothed_bootstrap_scale`; it needs
    dense floating-point ``X``, whose dtype is kept.

    Attributes after ``fit_resample``: ``sampling_strategy_`` ``{class: samples added}``,
    ``sample_indices_`` (a LongTensor for tensor ``y``, a numpy int64 array otherwise) and, with
    ``shrinkage``, ``shrinkage_`` ``{class: factor}``.
    """

    def __init__(self, sampling_strategy="auto", random_state=None, shrinkage=None):
        self.sampling_strategy = sampling_strategy
        self.random_state = random_state
        self.shrinkage = shrinkage

    def __repr__(self) -> str:
        return (f"RandomOverSampler(sampling_strategy={self.sampling_strategy!r}, "
                f"random_state={self.random_state!r}, shrinkage={self.shrinkage!r})")

    def fit_resample(self, X, y):
        n = _check_same_length(X, y)
        buckets = bucket_labels(y)
        targets = resolve_sampling_strategy(self.sampling_strategy, buckets.class_counts, "over", y=strategy_input(y))
        shrinkage = None if self.shrinkage is None else _shrinkage_per_class(self.shrinkage, targets, buckets.labels)
        matrix, back = _float_matrix(X) if shrinkage is not None else (None, None)
        seed = seed_from_random_state(self.random_state)
        indices = resample(buckets, targets, "over", True, seed)
        self.sampling_strategy_ = targets
        self.sample_indices_ = indices if isinstance(y, torch.Tensor) else indices.cpu().numpy()
        if shrinkage is None:
            self.shrinkage_ = None
            return take_rows(X, indices), take_rows(y, indices)
        self.shrinkage_ = {label: factor for label, factor in zip(buckets.labels, shrinkage) if label in targets}
        return back(self._smoothed_bootstrap(matrix, buckets, indices[n:], targets, shrinkage, seed)), take_rows(y, indices)

    @staticmethod
    def _smoothed_bootstrap(X: torch.Tensor, buckets: LabelBuckets, new: torch.Tensor, targets: dict,
                            shrinkage: list[float], seed: int) -> torch.Tensor:
        """``X`` followed by its rows ``new`` plus Gaussian noise of each class's scale."""
        device = X.device
        sizes = torch.tensor(buckets.counts, device=device)
        sample_class = torch.empty(X.shape[0], dtype=torch.int64, device=device)
        sample_class[buckets.order.to(device)] = torch.repeat_interleave(
            torch.arange(len(buckets.labels), device=device), sizes, output_size=X.shape[0])
        scale = smoothed_bootstrap_scale(X, sample_class, torch.tensor(shrinkage, device=device))
        new_class = torch.repeat_interleave(
            torch.arange(len(buckets.labels), device=device),
            torch.tensor([targets.get(label, 0) for label in buckets.labels], device=device), output_size=new.numel())
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(new.numel(), X.shape[1], generator=generator, dtype=torch.float64, device=device)
        rows = X.index_select(0, new.to(device)).double() + noise * scale[new_class]
        return torch.cat([X, rows.to(X.dtype)])


class RandomUnderSampler:
    """imbalanced-learn's ``RandomUnderSampler`` on rarekit's index kernels (see :func:`undersample_indices`).

    ``fit_resample(X, y)`` keeps the kinds of ``X`` and ``y`` as :class:`RandomOverSampler` does.
    Attributes after ``fit_resample``: ``sampling_strategy_`` ``{class: samples kept}`` and
    ``sample_indices_``.
    """

    def __init__(self, sampling_strategy="auto", random_state=None, replacement: bool = False):
        self.sampling_strategy = sampling_strategy
        self.random_state = random_state
        self.replacement = replacement

    def __repr__(self) -> str:
        return (f"RandomUnderSampler(sampling_strategy={self.sampling_strategy!r}, "
                f"random_state={self.random_state!r}, replacement={self.replacement!r})")

    def fit_resample(self, X, y):
        if not isinstance(self.replacement, bool):
            raise TypeError(f"replacement must be a bool, got {self.replacement!r}")
        _check_same_length(X, y)
        buckets = bucket_labels(y)
        targets = resolve_sampling_strategy(self.sampling_strategy, buckets.class_counts, "under",
                                            y=strategy_input(y))
        indices = resample(buckets, targets, "under", self.replacement, seed_from_random_state(self.random_state))
        self.sampling_strategy_ = targets
        self.sample_indices_ = indices if isinstance(y, torch.Tensor) else indices.cpu().numpy()
        return take_rows(X, indices), take_rows(y, indices)


# --- the PyTorch data sampler -----------------------------------------------------------------------

def _non_negative_int(value, name: str) -> int:
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """A ``torch.utils.data.Sampler`` that resamples for balance anew each epoch (:meth:`set_epoch`).

    Give one of:

    - ``labels``: each epoch is the resample of imbalanced-learn's ``RandomOverSampler``
      (:func:`oversample_indices`; ``replacement=True``) or ``RandomUnderSampler`` without replacement
      (:func:`undersample_indices`; ``replacement=False``) under ``sampling_strategy``, shuffled if
      ``shuffle``. ``num_samples`` (default: the resample's size) takes the first ``num_samples``
      indices of as many independent resamples, one after the other, as it needs.
    - ``weights``: per-sample weights ``w ≥ 0``; each epoch draws ``num_samples`` (default ``len(weights)``)
      indices with probability ``w_i / Σw``: with ``replacement`` by inverse-CDF search of a float64
      cumulative sum, without it by Efraimidis-Spirakis keys ``E_i / w_i``, ``E_i ~ Exp(1)``, smallest first
      (Efraimidis & Spirakis 2006). Unlike ``WeightedRandomSampler`` (``torch.multinomial``), there is
      no 2^24 limit on the number of weights; memory is O(N). ``shuffle=False`` sorts the draws.

    The stream of an epoch is a function of ``(seed, epoch)``. With ``num_replicas`` > 1 (default: the
    world size of an initialized ``torch.distributed``), rank ``rank`` iterates over positions
    ``rank, rank + num_replicas, ...`` of that stream, padded with its head to a multiple of
    ``num_replicas`` (or cut to one if ``drop_last``), as ``DistributedSampler`` shards: the shards are
    disjoint, of equal length, and cover the epoch. Labels and weights are kept on the CPU.
    """

    def __init__(self, labels=None, *, weights=None, sampling_strategy="auto", num_samples: int | None = None,
                 replacement: bool = True, seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, drop_last: bool = False):
        if (labels is None) == (weights is None):
            raise ValueError("give labels or weights, exactly one of them")
        for value, name in ((replacement, "replacement"), (shuffle, "shuffle"), (drop_last, "drop_last")):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        self.seed = _non_negative_int(seed, "seed")
        self.replacement, self.shuffle, self.drop_last = replacement, shuffle, drop_last
        self.num_replicas, self.rank = self._replicas(num_replicas, rank)
        self.epoch = 0
        if labels is not None:
            self.kind = "over" if replacement else "under"
            self.buckets = bucket_labels(labels.cpu() if isinstance(labels, torch.Tensor) else labels, "labels")
            self.targets = resolve_sampling_strategy(sampling_strategy, self.buckets.class_counts, self.kind,
                                                     y=strategy_input(labels))
            self.weights = None
            if self.kind == "over":
                self.resample_size = self.buckets.order.numel() + sum(self.targets.values())
            else:
                self.resample_size = sum(self.targets.get(label, count)
                                         for label, count in self.buckets.class_counts.items())
            default_samples = self.resample_size
        else:
            self.buckets = None
            self.weights = as_counts(weights, "weights").detach().cpu().double()
            self.cumulative = self.weights.cumsum(0)
            positive = self.weights.gt(0).nonzero()
            if positive.numel() == 0:
                raise ValueError(f"weights must have a positive entry, got {self.weights.numel()} zeros")
            self.last_positive, self.num_positive = int(positive[-1]), positive.numel()
            default_samples = self.weights.numel()
        self.num_samples = default_samples if num_samples is None else _non_negative_int(num_samples, "num_samples")
        if self.buckets is not None and self.resample_size == 0 and self.num_samples > 0:
            raise ValueError(f"sampling_strategy={sampling_strategy!r} keeps no sample; num_samples="
                             f"{self.num_samples} cannot be drawn")
        if self.weights is not None and not replacement and self.num_samples > self.num_positive:
            raise ValueError(f"num_samples={self.num_samples} draws without replacement need as many positive "
                             f"weights; there are {self.num_positive}")
        if drop_last:
            self.per_replica = self.num_samples // self.num_replicas
        else:
            self.per_replica = -(-self.num_samples // self.num_replicas)

    @staticmethod
    def _replicas(num_replicas, rank) -> tuple[int, int]:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if not is_integer(num_replicas) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not is_integer(rank) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an integer in [0, num_replicas={num_replicas}), got {rank!r}")
        return int(num_replicas), int(rank)

    def set_epoch(self, epoch: int) -> None:
        """Makes the next iteration the resample of ``epoch``; call it before each epoch."""
        self.epoch = _non_negative_int(epoch, "epoch")

    def _seed(self, *words: int) -> int:
        """A 64-bit seed derived from (seed, epoch, *words) (numpy's SeedSequence hash). Every value is
        split into two fixed 32-bit words behind a length word, so distinct tuples never hash the same
        word list (SeedSequence pads short lists with zeros)."""
        values = (self.seed, self.epoch, *words)
        fixed = [len(values)] + [part for value in values for part in (value & 0xFFFFFFFF, value >> 32)]
        state = np.random.SeedSequence(fixed).generate_state(1, np.uint64)[0]
        return as_int64(int(state))

    def epoch_indices(self) -> torch.Tensor:
        """The whole stream of the current epoch (``num_samples`` indices), before sharding."""
        if self.weights is not None:
            return self._weighted_draws(torch.Generator().manual_seed(self._seed()))
        rounds = []
        for round_index in range(max(1, -(-self.num_samples // max(self.resample_size, 1)))):
            indices = resample(self.buckets, self.targets, self.kind, self.replacement, self._seed(round_index))
            if self.shuffle:
                generator = torch.Generator().manual_seed(self._seed(round_index, 1))
                indices = indices[torch.randperm(indices.numel(), generator=generator)]
            rounds.append(indices)
        return torch.cat(rounds)[:self.num_samples]

    def _weighted_draws(self, generator: torch.Generator) -> torch.Tensor:
        if self.replacement:
            uniforms = torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * self.cumulative[-1]
            draws = torch.searchsorted(self.cumulative, uniforms, right=True).clamp_(max=self.last_positive)
        else:
            exponentials = torch.empty_like(self.weights).exponential_(generator=generator)
            draws = torch.topk(exponentials / self.weights, self.num_samples, largest=False).indices
        return draws if self.shuffle else draws.sort().values

    def __iter__(self):
        stream = self.epoch_indices()
        total = self.per_replica * self.num_replicas
        if total > stream.numel():  # pad with the head of the stream, repeated as often as needed
            stream = stream.repeat(-(-total // max(stream.numel(), 1)))
        return iter(stream[self.rank:total:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_replica


# --- rare tokens ------------------------------------------------------------------------------------

def sequence_weights(sequences, counts, *, rule: str = "rarest", ignore_index: int | None = -100) -> torch.Tensor:
    """Per-sequence sampling weights from token counts, for :class:`BalancedSampler` ``(weights=...)``:
    sequences with rare tokens are drawn more often.

    With ``c_t = max(counts[t], 1)`` (unseen tokens count as seen once) over the tokens ``t`` of a sequence
    other than ``ignore_index``:

    - ``"rarest"``: ``w = 1 / min_t c_t``, the inverse count of its rarest token;
    - ``"mean_inverse"``: ``w = mean_t 1 / c_t``.

    A sequence with no tokens gets ``w = 0``.

    Args:
        sequences: a padded 2-D integer tensor (padding ``ignore_index``) or a list of id sequences.
        counts: per-token counts (e.g. :attr:`rarekit.TokenCounter.counts`), 1-D.

    Returns:
        float32 weights, one per sequence, on the device of ``sequences`` (CPU for lists).
    """
    if rule not in SEQUENCE_RULES:
        raise ValueError(f"rule must be one of {SEQUENCE_RULES}, got {rule!r}")
    ignore_index = checked_ignore_index(ignore_index)
    tokens, sequence_of_token, num_sequences = _flat_tokens(sequences)
    counts = as_counts(counts).to(tokens.device).double()
    if ignore_index is not None:
        keep = tokens != ignore_index
        tokens, sequence_of_token = tokens[keep], sequence_of_token[keep]
    outside = (tokens < 0) | (tokens >= counts.numel())
    if bool(outside.any()):
        first = int(outside.nonzero()[0, 0])
        raise IndexError(f"sequences[{int(sequence_of_token[first])}] holds token {int(tokens[first])}, outside "
                         f"counts (length {counts.numel()}){'' if ignore_index is None else ' and not ignore_index'}")
    inverse = 1 / counts[tokens].clamp(min=1)
    weights = torch.zeros(num_sequences, dtype=torch.float64, device=tokens.device)
    if rule == "rarest":
        weights.scatter_reduce_(0, sequence_of_token, inverse, reduce="amax", include_self=True)
    else:
        lengths = torch.zeros_like(weights).index_add_(0, sequence_of_token, torch.ones_like(inverse))
        weights.index_add_(0, sequence_of_token, inverse).div_(lengths.clamp(min=1))
    return weights.float()


def _flat_tokens(sequences) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The token ids of all sequences, one after the other (int64), the sequence of each, and their number."""
    if isinstance(sequences, torch.Tensor):
        if sequences.dim() != 2:
            raise ValueError(f"sequences as a tensor must be 2-D (sequences, positions), got shape "
                             f"{tuple(sequences.shape)}")
        ids = as_ids(sequences, "sequences").long()
        rows = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(ids.shape[1])
        return ids.reshape(-1), rows, ids.shape[0]
    if not isinstance(sequences, (list, tuple)):
        raise TypeError(f"sequences must be a 2-D tensor or a list of id sequences, got {type(sequences).__name__}")
    parts = [as_ids(sequence, f"sequences[{index}]").reshape(-1).long().cpu()
             for index, sequence in enumerate(sequences)]
    lengths = torch.tensor([part.numel() for part in parts], dtype=torch.int64)
    tokens = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return tokens, torch.arange(len(parts)).repeat_interleave(lengths), len(parts)
