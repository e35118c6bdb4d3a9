"""Augmented variants of texts for rare classes and rare tokens (``pip install rarekit[augment]``).

- :class:`RareAugmenter` (:mod:`.augmenter`): variants of texts by a masked LM or an nlpaug method, with
  protected words kept (:mod:`.protection`);
- :func:`augment_minority`, :func:`augment_rare_tokens` (:mod:`.minority`): augmentation as resampling;
- :class:`~rarekit.augment.masked_lm.MaskedLM`: rarekit's batched whole-word masked-LM filling;
- :func:`contextual_word_embs_aug` (:mod:`.nlpaug_compat`): nlpaug's ``ContextualWordEmbsAug`` on it.
"""
from rarekit.augment.augmenter import RareAugmenter, check_wordnet
from rarekit.augment.minority import augment_minority, augment_rare_tokens
from rarekit.augment.nlpaug_compat import contextual_word_embs_aug

__all__ = ["RareAugmenter", "augment_minority", "augment_rare_tokens", "contextual_word_embs_aug", "check_wordnet"]
