"""A ``torch.utils.data.Sampler`` that resamples for balance anew each epoch, on rarekit's index kernels."""
from __future__ import annotations

import numpy as np
import torch

from rarekit._memory import available_memory
from rarekit.counting import INT64_MAX, as_counts, is_integer
from rarekit.reference import as_int64
from rarekit.sampling.indices import (INDEX_BYTES, UNCHECKED_BYTES, LabelBuckets, bucket_labels, check_resample_size,
                                     resample)
from rarekit.sampling.strategy import resolve_sampling_strategy, strategy_input


RESAMPLE = "resample"  # num_samples: an epoch is one whole resample (imbalanced-learn's size)


def _non_negative_int(value, name: str) -> int:
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """A ``torch.utils.data.Sampler`` that resamples for balance anew each epoch.

    An epoch is ``num_samples`` indices, by default as many as the dataset has samples (``len(labels)``
    or ``len(weights)``), as ``WeightedRandomSampler`` and torchsampler's ``ImbalancedDatasetSampler``
    draw. Give one of:

    - ``labels``: the indices come from resamples of imbalanced-learn's ``RandomOverSampler``
      (:func:`oversample_indices`; ``replacement=True``) or ``RandomUnderSampler`` without replacement
      (:func:`undersample_indices`; ``replacement=False``) under ``sampling_strategy``, shuffled if
      ``shuffle``: as many independent resamples, one after the other, as ``num_samples`` needs, the
      last one cut to a uniform random subset (in the resample's order when not ``shuffle``).
      ``num_samples="resample"`` makes an epoch one whole resample (imbalanced-learn's size: for
      over-sampling, every class as large as the majority).
    - ``weights``: per-sample weights ``w ≥ 0``; each epoch draws ``num_samples`` indices with
      probability ``w_i / Σw``: with ``replacement`` by inverse-CDF search of a float64
      cumulative sum, without it by Efraimidis-Spirakis keys ``E_i / w_i``, ``E_i ~ Exp(1)``, smallest first
      (Efraimidis & Spirakis 2006). Unlike ``WeightedRandomSampler`` (``torch.multinomial``), there is
      no 2^24 limit on the number of weights; memory is O(N). ``shuffle=False`` sorts the draws.

    The stream of an epoch is a function of ``(seed, epoch)``. In one process (``num_replicas`` 1) each
    iteration advances the epoch by itself, so each pass over a DataLoader draws anew, as
    ``RandomSampler`` reshuffles. With ``num_replicas`` > 1 (default: the world size of an initialized
    ``torch.distributed``), call :meth:`set_epoch` before each epoch, as for ``DistributedSampler``: every
    rank then draws the same stream, and rank ``rank`` iterates over positions ``rank, rank +
    num_replicas, ...`` of it, padded with its head to a multiple of ``num_replicas`` (or cut to one if
    ``drop_last``), as ``DistributedSampler`` shards: the shards are disjoint, of equal length, and cover
    the epoch. An explicit :meth:`set_epoch` pins the epoch in one process too. Labels and weights are
    kept on the CPU.
    """

    buckets: LabelBuckets | None  # the labels', or None with weights
    weights: torch.Tensor | None

    def __init__(self, labels=None, *, weights=None, sampling_strategy="auto", num_samples: int | str | None = None,
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
        self._epoch_pinned = False  # set_epoch was called: the epoch advances only by set_epoch
        if labels is not None:
            self.kind = "over" if replacement else "under"
            self.buckets = bucket_labels(labels.cpu() if isinstance(labels, torch.Tensor) else labels, "labels")
            self.targets = resolve_sampling_strategy(sampling_strategy, self.buckets.class_counts, self.kind,
                                                     y=strategy_input(labels))
            self.weights = None
            self.resample_size = check_resample_size(self.buckets, self.targets, self.kind)  # drawn each epoch
            dataset_size = self.buckets.order.numel()
        else:
            self.buckets = None
            self.weights = as_counts(weights, "weights").detach().cpu().double()
            self.cumulative = self.weights.cumsum(0)
            positive = self.weights.gt(0).nonzero()
            if positive.numel() == 0:
                raise ValueError(f"weights must have a positive entry, got {self.weights.numel()} zeros")
            self.last_positive, self.num_positive = int(positive[-1]), positive.numel()
            dataset_size = self.weights.numel()
        if isinstance(num_samples, str):
            if num_samples != RESAMPLE:
                raise ValueError(f"num_samples must be a non-negative integer, None (the dataset's size) or "
                                 f"{RESAMPLE!r}, got {num_samples!r}")
            if self.buckets is None:
                raise ValueError(f"num_samples={RESAMPLE!r} needs labels; weights have no resample size")
            self.num_samples = self.resample_size
        else:
            self.num_samples = dataset_size if num_samples is None else _non_negative_int(num_samples, "num_samples")
            needed = self.num_samples * INDEX_BYTES
            if needed >= UNCHECKED_BYTES and (self.num_samples > INT64_MAX or needed > available_memory()):
                raise ValueError(f"num_samples={self.num_samples:,} needs {needed / 2**30:,.1f} GiB for the indices of "
                                 f"one epoch, more than the {available_memory() / 2**30:,.1f} GiB of memory free")
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
        """Makes the next iterations the stream of ``epoch`` (and stops the epoch from advancing by
        itself); under DDP, call it before each epoch."""
        self.epoch = _non_negative_int(epoch, "epoch")
        self._epoch_pinned = True

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
            return self._weighted_draws(self.weights, torch.Generator().manual_seed(self._seed()))
        buckets = self.buckets
        assert buckets is not None  # the constructor sets either weights or the labels' buckets
        whole_rounds, rest = divmod(self.num_samples, self.resample_size) if self.resample_size else (0, 0)
        rounds = [torch.zeros(0, dtype=torch.int64)]
        for round_index in range(whole_rounds + (rest > 0)):
            indices = resample(buckets, self.targets, self.kind, self.replacement, self._seed(round_index))
            generator = torch.Generator().manual_seed(self._seed(round_index, 1))
            if self.shuffle:  # the head of a shuffled resample is a uniform random subset of it
                indices = indices[torch.randperm(indices.numel(), generator=generator)]
            elif round_index == whole_rounds:  # a uniform random subset, in the resample's order
                indices = indices[torch.randperm(indices.numel(), generator=generator)[:rest].sort().values]
            rounds.append(indices)
        return torch.cat(rounds)[:self.num_samples]

    def _weighted_draws(self, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.replacement:
            uniforms = torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * self.cumulative[-1]
            draws = torch.searchsorted(self.cumulative, uniforms, right=True).clamp_(max=self.last_positive)
        else:
            exponentials = torch.empty_like(weights).exponential_(generator=generator)
            draws = torch.topk(exponentials / weights, self.num_samples, largest=False).indices
        return draws if self.shuffle else draws.sort().values

    def __iter__(self):
        stream = self.epoch_indices()
        if self.num_replicas == 1 and not self._epoch_pinned:
            self.epoch += 1
        total = self.per_replica * self.num_replicas
        if total > stream.numel():  # pad with the head of the stream, repeated as often as needed
            stream = stream.repeat(-(-total // max(stream.numel(), 1)))
        return iter(stream[self.rank:total:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_replica
