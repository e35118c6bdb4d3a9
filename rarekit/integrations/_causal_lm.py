"""What the two causal-LM losses of :mod:`rarekit.integrations.transformers` share: the install check,
class weights, transformers' label shift, and the division of the summed loss by the size of the
accumulated batch (``num_items_in_batch``)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TypeVar

import torch
import torch.nn.functional as F

from rarekit.losses._options import mean_divisor

INSTALL_HINT = "pip install 'rarekit[transformers]' (transformers and accelerate)"
NORMALIZATIONS = ("weights", "tokens")
TRAINER_IGNORE_INDEX = -100  # the label value transformers' Trainer leaves out of num_items_in_batch

LossType = TypeVar("LossType", bound="CausalLMLoss")


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401  (absolute import: the library, not the integration module)
    except ImportError as error:
        raise ImportError(f"rarekit.integrations.transformers needs the transformers package: "
                          f"{INSTALL_HINT}") from error


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a ``ModelOutput``/dict, a tuple (logits first, as a model called
    without labels returns it) or the tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[0]


def shifted(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """transformers' causal-LM shift: position t predicts ``labels[..., t + 1]``; the last position
    predicts nothing (``ignore_index``)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def check_reserved(name: str, keywords: dict, reserved) -> None:
    for key in reserved:
        if key in keywords:
            raise TypeError(f"{name}: {key!r} is set by the loss itself")


class ClassWeights:
    """``class_weights`` checked once and copied once to each device and dtype asked for."""

    def __init__(self, class_weights) -> None:
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights)
            if not class_weights.is_floating_point() or class_weights.dim() != 1:
                raise TypeError(f"class_weights must be a 1-D floating-point tensor (one weight per vocabulary id), "
                                f"got dtype {class_weights.dtype} and shape {tuple(class_weights.shape)}")
        self.weights: torch.Tensor | None = class_weights
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


class CausalLMLoss:
    """The state both losses keep (class weights, ``ignore_index``, ``normalize``, the loss keywords)
    and how they divide a summed loss by ``num_items_in_batch``.

    ``normalize="weights"`` divides by Σ w_y over the kept targets of the whole accumulated batch,
    torch's weighted mean; ``"tokens"`` by their number, as transformers' Trainer counts them. The two
    agree without class weights. The Trainer passes the number of kept targets as
    ``num_items_in_batch``; rarekit's Trainer mixins pass Σ w_y in its place (on the copy of the loss
    that :meth:`counted_by_weight_sums` makes).
    """

    name = "the loss"
    trainer = "a rarekit Trainer"

    def __init__(self, class_weights, *, ignore_index: int, normalize: str, keywords: dict):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"{self.name}: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.class_weights = ClassWeights(class_weights)
        self.ignore_index = ignore_index
        self.normalize = normalize
        self.keywords = keywords
        self.num_items_are_weight_sums = False

    @property
    def divides_by_weight_sum(self) -> bool:
        return self.normalize == "weights" and self.class_weights.weights is not None

    def with_keywords(self: LossType, **keywords) -> LossType:
        """A copy with these loss keywords added (the class weights and their device copies are shared)."""
        changed = copy.copy(self)
        changed.keywords = {**self.keywords, **keywords}
        return changed

    def counted_by_weight_sums(self: LossType) -> LossType:
        """The copy a rarekit Trainer mixin calls: its ``num_items_in_batch`` is already Σ w_y."""
        changed = copy.copy(self)
        changed.num_items_are_weight_sums = True
        return changed

    def divided(self, total: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                num_items_in_batch) -> torch.Tensor:
        """The summed loss of ``target`` over the size of the accumulated batch it belongs to."""
        if weight is not None and self.normalize == "weights" and not self.num_items_are_weight_sums:
            num_items_in_batch = self._own_weight_sum(target, weight, num_items_in_batch)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    def _own_weight_sum(self, target: torch.Tensor, weight: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """Σ w_y of this batch, when ``num_items_in_batch`` (a count of targets) says it is the whole
        accumulated batch; otherwise Σ w_y of the other batches is unknown here, and this raises."""
        kept = int((target != self.ignore_index).sum())
        if float(num_items_in_batch) != kept:
            raise ValueError(
                f"{self.name}(normalize='weights') divides by Σ w_y over the whole accumulated batch, but "
                f"num_items_in_batch counts {float(num_items_in_batch):g} targets where this batch has {kept} "
                f"(gradient accumulation or several processes), and a plain transformers.Trainer counts only "
                f"targets: train with {self.trainer}, which counts Σ w_y, or pass normalize='tokens' for "
                f"Σ w·loss / number of targets")
        return mean_divisor(target, weight, weight.shape[0], self.ignore_index, torch.float32)
