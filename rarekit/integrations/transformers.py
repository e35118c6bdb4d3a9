"""Hugging Face ``transformers``: rarekit's weighted cross-entropy as a causal-LM ``Trainer`` loss.

::

    from rarekit.integrations.transformers import weighted_causal_lm_loss

    weights = rarekit.class_weights(token_counts, "inverse_sqrt")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   compute_loss_func=weighted_causal_lm_loss(weights, label_smoothing=0.1))
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from rarekit.losses import cross_entropy

INSTALL_HINT = "pip install 'rarekit[augment]' (or 'rarekit[all]')"


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
    for reserved in ("reduction", "weight", "target"):
        if reserved in cross_entropy_kwargs:
            raise TypeError(f"weighted_causal_lm_loss: {reserved!r} is set by the loss itself")
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights)
        if not class_weights.is_floating_point() or class_weights.dim() != 1:
            raise TypeError(f"class_weights must be a 1-D floating-point tensor (one weight per vocabulary id), "
                            f"got dtype {class_weights.dtype} and shape {tuple(class_weights.shape)}")
    on_device: dict[torch.device, torch.Tensor] = {}

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("weighted_causal_lm_loss needs the labels (the Trainer passes inputs['labels'])")
        logits = _logits_of(outputs).float()
        vocab = logits.shape[-1]
        labels = labels.to(logits.device)
        shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]  # position t predicts token t + 1
        weight = None
        if class_weights is not None:
            if class_weights.shape != (vocab,):
                raise ValueError(f"class_weights has shape {tuple(class_weights.shape)} but the logits have "
                                 f"{vocab} classes")
            weight = on_device.get(logits.device)
            if weight is None:
                weight = on_device[logits.device] = class_weights.to(logits.device)
        flat_logits, flat_labels = logits.reshape(-1, vocab), shifted.reshape(-1)
        if num_items_in_batch is None:
            return cross_entropy(flat_logits, flat_labels, weight, ignore_index=ignore_index, reduction="mean",
                                 **cross_entropy_kwargs)
        total = cross_entropy(flat_logits, flat_labels, weight, ignore_index=ignore_index, reduction="sum",
                              **cross_entropy_kwargs)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    return loss
