"""rarekit: fused PyTorch kernels and tools for class imbalance and rare tokens."""
from rarekit._backend import backend_info, set_backend
from rarekit.augment import RareAugmenter, augment_minority, augment_rare_tokens
from rarekit.counting import TokenCounter, count, rare_ids
from rarekit.losses import (AsymmetricLoss, BCEWithLogitsLoss, ClassBalancedLoss, CrossEntropyLoss, FocalLoss,
                            LinearCrossEntropyLoss, LogitAdjustedLoss, binary_cross_entropy_with_logits, cross_entropy,
                            linear_cross_entropy, sigmoid_focal_loss)
from rarekit.plots import plot_frequencies
from rarekit.sampling import (BalancedSampler, oversample_indices, resolve_sampling_strategy, sequence_weights,
                              undersample_indices)
from rarekit.weights import class_weights

__all__ = ["ClassBalancedLoss", "CrossEntropyLoss", "FocalLoss", "LogitAdjustedLoss", "cross_entropy",
           "LinearCrossEntropyLoss", "linear_cross_entropy",
           "AsymmetricLoss", "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
           "TokenCounter", "backend_info", "class_weights", "count", "plot_frequencies", "rare_ids", "set_backend",
           "BalancedSampler", "RandomOverSampler", "RandomUnderSampler", "oversample_indices", "resolve_sampling_strategy",
           "sequence_weights", "undersample_indices", "RareAugmenter", "augment_minority", "augment_rare_tokens"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The imbalanced-learn drop-ins load on first use: they need the ``rarekit[sampling]`` extra."""
    if name in ("RandomOverSampler", "RandomUnderSampler"):
        from rarekit.sampling import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module 'rarekit' has no attribute {name!r}")
