"""Losses for imbalanced classes and rare tokens on the fused cross-entropy kernels.

- :mod:`.cross_entropy`: :func:`cross_entropy`, ``torch.nn.functional.cross_entropy`` with the same
  semantics plus focal loss, logit adjustment, z-loss and target-weighted smoothing, and its modules;
- :mod:`.sigmoid`: :func:`binary_cross_entropy_with_logits` (torch's, plus focal and asymmetric terms),
  :func:`sigmoid_focal_loss` (torchvision's), :class:`BCEWithLogitsLoss` and :class:`AsymmetricLoss` (ASL);
- :mod:`.linear`: :func:`linear_cross_entropy`, the fused LM head + cross-entropy that never holds the
  (tokens, vocab) logits;
- :mod:`._options`: the argument checks they share.
"""
from rarekit.losses.cross_entropy import (ClassBalancedLoss, CrossEntropyLoss, FocalLoss, LDAMLoss, LogitAdjustedLoss,
                                          cross_entropy, log_prior)
from rarekit.losses.linear import LinearCrossEntropyLoss, linear_cross_entropy
from rarekit.losses.sigmoid import (AsymmetricLoss, BCEWithLogitsLoss, binary_cross_entropy_with_logits,
                                    sigmoid_focal_loss)

__all__ = ["ClassBalancedLoss", "CrossEntropyLoss", "FocalLoss", "LDAMLoss", "LogitAdjustedLoss", "cross_entropy",
           "log_prior",
           "LinearCrossEntropyLoss", "linear_cross_entropy",
           "AsymmetricLoss", "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "sigmoid_focal_loss"]
