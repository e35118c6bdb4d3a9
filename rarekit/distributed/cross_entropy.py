"""Vocabulary-parallel (tensor-parallel) cross-entropy: each rank holds a contiguous slice of the
vocabulary's logits; the loss is :func:`rarekit.cross_entropy` on the concatenated logits.

Forward: the shard's per-row statistics in one pass over its logits (see :mod:`._statistics`), one
all-gather of them (plus the size exchange unless ``vocab_start`` is given), and the same combination
on every rank, so the loss is bitwise identical everywhere. Backward: no collective; each rank writes its shard's gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from rarekit.distributed._common import check_replicated, class_slice, reduce_losses, refuse_forward_ad, shard_view
from rarekit.distributed._shards import (DTYPES, Exchange, dtensor_shard, is_dtensor, local_header, options_code,
                                         replicated_local, resolve_group, vocab_start_error)
from rarekit.distributed._statistics import LossOptions, combine_statistics, local_gradient, shard_statistics
from rarekit.losses._options import check_loss_options
from rarekit.losses.cross_entropy import cross_entropy
from rarekit.ops.cross_entropy import _once_differentiable, accumulator_dtype


def _logits_error(logits, target: torch.Tensor) -> tuple[int, int] | None:
    """(code, detail) of a bad local logits tensor (see ``_shards.LOCAL_ERRORS``), or None."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in DTYPES:
        return 1, 0
    if logits.dim() != 2:
        return 2, logits.dim()
    if logits.shape[0] != target.shape[0]:
        return 3, logits.shape[0]
    if logits.device != target.device:
        return 4, 0
    return None


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """forward(logits, target, weight, logit_adjustment, exchange, options) -> (per-row losses, row
    terms); the backward writes the shard's gradient from the saved row terms, without collectives."""

    @staticmethod
    def forward(logits, target, weight, adjustment, exchange, options):
        accumulate = accumulator_dtype(logits)
        start, size = exchange.start, exchange.size
        statistics = shard_statistics(logits, target, class_slice(weight, start, size),
                                      class_slice(adjustment, start, size), start, options)
        gathered = exchange.gather(statistics, logits.shape[0], accumulate, options.statistics)
        result = combine_statistics(gathered, target.long(), weight, exchange.shards.sizes, options)
        return result.losses, result.row_terms

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, adjustment, exchange, options = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(logits, target, weight, adjustment, output[1])
        ctx.start, ctx.size, ctx.options = exchange.start, exchange.size, options

    @staticmethod
    def backward(ctx, grad_losses, _grad_row_terms):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        logits, target, weight, adjustment, row_terms = ctx.saved_tensors
        options = ctx.options
        local_target, local_adjustment, smoothing = shard_view(target, weight, adjustment, ctx.start, ctx.size,
                                                               options)
        with torch.no_grad():  # also under create_graph=True: the result is made once-differentiable below
            grad = local_gradient(logits, local_target, smoothing, row_terms, grad_losses, options, local_adjustment)
        return _once_differentiable(grad, logits, grad_losses), None, None, None, None, None

    @staticmethod
    def jvp(ctx, *tangents):
        refuse_forward_ad()


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                                 group=None, vocab_start: int | None = None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0,
                                 smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                                 logit_adjustment: torch.Tensor | None = None, z_loss: float = 0.0) -> torch.Tensor:
    """:func:`rarekit.cross_entropy` of logits split over the vocabulary across the ranks of ``group``.

    ``logits`` is this rank's (N, V_r) slice of the (N, V) logits: the shards are contiguous
    vocabulary ranges in group-rank order, of any sizes (``vocab_start``, this rank's first class,
    skips the exchange of the sizes). ``target`` (N,) holds global ids and ``weight`` and
    ``logit_adjustment`` are (V,) vectors, the same on every rank. Every keyword is
    :func:`rarekit.cross_entropy`'s, exact: the result, bitwise identical on every rank, is the
    single-process loss of the concatenated logits, and the gradient of ``logits`` that loss's
    gradient restricted to the shard. ``logits`` may be a DTensor sharded on dimension 1 (then the
    group and ``vocab_start`` come from its mesh and its gradient is a DTensor). ``group=None`` is the
    default process group; with one rank, or no process group, this is :func:`rarekit.cross_entropy`.

    Collectives: one all-gather of a (3 or 4, N) block of per-row statistics in the forward, after
    one of the ranks' headers without ``vocab_start``; none in the backward. Bad inputs (a target
    out of range, a ``weight`` of another length than V, shards that disagree with ``vocab_start``,
    ranks that disagree on N) raise the same error on every rank. With ``vocab_start`` the ranks must
    agree on N and on the logits dtype (the size exchange that checks them is skipped).
    """
    ignore_index = check_loss_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, ignore_index)
    if is_dtensor(logits):
        if group is not None or vocab_start is not None:
            raise ValueError("rarekit.distributed: the group and vocab_start of DTensor logits come from their mesh "
                             "and placements; pass neither")
        if logits.dim() != 2:
            raise ValueError(f"rarekit.distributed: DTensor logits must be (N, V), got shape {tuple(logits.shape)}; "
                             "reshape them (logits.reshape(-1, V) keeps the vocabulary sharding)")
        logits, group, vocab_start = dtensor_shard(logits, 1, "logits")
    target, weight, logit_adjustment = (replicated_local(value, name) for value, name in (
        (target, "target"), (weight, "weight"), (logit_adjustment, "logit_adjustment")))
    keywords: dict = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                    smoothing_mode=smoothing_mode, focal_gamma=focal_gamma, logit_adjustment=logit_adjustment,
                    z_loss=z_loss)
    resolved = resolve_group(group)
    if resolved is None or resolved[2] == 1:
        if vocab_start not in (None, 0):
            raise ValueError(f"rarekit.distributed: vocab_start must be 0 (or None) with a single rank, got "
                             f"{vocab_start!r}")
        return cross_entropy(logits, target, weight, **keywords)
    group, rank, world = resolved
    check_replicated(target, weight, logit_adjustment)
    options = LossOptions(ignore_index, float(label_smoothing), smoothing_mode == "target_weighted",
                          float(focal_gamma), float(z_loss))
    error = _logits_error(logits, target) or vocab_start_error(vocab_start)
    header = local_header(error, target.shape[0], 0 if error else logits.shape[1], vocab_start,
                          None if error else logits.dtype, options_code("ce", options, reduction), target, weight,
                          logit_adjustment)
    exchange = Exchange(group, rank, world, header, vocab_start, target, ignore_index)
    if exchange.local_error:  # with vocab_start: meet the others in the exchange, then every rank raises
        accumulate = logits.dtype if isinstance(logits, torch.Tensor) and logits.dtype == torch.float64 \
            else torch.float32
        exchange.gather(None, target.shape[0], accumulate, options.statistics)
    losses, _ = _VocabParallelCrossEntropy.apply(logits, target, weight, logit_adjustment, exchange, options)
    return reduce_losses(losses, target, weight, exchange.shards.classes, ignore_index, reduction, logits.dtype)


class VocabParallelCrossEntropyLoss(nn.Module):
    """Module form of :func:`vocab_parallel_cross_entropy`: ``weight`` and ``logit_adjustment`` are
    buffers (full-vocabulary, replicated); ``forward(logits, target)``."""

    weight: torch.Tensor | None  # buffers
    logit_adjustment: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, *, group=None, vocab_start: int | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                 logit_adjustment: torch.Tensor | None = None, z_loss: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight, persistent=weight is not None)
        self.register_buffer("logit_adjustment", logit_adjustment, persistent=logit_adjustment is not None)
        self.group, self.vocab_start, self.ignore_index, self.reduction = group, vocab_start, ignore_index, reduction
        self.label_smoothing, self.smoothing_mode = label_smoothing, smoothing_mode
        self.focal_gamma, self.z_loss = focal_gamma, z_loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, target, self.weight, group=self.group,
                                            vocab_start=self.vocab_start, ignore_index=self.ignore_index,
                                            reduction=self.reduction, label_smoothing=self.label_smoothing,
                                            smoothing_mode=self.smoothing_mode, focal_gamma=self.focal_gamma,
                                            logit_adjustment=self.logit_adjustment, z_loss=self.z_loss)
