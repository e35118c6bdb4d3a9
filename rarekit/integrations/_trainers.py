"""The ready-made Trainers of :mod:`rarekit.integrations.transformers`. This module imports
transformers; that one imports it from here only when one of these names is used."""
from transformers import Trainer

from rarekit.integrations.transformers import FusedCausalLMLossMixin, WeightedCausalLMLossMixin


class FusedCausalLMTrainer(FusedCausalLMLossMixin, Trainer):
    """``transformers.Trainer`` whose loss is a ``fused_causal_lm_loss`` (see ``FusedCausalLMLossMixin``)."""


class WeightedCausalLMTrainer(WeightedCausalLMLossMixin, Trainer):
    """``transformers.Trainer`` for ``compute_loss_func=weighted_causal_lm_loss(...)`` that counts Σ w_y of
    the accumulated batch (see ``WeightedCausalLMLossMixin``)."""
