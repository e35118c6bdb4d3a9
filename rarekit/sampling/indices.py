"""Resampling on index kernels: the index draws of imbalanced-learn's random samplers, and per-sequence
weights for rare tokens. The imbalanced-learn drop-ins built on them are in :mod:`rarekit.sampling.samplers`, the
PyTorch data sampler in :mod:`rarekit.sampling.balanced`.

The resamplers work in O(N + output): one counting pass over the labels, a prefix sum and a stable
counting-sort scatter into per-class buckets (``rarekit::class_buckets``), then counter-based random
draws within the buckets (``rarekit::draw_from_buckets``). Python only resolves one count per class
on the host; no Python loop touches the samples. Only indices are computed here; the data is gathered
once, at the end (``rarekit::gather_rows``), or never (:class:`rarekit.BalancedSampler`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from rarekit import _backend, ops
from rarekit._memory import available_memory
from rarekit.counting import INT64_MAX, as_counts, as_ids, checked_ignore_index, is_integer
from rarekit.reference import as_int64
from rarekit.sampling.strategy import encode_labels, resolve_sampling_strategy, strategy_input

DENSE_LABEL_SPAN = 1 << 16  # integer labels spanning at most max(2 N, this) values index the buckets directly
SEQUENCE_RULES = ("rarest", "mean_inverse")
INDEX_BYTES = 8  # an int64 index
UNCHECKED_BYTES = 1 << 28  # resamples needing less memory than this are not checked against the memory free


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
    labels by one ``numpy.unique`` on the host (:func:`rarekit.sampling.strategy.encode_labels`).
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
    # the counts come from the buckets themselves: no CUDA host sync to re-check them (CPU always checks)
    return ops.draw_from_buckets(buckets.order, buckets.offsets, bucket_draw_counts(buckets, per_class),
                                 sum(per_class), seed, replacement, check=False)


def check_resample_size(buckets: LabelBuckets, targets: dict, kind: str, bytes_per_sample: int = INDEX_BYTES) -> int:
    """The size of the resample of ``targets`` (:func:`resample`), checked by :func:`check_resample_fits`
    on the device of the labels."""
    prefix, lengths = resample_runs(buckets, targets, kind)
    total = prefix + sum(lengths)
    check_resample_fits(targets, buckets.class_counts, kind, total, bytes_per_sample, buckets.order.device)
    return total


def check_resample_fits(targets: dict, class_counts: dict, kind: str, total: int, bytes_per_sample: int,
                        device=None) -> None:
    """Refuses, before anything is allocated, a resample of ``total`` samples (``targets``, the resolved
    ``sampling_strategy`` of ``kind``) that overflows int64 or whose ``bytes_per_sample`` per sample need
    more memory than ``device`` has free: a ValueError naming ``sampling_strategy`` and its largest count."""
    needed = total * bytes_per_sample
    if needed < UNCHECKED_BYTES or not targets:
        return
    free = available_memory(device)
    if total <= INT64_MAX and needed <= free:
        return
    label = max(targets, key=targets.__getitem__)
    requested = targets[label] + (class_counts[label] if kind == "over" else 0)
    limit = "more than int64 holds" if total > INT64_MAX else \
        f"{needed / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB of memory free"
    raise ValueError(f"sampling_strategy asks for {requested:,} samples of class {label!r}: the resample would hold "
                     f"{total:,} samples, {limit}")


def resample(buckets: LabelBuckets, targets: dict, kind: str, replacement: bool, seed: int) -> torch.Tensor:
    """The indices of the resample, in imbalanced-learn's order, given ``targets``, the resolved
    ``sampling_strategy_`` (:func:`rarekit.sampling.strategy.resolve_sampling_strategy`).

    - ``kind="over"``: every index once, ascending, then ``targets[c]`` draws with replacement from each
      targeted class ``c``, class after class;
    - ``kind="under"``: class after class, ``targets[c]`` indices of each targeted class (a random
      subset, or draws with ``replacement``), every index of the others in ascending order.

    A resample too large for memory raises ValueError first (:func:`check_resample_size`).
    """
    check_resample_size(buckets, targets, kind)
    n, device = buckets.order.numel(), buckets.order.device
    _, per_class = resample_runs(buckets, targets, kind)
    if kind == "over":  # one buffer: arange(n), then the draws written behind it
        indices = torch.empty(n + sum(per_class), dtype=torch.int64, device=device)
        _backend.advise_huge_pages(indices)
        torch.arange(n, out=indices[:n])
        ops.draw_from_buckets_into(buckets.order, buckets.offsets, bucket_draw_counts(buckets, per_class), seed, True,
                                   indices[n:], check=False)  # counts from the buckets: no CUDA host sync
        return indices
    if not replacement:  # untargeted classes are drawn in full, which keeps them in order
        return draw_per_class(buckets, per_class, seed, False)
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


def resample_runs(buckets: LabelBuckets, targets: dict, kind: str) -> tuple[int, list[int]]:
    """The layout of :func:`resample`'s indices: ``(prefix, lengths)``, the first ``prefix`` indices are
    ``arange(prefix)``, then come ``lengths[i]`` indices of class ``labels[i]``, class after class."""
    if kind == "over":
        return buckets.order.numel(), [targets.get(label, 0) for label in buckets.labels]
    return 0, [targets.get(label, count) for label, count in zip(buckets.labels, buckets.counts)]


def exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    """``[0, v_0, v_0 + v_1, ...]`` without the grand total: where each of consecutive runs starts."""
    return values.cumsum(0) - values


def oversample_indices(y, sampling_strategy="auto", *, seed: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The indices of a random over-sample of ``y``, as imbalanced-learn's ``RandomOverSampler`` draws it:
    ``arange(N)``, then, class after class in sorted order, uniform draws with replacement from each
    targeted class until it reaches its count under ``sampling_strategy`` (see :mod:`rarekit.sampling.strategy`).

    Args:
        y: labels: a 1-D tensor of any integer dtype (the work stays on its device), a numpy array or a
            list of integers, strings or other sortable labels.
        seed: the draws are a function of a 64-bit seed (the same indices on any device and thread count):
            ``seed``, or one drawn from ``generator``, or one drawn from torch's default generator.
        generator: the generator the seed is drawn from when ``seed`` is None.

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
