"""Hugging Face ``transformers``: rarekit's weighted cross-entropy as a causal-LM ``Trainer`` loss.

Two entry points:

* :func:`weighted_causal_lm_loss` — a ``compute_loss_func`` for ``Trainer`` (or
  :class:`WeightedCausalLMTrainer`). The model has already computed the (batch, tokens, vocab)
  logits by the time it is called.
* :func:`fused_causal_lm_loss` with :class:`FusedCausalLMTrainer` (or :class:`FusedCausalLMLossMixin`
  on any ``Trainer`` subclass) — the logits are never materialized: the loss runs the model, keeps
  the input of its LM head and calls :func:`rarekit.linear_cross_entropy` on it.

With class weights, both divide by Σ w_y over the whole accumulated batch (torch's weighted mean,
``normalize="weights"``), which rarekit's Trainers count where transformers' counts tokens;
``normalize="tokens"`` divides by the number of tokens instead, as a plain ``Trainer`` does.

::

    from rarekit.integrations.transformers import FusedCausalLMTrainer, fused_causal_lm_loss

    weights = rarekit.class_weights(token_counts, "inverse_sqrt")
    trainer = FusedCausalLMTrainer(model=model, args=args, train_dataset=data,
                                   fused_loss=fused_causal_lm_loss(weights, label_smoothing=0.1))

Importing this module does not import transformers; the two Trainer classes are built from
``rarekit.integrations._trainers`` on first use.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from rarekit.integrations._causal_lm import (INSTALL_HINT, TRAINER_IGNORE_INDEX, CausalLMLoss, LossType,
                                             check_reserved, logits_of, require_transformers, shifted)
from rarekit.integrations._fused_lm import FusedCausalLMLoss
from rarekit.losses._options import mean_divisor
from rarekit.losses.cross_entropy import cross_entropy

if TYPE_CHECKING:
    from rarekit.integrations._trainers import FusedCausalLMTrainer, WeightedCausalLMTrainer

__all__ = ["FusedCausalLMLoss", "FusedCausalLMLossMixin", "FusedCausalLMTrainer",
           "WeightedCausalLMLoss", "WeightedCausalLMLossMixin", "WeightedCausalLMTrainer", "fused_causal_lm_loss",
           "weighted_causal_lm_loss"]
TRAINERS = ("FusedCausalLMTrainer", "WeightedCausalLMTrainer")


class WeightedCausalLMLoss(CausalLMLoss):
    """Causal-LM cross-entropy on a model's logits with class weights; made by :func:`weighted_causal_lm_loss`."""

    name = "weighted_causal_lm_loss"
    trainer = "WeightedCausalLMTrainer (or WeightedCausalLMLossMixin)"

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("weighted_causal_lm_loss needs the labels (the Trainer passes inputs['labels'])")
        model_logits = logits_of(outputs)
        vocab = model_logits.shape[-1]
        logits = model_logits.float().reshape(-1, vocab)
        target = shifted(labels.to(logits.device), self.ignore_index).reshape(-1)
        weight = self.class_weights.on(vocab, logits.device)
        keywords = self.keywords
        if keywords.get("inplace_backward") and not _may_overwrite(logits, model_logits):
            keywords = {**keywords, "inplace_backward": False}
        if num_items_in_batch is None:
            return cross_entropy(logits, target, weight, ignore_index=self.ignore_index, reduction="mean", **keywords)
        total = cross_entropy(logits, target, weight, ignore_index=self.ignore_index, reduction="sum", **keywords)
        return self.divided(total, target, weight, num_items_in_batch)


def _may_overwrite(logits: torch.Tensor, model_logits: torch.Tensor) -> bool:
    """Whether ``inplace_backward`` may write the gradient into ``logits``: only when a backward will
    follow (grad mode on, logits that require grad) and ``logits`` are the loss's own float32 copy, not
    the model's output, which the caller still holds (``Trainer.prediction_step`` hands it to
    ``compute_metrics``)."""
    return (torch.is_grad_enabled() and logits.requires_grad
            and logits.untyped_storage().data_ptr() != model_logits.untyped_storage().data_ptr())


def weighted_causal_lm_loss(class_weights=None, *, ignore_index: int = -100, normalize: str = "weights",
                            **cross_entropy_kwargs) -> WeightedCausalLMLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer`` (transformers ≥ 4.46, 5.x): causal-LM
    cross-entropy with per-token-id class weights on rarekit's fused kernel.

    The returned ``loss(outputs, labels, num_items_in_batch=None)`` does what transformers' own causal-LM
    loss does: the logits at position t predict ``labels[..., t + 1]`` (the labels are shifted left and
    padded with ``ignore_index``; ``-100`` marks padding and prompt tokens), the logits are upcast to
    float32 and flattened to (tokens, vocab), and

    * without ``num_items_in_batch``, the mean over the kept tokens (with class weights: divided by
      Σ w_y, as ``torch.nn.functional.cross_entropy``);
    * with it (the Trainer's size of the whole accumulated batch, so that gradient accumulation
      averages correctly), the summed loss divided by Σ w_y of the accumulated batch
      (``normalize="weights"``, torch's weighted mean), or by its number of kept tokens
      (``normalize="tokens"``). A plain ``Trainer`` counts only tokens, so with class weights,
      ``"weights"`` and gradient accumulation (or several processes) train with
      :class:`WeightedCausalLMTrainer`, which counts Σ w_y; the plain ``Trainer`` then raises
      ``ValueError`` rather than divide by the wrong number.

    ``inplace_backward=True`` (a :func:`rarekit.cross_entropy` keyword) writes the gradient into the
    float32 upcast of lower-precision logits, and only when a backward follows (grad mode on, logits
    that require grad); float32 logits are the model's own output, which the caller still holds, and
    are never overwritten.

    Args:
        class_weights: per-vocabulary-id weights (vocab,), e.g. from :func:`rarekit.class_weights`, or None.
        ignore_index: the label value to skip.
        normalize: ``"weights"`` or ``"tokens"``, as above (the same without class weights).
        **cross_entropy_kwargs: further keywords of :func:`rarekit.cross_entropy` (``label_smoothing``,
            ``smoothing_mode``, ``focal_gamma``, ``z_loss``, ``logit_adjustment``, ``inplace_backward``, ...).
    """
    require_transformers()
    check_reserved("weighted_causal_lm_loss", cross_entropy_kwargs, ("reduction", "weight", "target"))
    return WeightedCausalLMLoss(class_weights, ignore_index=ignore_index, normalize=normalize,
                                keywords=cross_entropy_kwargs)


def fused_causal_lm_loss(class_weights=None, *, ignore_index: int = -100, normalize: str = "weights",
                         **keywords) -> FusedCausalLMLoss:
    """Causal-LM cross-entropy with class weights that never materializes the (tokens, vocab) logits,
    for :class:`FusedCausalLMTrainer` (or a plain training loop: ``loss, _ = fused(model, batch)``).

    It equals transformers' own ``labels=`` loss (with ``class_weights``: :func:`weighted_causal_lm_loss`
    on the materialized logits) on any decoder-only model whose LM head is a plain ``nn.Linear``, tied to
    the input embeddings or not, with ``config.final_logit_softcapping`` applied where set (Gemma 2):

    * without ``num_items_in_batch``, the mean over the kept tokens (divided by Σ w_y with weights);
    * with it, the summed loss divided by the size of the accumulated batch, Σ w_y or the number of
      kept tokens by ``normalize`` (see :func:`weighted_causal_lm_loss`).

    The loss is returned as float32 but computed as :func:`rarekit.linear_cross_entropy` returns it, in
    the model's dtype: for a bf16 model it is rounded to bf16 (relative error ≤ 2^-9) where transformers,
    which upcasts the whole logits, keeps float32.

    ``compute_loss_func`` cannot do this: the Trainer calls it with outputs that already hold the
    logits, so the fused loss replaces ``Trainer.compute_loss`` instead (:class:`FusedCausalLMLossMixin`).

    Args:
        class_weights: per-vocabulary-id weights (vocab,), e.g. from :func:`rarekit.class_weights`, or None.
        ignore_index: the label value to skip.
        normalize: ``"weights"`` or ``"tokens"``, as above (the same without class weights).
        **keywords: :func:`rarekit.linear_cross_entropy`'s ``label_smoothing``, ``smoothing_mode``,
            ``focal_gamma``, ``logit_adjustment``, ``z_loss`` and ``chunk_size``.
    """
    require_transformers()
    return FusedCausalLMLoss(class_weights, ignore_index=ignore_index, normalize=normalize, **keywords)


# --- Trainer mixins --------------------------------------------------------------------------------------

class _RarekitLossTrainer:
    """What both mixins do to a ``transformers.Trainer``: apply ``TrainingArguments.label_smoothing_factor``
    to the rarekit loss (the Trainer's ``LabelSmoother`` is torch's uniform smoothing, the mean over
    the kept tokens of (1-ε)·nll + ε·mean_k(-log p_k)), and count Σ w_y of the accumulated batch where
    the Trainer counts its kept tokens (``num_items_in_batch``)."""

    args: Any  # the Trainer's
    accelerator: Any
    compute_loss_func: Any
    get_tp_size: Callable[[], int]
    rarekit_loss: CausalLMLoss

    def _adopted(self, loss: LossType) -> LossType:
        """The copy of ``loss`` this Trainer calls."""
        factor = self.args.label_smoothing_factor
        if factor:
            own = loss.keywords.get("label_smoothing", 0.0)
            if own and own != factor:
                raise ValueError(f"TrainingArguments.label_smoothing_factor = {factor} and the loss's "
                                 f"label_smoothing = {own} disagree; set only one of them")
            loss = loss.with_keywords(label_smoothing=factor)
        if loss.divides_by_weight_sum:
            if not hasattr(super(), "_get_num_items_in_batch"):
                raise ValueError(f"{loss.name}(normalize='weights') with class weights needs a transformers "
                                 "Trainer with _get_num_items_in_batch (transformers 5.x); pass normalize='tokens' "
                                 "or upgrade transformers")
            loss = loss.counted_by_weight_sums()
        self.rarekit_loss = loss
        # The loss shifts the labels: the Trainer counts labels[..., 1:] of the accumulated batch.
        self._loss_shifts_labels = True
        return loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The Trainer's count of kept tokens, times Σ w_y / (number of kept tokens) of the accumulated
        batch (of every process, where the Trainer gathers its count): Σ w_y as the Trainer would count
        it, scaled as the Trainer scales its count for processes that share a batch."""
        count = super()._get_num_items_in_batch(batch_samples, device)  # type: ignore[misc]
        loss = self.rarekit_loss
        if count is None or loss.class_weights.weights is None or loss.normalize != "weights":
            return count
        vocab = loss.class_weights.weights.shape[0]
        tokens = weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batch_samples:
            target = batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]
            weight = loss.class_weights.on(vocab, target.device, torch.float64)
            tokens = tokens + (target != TRAINER_IGNORE_INDEX).sum().to(device)
            weight_sum = weight_sum + mean_divisor(target, weight, vocab, loss.ignore_index, torch.float64).to(device)
        totals = torch.stack([tokens, weight_sum])
        if getattr(self.args, "average_tokens_across_devices", False) and self.args.world_size > 1:
            totals = self.accelerator.gather(totals).reshape(-1, 2).sum(0)
        tokens, weight_sum = totals
        return (count * torch.where(tokens > 0, weight_sum / tokens, 1.0)).float()


class FusedCausalLMLossMixin(_RarekitLossTrainer):
    """Put before a ``transformers.Trainer`` class (``class MyTrainer(FusedCausalLMLossMixin, Trainer)``,
    e.g. with TRL's SFTTrainer) to compute the training and evaluation loss with a
    :class:`FusedCausalLMLoss`, passed as ``fused_loss=`` (default: ``fused_causal_lm_loss()``).

    The Trainer then counts the kept shifted labels of the whole accumulated batch
    (``num_items_in_batch``; with class weights and ``normalize="weights"``, their Σ w_y) for every
    model and does not divide the loss by the accumulation steps again; with
    ``average_tokens_across_devices`` the loss is scaled as the Trainer scales its own.
    ``TrainingArguments.label_smoothing_factor`` is applied as the Trainer applies it (a loss with
    another ``label_smoothing`` raises). ``self.fused_loss`` is the copy of ``fused_loss`` the Trainer
    calls. Evaluation returns no logits (use ``prediction_loss_only``, or the model's own forward to predict).
    """

    def __init__(self, *args, fused_loss: FusedCausalLMLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self, "compute_loss_func", None) is not None:
            raise ValueError("FusedCausalLMTrainer computes the loss itself; pass fused_loss=, not compute_loss_func=")
        fused_loss = fused_loss if fused_loss is not None else fused_causal_lm_loss()
        if not isinstance(fused_loss, FusedCausalLMLoss):
            raise TypeError(f"fused_loss must come from fused_causal_lm_loss(...), got {type(fused_loss).__name__}")
        self.fused_loss = self._adopted(fused_loss)
        # The fused loss takes num_items_in_batch, whatever the model's forward accepts.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.fused_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as Trainer.compute_loss: num_items_in_batch counts every process's tokens
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


class WeightedCausalLMLossMixin(_RarekitLossTrainer):
    """Put before a ``transformers.Trainer`` class (``class MyTrainer(WeightedCausalLMLossMixin, Trainer)``)
    whose ``compute_loss_func`` is a :func:`weighted_causal_lm_loss`: the Trainer then counts Σ w_y of
    the accumulated batch for its ``normalize="weights"`` (torch's weighted mean over the whole
    accumulated batch, on every process where the Trainer averages tokens across devices) and applies
    ``TrainingArguments.label_smoothing_factor`` to it, which a plain Trainer ignores when
    ``compute_loss_func`` is set. ``self.compute_loss_func`` is the copy of the loss the Trainer calls.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        loss = getattr(self, "compute_loss_func", None)
        if not isinstance(loss, WeightedCausalLMLoss):
            raise TypeError(f"WeightedCausalLMTrainer needs compute_loss_func=weighted_causal_lm_loss(...), got "
                            f"{type(loss).__name__}")
        self.compute_loss_func = self._adopted(loss)


def __getattr__(name: str):
    """``FusedCausalLMTrainer`` and ``WeightedCausalLMTrainer`` (the mixins + ``transformers.Trainer``),
    imported on first use so that importing this module does not import transformers."""
    if name in TRAINERS:
        require_transformers()
        from rarekit.integrations import _trainers

        return getattr(_trainers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *TRAINERS})
