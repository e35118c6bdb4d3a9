"""rarekit: fused PyTorch kernels and tools for class imbalance and rare tokens.

Count how often each class or token occurs, weight the loss by it, resample the data, augment the rare
classes. The heavy parts are C++/CUDA kernels, each held by tests to a pure-PyTorch reference
(``rarekit.reference``) that also runs where the extension is not built (``backend_info()`` says which).

Counting and weights:

    count(ids, num_bins)              int64 histogram of ids (fused kernel)
    TokenCounter(num_bins)            streaming counts; .all_reduce() sums them over torch.distributed ranks
    rare_ids(counts, max_count=5)     the ids of rare classes
    class_weights(counts, scheme)     inverse, inverse_sqrt, effective_number, median_frequency, log, uniform
    ldam_margins(class_counts)        LDAM's per-class margins m_c ∝ n_c^(-1/4) (Cao et al. 2019)
    plot_frequencies(counts, path)    a Zipf plot of the counts (needs matplotlib)

Losses (drop-ins for torch's cross-entropy, plus imbalance-aware variants):

    cross_entropy, CrossEntropyLoss   class weights, label smoothing, focal term, logit adjustment, z-loss
    FocalLoss, LogitAdjustedLoss, ClassBalancedLoss, LDAMLoss
    linear_cross_entropy, LinearCrossEntropyLoss
                                      LM head + cross-entropy, never holding the (tokens, vocab) logits
    binary_cross_entropy_with_logits, BCEWithLogitsLoss, sigmoid_focal_loss, AsymmetricLoss
                                      binary and multi-label: torch's BCE, torchvision's focal loss, ASL

Resampling:

    oversample_indices, undersample_indices
                                      imbalanced-learn's random draws as index tensors
    RandomOverSampler, RandomUnderSampler
                                      imbalanced-learn drop-ins (pip install rarekit[sampling])
    BalancedSampler                   a DataLoader sampler: class-balanced or weighted, sharded under DDP
    sequence_weights                  per-sequence weights from token counts, for BalancedSampler
    resolve_sampling_strategy         every sampling_strategy form of imbalanced-learn

Augmentation (pip install rarekit[augment]):

    RareAugmenter                     variants of texts: a masked LM ("contextual") or an nlpaug method
    augment_minority                  augmentation as over-sampling of the rare classes
    augment_rare_tokens               new contexts for rare words

Hugging Face: ``rarekit.integrations.transformers`` (weighted and fused causal-LM losses for ``Trainer``).
Backend: ``backend_info()``, ``set_backend("reference")``, ``release_cpu_buffers()``.
Command line: ``rarekit count|demo|bench``.

Each name has its own help, e.g. ``help(rarekit.cross_entropy)``; ``make docs`` builds the API reference
site from these docstrings.
"""
from rarekit._backend import backend_info, release_cpu_buffers, set_backend
from rarekit.augment import RareAugmenter, augment_minority, augment_rare_tokens
from rarekit.counting import TokenCounter, count, rare_ids
from rarekit.losses import (AsymmetricLoss, BCEWithLogitsLoss, ClassBalancedLoss, CrossEntropyLoss, FocalLoss,
                            LDAMLoss, LinearCrossEntropyLoss, LogitAdjustedLoss, binary_cross_entropy_with_logits,
                            cross_entropy, linear_cross_entropy, sigmoid_focal_loss)
from rarekit.plots import plot_frequencies
from rarekit.sampling import (BalancedSampler, oversample_indices, resolve_sampling_strategy, sequence_weights,
                              undersample_indices)
from rarekit.weights import class_weights, ldam_margins

__all__ = ["ClassBalancedLoss", "CrossEntropyLoss", "FocalLoss", "LDAMLoss", "LogitAdjustedLoss", "cross_entropy",
           "LinearCrossEntropyLoss", "linear_cross_entropy",
           "AsymmetricLoss", "BCEWithLogitsLoss", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
           "TokenCounter", "backend_info", "class_weights", "count", "ldam_margins", "plot_frequencies", "rare_ids", "release_cpu_buffers",
           "set_backend",
           "BalancedSampler", "RandomOverSampler", "RandomUnderSampler", "oversample_indices", "resolve_sampling_strategy",
           "sequence_weights", "undersample_indices", "RareAugmenter", "augment_minority", "augment_rare_tokens"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The imbalanced-learn drop-ins load on first use: they need the ``rarekit[sampling]`` extra."""
    if name in ("RandomOverSampler", "RandomUnderSampler"):
        from rarekit.sampling import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module 'rarekit' has no attribute {name!r}")
