"""Tensor-parallel (vocabulary-parallel) losses on ``torch.distributed``: the LM head's logits, or its
classifier, split over the vocabulary across ranks, with every keyword of :func:`rarekit.cross_entropy`
(class weights, ignore_index, both label-smoothing modes, focal loss, logit adjustment, z-loss), exact.

- :func:`vocab_parallel_cross_entropy` / :class:`VocabParallelCrossEntropyLoss`: each rank holds an
  (N, V_r) slice of the logits;
- :func:`vocab_parallel_linear_cross_entropy` / :class:`VocabParallelLinearCrossEntropyLoss`: each rank
  holds (V_r, D) rows of the classifier, and the logits are never materialized.

Modules: :mod:`.cross_entropy`, :mod:`.linear` (the two losses), ``_statistics`` (the row math: a
shard's partial statistics, their combination, a shard's gradient), ``_shards`` (the group, the
exchange and the checks every rank agrees on), ``_common`` (shared checks and reductions).
Not imported by ``import rarekit``: ``from rarekit.distributed import ...``.
"""
from rarekit.distributed.cross_entropy import VocabParallelCrossEntropyLoss, vocab_parallel_cross_entropy
from rarekit.distributed.linear import VocabParallelLinearCrossEntropyLoss, vocab_parallel_linear_cross_entropy

__all__ = ["VocabParallelCrossEntropyLoss", "VocabParallelLinearCrossEntropyLoss", "vocab_parallel_cross_entropy",
           "vocab_parallel_linear_cross_entropy"]
