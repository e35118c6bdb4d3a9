"""Resampling for imbalanced classes.

- :mod:`.indices`: the index draws of imbalanced-learn's random samplers on rarekit's kernels
  (:func:`oversample_indices`, :func:`undersample_indices`) and per-sequence weights for rare tokens;
- :mod:`.strategy`: every ``sampling_strategy`` form of imbalanced-learn, validated and resolved;
- :mod:`.balanced`: :class:`BalancedSampler`, a PyTorch data sampler;
- :mod:`.samplers`: the imbalanced-learn drop-ins ``RandomOverSampler`` and ``RandomUnderSampler``
  (``pip install rarekit[sampling]``; loaded on first use, so importing this package needs neither
  scikit-learn nor imbalanced-learn).
"""
from rarekit.sampling.balanced import BalancedSampler
from rarekit.sampling.indices import oversample_indices, sequence_weights, undersample_indices
from rarekit.sampling.strategy import resolve_sampling_strategy

__all__ = ["BalancedSampler", "RandomOverSampler", "RandomUnderSampler", "oversample_indices",
           "resolve_sampling_strategy", "sequence_weights", "undersample_indices"]


def __getattr__(name: str):
    """The imbalanced-learn drop-ins load on first use: they need the ``rarekit[sampling]`` extra."""
    if name in ("RandomOverSampler", "RandomUnderSampler"):
        from rarekit.sampling import samplers
        return getattr(samplers, name)
    raise AttributeError(f"module 'rarekit.sampling' has no attribute {name!r}")
