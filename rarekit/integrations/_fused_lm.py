"""The fused causal-LM loss of :mod:`rarekit.integrations.transformers`: the model runs with its LM head
swapped for a capture of the head's input, and :func:`rarekit.linear_cross_entropy` takes it from there,
so the (tokens, vocab) logits are never materialized."""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rarekit.integrations._causal_lm import CausalLMLoss, check_reserved, logits_of, shifted

FUSED_KEYWORDS = ("label_smoothing", "smoothing_mode", "focal_gamma", "logit_adjustment", "z_loss", "chunk_size")


class _HeadInput(nn.Module):
    """Stands in for a model's LM head during one forward: keeps the final hidden states it is given
    and returns them unchanged (a (batch, tokens, hidden) tensor in place of the (batch, tokens, vocab)
    logits)."""

    def __init__(self) -> None:
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


class FusedCausalLMLoss(CausalLMLoss):
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

    name = "fused_causal_lm_loss"
    trainer = "FusedCausalLMTrainer (or FusedCausalLMLossMixin)"

    def __init__(self, class_weights=None, *, ignore_index: int = -100, normalize: str = "weights", **keywords):
        unknown = sorted(set(keywords) - set(FUSED_KEYWORDS))
        if unknown:
            check_reserved(self.name, keywords, ("reduction", "weight", "target", "bias", "softcap"))
            raise TypeError(f"{self.name}: unexpected keywords {unknown}; it takes {list(FUSED_KEYWORDS)}")
        super().__init__(class_weights, ignore_index=ignore_index, normalize=normalize, keywords=keywords)
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
            self._check_post_head(inner, hidden, logits_of(outputs), softcap)
            self._checked.add(inner)
        target = shift_labels if shift_labels is not None else shifted(labels, self.ignore_index)
        target = target.to(hidden.device)
        if target.shape != hidden.shape[:-1]:
            raise ValueError(f"the labels have shape {tuple(target.shape)} but the model kept hidden states for "
                             f"{tuple(hidden.shape[:-1])} positions (is logits_to_keep set?)")
        weight = self.class_weights.on(head.out_features, hidden.device)
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = linear_cross_entropy(hidden.to(head.weight.dtype), head.weight, target, weight, bias=head.bias,
                                    ignore_index=self.ignore_index, reduction=reduction, softcap=softcap,
                                    **self.keywords).float()
        if num_items_in_batch is not None:
            loss = self.divided(loss, target, weight, num_items_in_batch)
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
        output_class: Any = type(outputs)  # a ModelOutput class, whose fields are keywords
        try:
            return output_class(loss=loss, **kept)
        except TypeError:  # a plain dict, or an output class without a loss field
            return {"loss": loss, **kept}
    return (loss,) + tuple(outputs[1:])
