"""Losses for imbalanced classes and rare tokens on the fused cross-entropy kernels.

- :mod:`.cross_entropy`: :func:`cross_entropy`, ``torch.nn.functional.cross_entropy`` with the same
  semantics plus focal loss, logit adjustment, z-loss and target-weighted smoothing, and its modules;
- :mod:`.linear`: :func:`linear_cross_entropy`, the fused LM head + cross-entropy that never holds the
  (tokens, vocab) logits;
- :mod:`._options`: the argument checks they share.
"""
from rarekit.losses.cross_entropy import (ClassBalancedLoss, CrossEntropyLoss, FocalLoss, LogitAdjustedLoss,
                                          cross_entropy, log_prior)
from rarekit.losses.linear import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["ClassBalancedLoss", "CrossEntropyLoss", "FocalLoss", "LogitAdjustedLoss", "cross_entropy", "log_prior",
           "LinearCrossEntropyLoss", "linear_cross_entropy"]
