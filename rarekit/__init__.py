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
# Re-exported as ``name as name`` (PEP 484's explicit re-export) rather than listed in ``__all__``:
# pydoc documents every ``__all__`` class in full, and the nn.Module methods each loss inherits made
# ``help(rarekit)`` some 9,000 lines; without ``__all__`` it is the overview above.
from rarekit._backend import backend_info as backend_info
from rarekit._backend import release_cpu_buffers as release_cpu_buffers
from rarekit._backend import set_backend as set_backend
from rarekit.augment import RareAugmenter as RareAugmenter
from rarekit.augment import augment_minority as augment_minority
from rarekit.augment import augment_rare_tokens as augment_rare_tokens
from rarekit.counting import TokenCounter as TokenCounter
from rarekit.counting import count as count
from rarekit.counting import rare_ids as rare_ids
from rarekit.losses import AsymmetricLoss as AsymmetricLoss
from rarekit.losses import BCEWithLogitsLoss as BCEWithLogitsLoss
from rarekit.losses import ClassBalancedLoss as ClassBalancedLoss
from rarekit.losses import CrossEntropyLoss as CrossEntropyLoss
from rarekit.losses import FocalLoss as FocalLoss
from rarekit.losses import LDAMLoss as LDAMLoss
from rarekit.losses import LinearCrossEntropyLoss as LinearCrossEntropyLoss
from rarekit.losses import LogitAdjustedLoss as LogitAdjustedLoss
from rarekit.losses import binary_cross_entropy_with_logits as binary_cross_entropy_with_logits
from rarekit.losses import cross_entropy as cross_entropy
from rarekit.losses import linear_cross_entropy as linear_cross_entropy
from rarekit.losses import sigmoid_focal_loss as sigmoid_focal_loss
from rarekit.plots import plot_frequencies as plot_frequencies
from rarekit.sampling import BalancedSampler as BalancedSampler
from rarekit.sampling import oversample_indices as oversample_indices
from rarekit.sampling import resolve_sampling_strategy as resolve_sampling_strategy
from rarekit.sampling import sequence_weights as sequence_weights
from rarekit.sampling import undersample_indices as undersample_indices
from rarekit.weights import class_weights as class_weights
from rarekit.weights import ldam_margins as ldam_margins

__version__ = "0.1.0"


def __getattr__(name: str):
    """The imbalanced-learn drop-ins load on first use: they need the ``rarekit[sampling]`` extra."""
    if name in ("RandomOverSampler", "RandomUnderSampler"):
        from rarekit.sampling import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module 'rarekit' has no attribute {name!r}")
