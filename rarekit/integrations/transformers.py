"""Hugging Face ``transformers``: rarekit's weighted cross-entropy as a causal-LM ``Trainer`` loss.

Two entry points:

* :func:`weighted_causal_lm_loss` — a ``compute_loss_func`` for ``Trainer``. The model has already
  computed the (batch, tokens, vocab) logits by the time it is called.
* :func:`fused_causal_lm_loss` with :class:`FusedCausalLMTrainer` (or :class:`FusedCausalLMLossMixin`
  on any ``Trainer`` subclass) — the logits are never materialized: the loss runs the model, keeps
  the input of its LM head and calls :func:`rarekit.linear_cross_entropy` on it.

::

    from rarekit.integrations.transformers import FusedCausalLMTrainer, fused_causal_lm_loss

    weights = rarekit.class_weights(token_counts, "inverse_sqrt")
    trainer = FusedCausalLMTrainer(model=model, args=args, train_dataset=data,
                                   fused_loss=fused_causal_lm_loss(weights, label_smoothing=0.1))
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rarekit.losses.cross_entropy import cross_entropy

INSTALL_HINT = "pip install 'rarekit[augment]' (or 'rarekit[all]')"
FUSED_KEYWORDS = ("label_smoothing", "smoothing_mode", "focal_gamma", "logit_adjustment", "z_loss", "chunk_size")


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401  (absolute import: the library, not this module)
    except ImportError as error:
        raise ImportError(f"rarekit.integrations.transformers needs the transformers package: "
                          f"{INSTALL_HINT}") from error


def _logits_of(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a ``ModelOutput``/dict, a tuple (logits first, as a model called
    without labels returns it) or the tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[0]


def _checked_class_weights(class_weights) -> torch.Tensor | None:
    if class_weights is None:
        return None
    class_weights = torch.as_tensor(class_weights)
    if not class_weights.is_floating_point() or class_weights.dim() != 1:
        raise TypeError(f"class_weights must be a 1-D floating-point tensor (one weight per vocabulary id), "
                        f"got dtype {class_weights.dtype} and shape {tuple(class_weights.shape)}")
    return class_weights


class _ClassWeights:
    """``class_weights`` checked against the vocabulary and copied once to each device and dtype asked for."""

    def __init__(self, class_weights):
        self.weights = _checked_class_weights(class_weights)
        self.copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(self, vocab: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        if self.weights is None:
            return None
        if self.weights.shape != (vocab,):
            raise ValueError(f"class_weights has shape {tuple(self.weights.shape)} but the logits have "
                             f"{vocab} classes")
        copy = self.copies.get((device, dtype))
        if copy is None:
            copy = self.copies[(device, dtype)] = self.weights.to(device, dtype)
        return copy


def _shifted(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """transformers' causal-LM shift: position t predicts ``labels[..., t + 1]``; the last position
    predicts nothing (``ignore_index``)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _normalized(summed_or_mean, num_items_in_batch) -> torch.Tensor:
    """The summed loss divided by ``num_items_in_batch`` (a number or a tensor, moved to the loss's device)."""
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(summed_or_mean.device)
    return summed_or_mean / num_items_in_batch


def _check_reserved(name: str, keywords: dict, reserved) -> None:
    for key in reserved:
        if key in keywords:
            raise TypeError(f"{name}: {key!r} is set by the loss itself")


def weighted_causal_lm_loss(class_weights=None, *, ignore_index: int = -100, **cross_entropy_kwargs):
    """A ``compute_loss_func`` for ``transformers.Trainer`` (transformers ≥ 4.46, 5.x): causal-LM
    cross-entropy with per-token-id class weights on rarekit's fused kernel.

    The returned ``loss(outputs, labels, num_items_in_batch=None)`` does what transformers' own causal-LM
    loss does: the logits at position t predict ``labels[..., t + 1]`` (the labels are shifted left and
    padded with ``ignore_index``; ``-100`` marks padding and prompt tokens), the logits are upcast to
    float32 and flattened to (tokens, vocab), and

    * without ``num_items_in_batch``, the mean over the kept tokens (with class weights: divided by
      Σ w_y, as ``torch.nn.functional.cross_entropy``);
    * with it (the Trainer passes the number of kept tokens over the whole accumulated batch), the
      summed loss divided by ``num_items_in_batch``, so that gradient accumulation averages correctly.

    Args:
        class_weights: per-vocabulary-id weights (vocab,), e.g. from :func:`rarekit.class_weights`, or None.
        ignore_index: the label value to skip.
        **cross_entropy_kwargs: further keywords of :func:`rarekit.cross_entropy` (``label_smoothing``,
            ``smoothing_mode``, ``focal_gamma``, ``z_loss``, ``logit_adjustment``, ``inplace_backward``, ...).
    """
    _require_transformers()
    _check_reserved("weighted_causal_lm_loss", cross_entropy_kwargs, ("reduction", "weight", "target"))
    weights = _ClassWeights(class_weights)

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("weighted_causal_lm_loss needs the labels (the Trainer passes inputs['labels'])")
        logits = _logits_of(outputs).float()
        vocab = logits.shape[-1]
        shifted = _shifted(labels.to(logits.device), ignore_index)
        weight = weights.on(vocab, logits.device)
        flat_logits, flat_labels = logits.reshape(-1, vocab), shifted.reshape(-1)
        if num_items_in_batch is None:
            return cross_entropy(flat_logits, flat_labels, weight, ignore_index=ignore_index, reduction="mean",
                                 **cross_entropy_kwargs)
        total = cross_entropy(flat_logits, flat_labels, weight, ignore_index=ignore_index, reduction="sum",
                              **cross_entropy_kwargs)
        return _normalized(total, num_items_in_batch)

    return loss


# --- the fused loss: the logits are never materialized ------------------------------------------------

class _HeadInput(nn.Module):
    """Stands in for a model's LM head during one forward: keeps the final hidden states it is given
    and returns them unchanged (a (batch, tokens, hidden) tensor in place of the (batch, tokens, vocab)
    logits)."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.seen.append(hidden)
        return hidden


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile; DataParallel (several GPUs in one
    process) replicates the model on every forward, so its LM head cannot be swapped: it raises."""
    while True:
        if isinstance(model, nn.DataParallel):
            raise ValueError("fused_causal_lm_loss does not support nn.DataParallel; run one process per GPU "
                             "(torchrun, DistributedDataParallel) instead")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _plain_linear_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The dotted name and module of ``model.get_output_embeddings()``, which must be a plain
    ``nn.Linear`` (no subclass, hook or patched forward: quantized, LoRA-wrapped and offloaded heads
    compute something else than ``hidden @ weightᵀ + bias``)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"fused_causal_lm_loss needs a decoder-only model; {type(model).__name__} is an "
                         "encoder-decoder model")
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() returned nothing); "
                         "fused_causal_lm_loss needs a ...ForCausalLM model")
    if (type(head) is not nn.Linear or "forward" in vars(head) or head._forward_hooks or head._forward_pre_hooks
            or not head.weight.is_floating_point()):
        raise TypeError(f"fused_causal_lm_loss needs an LM head that is a plain torch.nn.Linear; "
                        f"{type(model).__name__}'s is {type(head).__module__}.{type(head).__qualname__}"
                        f"{' with hooks or a patched forward' if type(head) is nn.Linear else ''}. "
                        "Use weighted_causal_lm_loss (materialized logits) for this model")
    for name, module in model.named_modules(remove_duplicate=False):
        if module is head and name:
            return name, head
    raise ValueError(f"the LM head of {type(model).__name__} is not one of its submodules")


def _softcapped(hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return hidden if softcap is None else softcap * torch.tanh(hidden / softcap)


class FusedCausalLMLoss:
    """Causal-LM cross-entropy of a ``transformers`` model that never materializes the logits; made
    by :func:`fused_causal_lm_loss`.

    ``loss, outputs = fused(model, inputs, num_items_in_batch=None)`` runs ``model(**inputs)`` (without
    the labels) with its LM head swapped for a module that keeps the head's input, the final hidden
    states h, then returns ``rarekit.linear_cross_entropy(h, head.weight, shifted labels, class_weights,
    bias=head.bias, softcap=config.final_logit_softcapping, ...)``. So whatever the model does up to
    its head (final norm, scaling) is its own code; the only post-head step a model may take is
    Gemma 2's soft-capping, and on the first call with each model the loss checks that the output the
    model built from the kept hidden states is exactly that (a model that scales its logits after the
    head, as Cohere and Granite do, raises ``ValueError``). ``outputs`` is the model's output without
    logits, with the loss. Labels come from ``inputs["labels"]`` (shifted as transformers does) or
    ``inputs["shift_labels"]`` (already shifted, as padding-free collators give them).
    """

    def __init__(self, class_weights=None, *, ignore_index: int = -100, **keywords):
        unknown = sorted(set(keywords) - set(FUSED_KEYWORDS))
        if unknown:
            _check_reserved("fused_causal_lm_loss", keywords, ("reduction", "weight", "target", "bias", "softcap"))
            raise TypeError(f"fused_causal_lm_loss: unexpected keywords {unknown}; it takes {list(FUSED_KEYWORDS)}")
        self.weights = _ClassWeights(class_weights)
        self.ignore_index = ignore_index
        self.keywords = keywords
        self._checked: weakref.WeakSet = weakref.WeakSet()  # models whose post-head step was verified
        self._capture = _HeadInput()  # one instance: a torch.compile'd model sees the same module on every call

    def __call__(self, model: nn.Module, inputs: Mapping, num_items_in_batch=None):
        from rarekit.losses.linear import linear_cross_entropy

        inputs = dict(inputs)
        labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            raise ValueError("fused_causal_lm_loss needs inputs['labels'] (or inputs['shift_labels'])")
        inner = _unwrapped(model)
        name, head = _plain_linear_head(inner)
        parent_name, _, attribute = name.rpartition(".")
        parent = inner.get_submodule(parent_name)
        capture = self._capture
        capture.seen.clear()
        setattr(parent, attribute, capture)
        try:
            outputs = model(**inputs)
        finally:
            setattr(parent, attribute, head)
        seen = list(capture.seen)
        capture.seen.clear()  # the hidden states are not kept past the call
        if len(seen) != 1:
            raise ValueError(f"{type(inner).__name__} called its LM head {len(seen)} times in one forward; "
                             "fused_causal_lm_loss supports models that call it once")
        hidden = seen[0]
        softcap = getattr(getattr(inner, "config", None), "final_logit_softcapping", None)
        if inner not in self._checked:
            self._check_post_head(inner, hidden, _logits_of(outputs), softcap)
            self._checked.add(inner)
        target = shift_labels if shift_labels is not None else _shifted(labels, self.ignore_index)
        target = target.to(hidden.device)
        if target.shape != hidden.shape[:-1]:
            raise ValueError(f"the labels have shape {tuple(target.shape)} but the model kept hidden states for "
                             f"{tuple(hidden.shape[:-1])} positions (is logits_to_keep set?)")
        weight = self.weights.on(head.out_features, hidden.device)
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = linear_cross_entropy(hidden.to(head.weight.dtype), head.weight, target, weight, bias=head.bias,
                                    ignore_index=self.ignore_index, reduction=reduction, softcap=softcap,
                                    **self.keywords).float()
        if num_items_in_batch is not None:
            loss = _normalized(loss, num_items_in_batch)
        return loss, _without_logits(outputs, loss)

    @staticmethod
    def _check_post_head(model, hidden, built, softcap) -> None:
        with torch.no_grad():
            expected = _softcapped(hidden, softcap)
            same = built.shape == expected.shape and torch.allclose(built.to(expected.dtype), expected,
                                                                    rtol=1e-3, atol=1e-5)
        if not same:
            raise ValueError(f"{type(model).__name__} transforms the output of its LM head in a way that "
                             f"fused_causal_lm_loss does not reproduce (it applies only "
                             f"config.final_logit_softcapping = {softcap}); use weighted_causal_lm_loss")


def _without_logits(outputs, loss: torch.Tensor):
    """The model's outputs with the loss in place of the stand-in logits."""
    if isinstance(outputs, Mapping):
        kept = {key: value for key, value in outputs.items() if key not in ("logits", "loss")}
        try:
            return type(outputs)(loss=loss, **kept)
        except TypeError:  # a plain dict, or an output class without a loss field
            return {"loss": loss, **kept}
    return (loss,) + tuple(outputs[1:])


def fused_causal_lm_loss(class_weights=None, *, ignore_index: int = -100, **keywords) -> FusedCausalLMLoss:
    """Causal-LM cross-entropy with class weights that never materializes the (tokens, vocab) logits,
    for :class:`FusedCausalLMTrainer` (or a plain training loop: ``loss, _ = fused(model, batch)``).

    It equals transformers' own ``labels=`` loss (with ``class_weights``: :func:`weighted_causal_lm_loss`
    on the materialized logits) on any decoder-only model whose LM head is a plain ``nn.Linear``, tied to
    the input embeddings or not, with ``config.final_logit_softcapping`` applied where set (Gemma 2):

    * without ``num_items_in_batch``, the mean over the kept tokens (divided by Σ w_y with weights);
    * with it, the summed loss divided by ``num_items_in_batch`` (gradient accumulation).

    The loss is returned as float32 but computed as :func:`rarekit.linear_cross_entropy` returns it, in
    the model's dtype: for a bf16 model it is rounded to bf16 (relative error ≤ 2^-9) where transformers,
    which upcasts the whole logits, keeps float32.

    ``compute_loss_func`` cannot do this: the Trainer calls it with outputs that already hold the
    logits, so the fused loss replaces ``Trainer.compute_loss`` instead (:class:`FusedCausalLMLossMixin`).

    Args:
        class_weights: per-vocabulary-id weights (vocab,), e.g. from :func:`rarekit.class_weights`, or None.
        ignore_index: the label value to skip.
        **keywords: :func:`rarekit.linear_cross_entropy`'s ``label_smoothing``, ``smoothing_mode``,
            ``focal_gamma``, ``logit_adjustment``, ``z_loss`` and ``chunk_size``.
    """
    _require_transformers()
    return FusedCausalLMLoss(class_weights, ignore_index=ignore_index, **keywords)


class FusedCausalLMLossMixin:
    """Put before a ``transformers.Trainer`` class (``class MyTrainer(FusedCausalLMLossMixin, Trainer)``,
    e.g. with TRL's SFTTrainer) to compute the training and evaluation loss with a
    :class:`FusedCausalLMLoss`, passed as ``fused_loss=`` (default: ``fused_causal_lm_loss()``).

    The Trainer then counts the kept shifted labels of the whole accumulated batch
    (``num_items_in_batch``) for every model and does not divide the loss by the accumulation steps
    again; with ``average_tokens_across_devices`` the loss is scaled as the Trainer scales its own.
    Evaluation returns no logits (use ``prediction_loss_only``, or the model's own forward to predict).
    """

    def __init__(self, *args, fused_loss: FusedCausalLMLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self, "compute_loss_func", None) is not None:
            raise ValueError("FusedCausalLMTrainer computes the loss itself; pass fused_loss=, not compute_loss_func=")
        self.fused_loss = fused_loss if fused_loss is not None else fused_causal_lm_loss()
        if not isinstance(self.fused_loss, FusedCausalLMLoss):
            raise TypeError(f"fused_loss must come from fused_causal_lm_loss(...), got {type(fused_loss).__name__}")
        # The fused loss takes num_items_in_batch and shifts the labels, whatever the model's forward
        # accepts: the Trainer then counts labels[..., 1:] of the accumulated batch.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.fused_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as Trainer.compute_loss: num_items_in_batch counts every process's tokens
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


def __getattr__(name: str):
    """``FusedCausalLMTrainer`` (``FusedCausalLMLossMixin`` + ``transformers.Trainer``), built on first
    use so that importing this module does not import transformers."""
    if name == "FusedCausalLMTrainer":
        _require_transformers()
        from transformers import Trainer

        trainer = type("FusedCausalLMTrainer", (FusedCausalLMLossMixin, Trainer), {
            "__module__": __name__,
            "__doc__": "transformers.Trainer whose loss is a fused_causal_lm_loss (see FusedCausalLMLossMixin).",
        })
        globals()[name] = trainer
        return trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
