"""The vocabulary-parallel cross-entropy's kernel: one shard's per-row partials.

``torch.ops.rarekit.vocab_parallel_statistics(logits, target, weight, logit_adjustment, vocab_start,
ignore_index, label_smoothing, target_weighted)`` reads the (rows, V_r) logits of the shard whose first
class is ``vocab_start`` once and returns the (3, rows) block, (4, rows) with label smoothing, that
:mod:`rarekit.distributed._statistics` gathers and combines: max, log Σ exp against it, the target's logit
against it where this shard owns the target (``target`` holds global ids), and the smoothing sum
Σ_k v'_k (lse_r - z'_k); an ignored row gets (-inf, 0, 0, 0). ``weight`` and ``logit_adjustment`` are the
shard's (V_r,) slices. In float32 (float64 for float64 logits); not differentiable (the statistics of
the forward only; the gradient is ``cross_entropy_backward``'s, from the combined row terms).
"""
from __future__ import annotations

import torch

from rarekit import _backend
from rarekit.ops.cross_entropy import accumulator_dtype


def statistics_count(label_smoothing: float) -> int:
    """Rows of the partials block: max, log-sum-exp, target logit, and the smoothing sum with smoothing."""
    return 4 if label_smoothing > 0 else 3


if _backend._C is not None:
    @torch.library.register_fake("rarekit::vocab_parallel_statistics")
    def _statistics_fake(logits, target, weight, logit_adjustment, vocab_start, ignore_index, label_smoothing,
                         target_weighted):
        return logits.new_empty((statistics_count(label_smoothing), logits.shape[0]), dtype=accumulator_dtype(logits))
