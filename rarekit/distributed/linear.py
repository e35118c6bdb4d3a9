"""Vocabulary-parallel fused linear + cross-entropy: each rank holds (V_r, D) rows of the LM head, the
hidden states are replicated, and no rank ever holds more than KEPT_CHUNKS (2) chunks of its logits.

Forward: chunk by chunk, the shard's logits and their per-row statistics (one pass of the
``vocab_parallel_statistics`` kernel), with no communication; then one exchange for all chunks (plus
the size exchange without ``vocab_start``). The last two chunks' logits are kept for the backward.
Backward: the other chunks are recomputed, each chunk's gradient comes from the combined row terms,
the classifier and bias gradients accumulate in float32, and the hidden states' partial gradients, float32 too, are summed over the ranks in one
all-reduce, then cast. The collective count does not depend on ``chunk_size``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rarekit import _backend
from rarekit.distributed._common import check_replicated, class_slice, reduce_losses, refuse_forward_ad, shard_view
from rarekit.distributed._shards import (DTYPES, Exchange, dtensor_shard, is_dtensor, local_header, options_code,
                                         replicated_local, resolve_group, vocab_start_error)
from rarekit.distributed._statistics import LossOptions, combine_statistics, local_gradient, shard_statistics
from rarekit.losses.linear import _autocast_as_linear, _check_options, chunk_rows, linear_cross_entropy
from rarekit.ops.cross_entropy import _once_differentiable, accumulator_dtype


def _classifier_error(classifier, bias, hidden: torch.Tensor) -> tuple[int, int] | None:
    """(code, detail) of a bad local classifier or bias (see ``_shards.LOCAL_ERRORS``), or None."""
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 2 or classifier.shape[1] != hidden.shape[-1]:
        return 6, classifier.dim() if isinstance(classifier, torch.Tensor) else 0
    if classifier.dtype != hidden.dtype or classifier.device != hidden.device:
        return 7, 0
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (classifier.shape[0],)
                             or bias.dtype != hidden.dtype or bias.device != hidden.device):
        return 8, 0
    return None


KEPT_CHUNKS = 2  # chunks of logits the forward keeps for the backward (without softcap)


def _fresh(rows: int, classes: int, accumulate: torch.dtype, device: torch.device) -> torch.Tensor:
    buffer = torch.empty((rows, classes), dtype=accumulate, device=device)
    _backend.advise_huge_pages(buffer)
    return buffer


class _ChunkBuffers:
    """(chunk, V_r) buffers in the accumulator dtype, reused by every chunk (a fresh 100 MiB tensor per
    chunk costs its page faults and zeroing again): ``logits`` (a fresh one, or the given rows), and
    ``scratch`` with a softcap (empty without)."""

    def __init__(self, chunk: int, rows: int, classes: int, accumulate: torch.dtype, device: torch.device,
                 softcap: bool, logits: torch.Tensor | None = None):
        rows = min(chunk, rows)
        self.logits = _fresh(rows, classes, accumulate, device) if logits is None else logits
        self.scratch = _fresh(rows if softcap else 0, classes, accumulate, device)

    def chunk_logits(self, hidden, classifier, bias, softcap, adjustment, out: torch.Tensor | None = None):
        """(z', t) of a chunk: z' = softcap(hidden @ classifierᵀ + bias) + a, and t = tanh(raw / s) with
        ``softcap = s`` (None without; then z' is in ``logits``, or in ``out`` if given, else t is and z'
        in ``scratch``)."""
        rows = hidden.shape[0]
        raw = self.logits[:rows] if out is None else out
        if hidden.dtype != raw.dtype:
            raw.copy_(F.linear(hidden, classifier, bias))
        elif bias is None:
            torch.mm(hidden, classifier.t(), out=raw)
        else:
            torch.addmm(bias, hidden, classifier.t(), out=raw)
        capped = None
        if softcap is not None:
            capped = raw.div_(softcap).tanh_()
            raw = torch.mul(capped, softcap, out=self.scratch[:rows])
        if adjustment is not None:
            raw.add_(adjustment.to(raw.dtype))
        return raw, capped


def _kept_from(rows: int, chunk: int, softcap, keep: bool) -> int:
    """The first row of the chunks whose logits the forward keeps for the backward: the last
    KEPT_CHUNKS chunks (rows: none, without ``keep`` or with a softcap, whose backward needs two
    tensors per chunk)."""
    starts = range(0, rows, chunk)
    if not keep or softcap is not None or len(starts) == 0:
        return rows
    return starts[max(0, len(starts) - KEPT_CHUNKS)]


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """forward(hidden, classifier, bias, target, weight, logit_adjustment, exchange, options, softcap,
    chunk, keep) -> (per-row losses, row terms, kept logits), for (N, D) hidden and (N,) target.

    The kept logits are z' of the last chunks (``_kept_from``), which the first backward uses instead
    of recomputing them (their first chunk's rows also serve as the buffer of the other chunks, so the
    forward holds no more than they); later backwards (``retain_graph``) recompute every chunk."""

    @staticmethod
    def forward(hidden, classifier, bias, target, weight, adjustment, exchange, options, softcap, chunk, keep):
        accumulate = accumulator_dtype(hidden)
        rows, start, size = hidden.shape[0], exchange.start, exchange.size
        local_weight, local_adjustment = class_slice(weight, start, size), class_slice(adjustment, start, size)
        statistics = hidden.new_empty((options.statistics, rows), dtype=accumulate)
        kept_from = _kept_from(rows, chunk, softcap, keep)
        kept = _fresh(rows - kept_from, size, accumulate, hidden.device)
        buffers = _ChunkBuffers(chunk, rows, size, accumulate, hidden.device, softcap is not None,
                                kept[:chunk] if kept_from < rows else None)
        for begin in range(0, rows, chunk):
            part = slice(begin, begin + chunk)
            out = kept[begin - kept_from:begin - kept_from + chunk] if begin >= kept_from else None
            z, _ = buffers.chunk_logits(hidden[part], classifier, bias, softcap, local_adjustment, out)
            statistics[:, part] = shard_statistics(z, target[part], local_weight, None, start, options)
        del buffers
        gathered = exchange.gather(statistics, rows, accumulate, options.statistics)
        result = combine_statistics(gathered, target.long(), weight, exchange.shards.sizes, options)
        return result.losses, result.row_terms, kept

    @staticmethod
    def setup_context(ctx, inputs, output):
        hidden, classifier, bias, target, weight, adjustment, exchange, options, softcap, chunk, _ = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(hidden, classifier, bias, target, weight, adjustment, output[1])
        ctx.start, ctx.size, ctx.group = exchange.start, exchange.size, exchange.group
        ctx.options, ctx.softcap, ctx.chunk = options, softcap, chunk
        ctx.kept, ctx.kept_from = output[2], hidden.shape[0] - output[2].shape[0]
        ctx.set_materialize_grads(False)  # no zeros of the kept logits' shape for their (absent) gradient

    @staticmethod
    def backward(ctx, grad_losses, _grad_row_terms, _grad_kept):
        hidden, classifier, bias, target, weight, adjustment, row_terms = ctx.saved_tensors
        rows, kept, kept_from = hidden.shape[0], ctx.kept, ctx.kept_from
        ctx.kept, ctx.kept_from = None, rows  # a second backward recomputes every chunk
        if grad_losses is None:  # undefined (zero) upstream gradient: the same collectives, zero gradients
            grad_losses = row_terms.new_zeros(rows)
        wants_hidden, wants_classifier, wants_bias = ctx.needs_input_grad[:3]
        options, accumulate = ctx.options, row_terms.dtype
        local_target, local_adjustment, smoothing = shard_view(target, weight, adjustment, ctx.start, ctx.size,
                                                               options)
        with torch.no_grad():  # also under create_graph=True: the results are made once-differentiable below
            grad_hidden, grad_classifier, grad_bias = (
                torch.zeros(shape, dtype=accumulate, device=hidden.device) if wanted else None
                for shape, wanted in ((hidden.shape, wants_hidden), (classifier.shape, wants_classifier),
                                      ((ctx.size,), wants_bias)))
            starts = list(range(0, rows, ctx.chunk))
            recomputed = [begin for begin in starts if begin < kept_from]
            buffers = _ChunkBuffers(ctx.chunk, rows, ctx.size, accumulate, hidden.device, ctx.softcap is not None,
                                    kept[:ctx.chunk] if kept_from < rows else None) if recomputed else None
            for begin in [begin for begin in starts if begin >= kept_from] + recomputed:  # kept ones first
                part = slice(begin, begin + ctx.chunk)
                if begin >= kept_from:
                    z, capped = kept[begin - kept_from:begin - kept_from + ctx.chunk], None
                else:
                    z, capped = buffers.chunk_logits(hidden[part], classifier, bias, ctx.softcap, local_adjustment)
                gradient = local_gradient(z, local_target[part], smoothing, row_terms[part], grad_losses[part],
                                          options)  # z' already holds the adjustment
                if capped is not None:  # d softcap(raw)/d raw = 1 - tanh²(raw / s)
                    gradient.mul_(capped.square_().neg_().add_(1))
                if wants_bias:
                    grad_bias += gradient.sum(0)
                gradient = gradient.to(hidden.dtype)  # the matmuls run in the input dtype
                if wants_hidden:
                    grad_hidden[part] = gradient @ classifier
                if wants_classifier and hidden.dtype == accumulate:
                    grad_classifier.addmm_(gradient.t(), hidden[part])
                elif wants_classifier:
                    grad_classifier += gradient.t() @ hidden[part]
                del gradient  # before the next chunk's is made
            if wants_hidden:  # the one collective of the backward: Σ over the shards, in float32
                dist.all_reduce(grad_hidden, group=ctx.group)
        sources = (hidden, classifier, bias, grad_losses)
        return (*(None if grad is None else _once_differentiable(grad.to(like.dtype), *sources)
                  for grad, like in ((grad_hidden, hidden), (grad_classifier, classifier), (grad_bias, hidden))),
                None, None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        refuse_forward_ad()


def vocab_parallel_linear_cross_entropy(hidden: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                                        weight: torch.Tensor | None = None, *, group=None,
                                        vocab_start: int | None = None, bias: torch.Tensor | None = None,
                                        ignore_index: int = -100, reduction: str = "mean",
                                        label_smoothing: float = 0.0, smoothing_mode: str = "pytorch",
                                        focal_gamma: float = 0.0, logit_adjustment: torch.Tensor | None = None,
                                        z_loss: float = 0.0, softcap: float | None = None,
                                        chunk_size: int | None = None) -> torch.Tensor:
    """:func:`rarekit.linear_cross_entropy` with the classifier split over the vocabulary across the ranks
    of ``group``: the loss of ``hidden @ classifier_fullᵀ + bias_full``, never materialized.

    ``classifier`` is this rank's (V_r, D) rows and ``bias`` its (V_r,) slice (contiguous ranges in
    group-rank order, any sizes; ``vocab_start`` skips the size exchange); ``hidden`` (..., D),
    ``target`` (...), ``weight`` and ``logit_adjustment`` (V,) are the same on every rank. The keywords
    are :func:`rarekit.linear_cross_entropy`'s (``softcap``, ``chunk_size`` rows per chunk). The loss is
    bitwise identical on every rank; the gradients of ``classifier`` and ``bias`` are the single-process
    ones restricted to the shard, and that of ``hidden`` is the full gradient on every rank (summed over
    the ranks in float32, then cast). ``classifier`` (and ``bias``) may be DTensors sharded on dimension
    0, as ``ColwiseParallel`` leaves an LM head; the group then comes from the mesh. With one rank or no
    process group this is :func:`rarekit.linear_cross_entropy`.

    Collectives: the forward's one exchange of per-row statistics (after the size exchange without
    ``vocab_start``), and one all-reduce of the (N, D) hidden gradient in the backward, whatever the
    number of chunks. Matmuls run in the input dtype, the loss in float32 (float64 for float64).
    """
    if isinstance(hidden, torch.Tensor) and torch.is_autocast_enabled(hidden.device.type):
        device_type = hidden.device.type
        hidden, classifier, bias = (_autocast_as_linear(tensor, device_type) for tensor in (hidden, classifier, bias))
        with torch.autocast(device_type, enabled=False):  # the op's own matmuls keep their dtypes
            return vocab_parallel_linear_cross_entropy(
                hidden, classifier, target, weight, group=group, vocab_start=vocab_start, bias=bias,
                ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                smoothing_mode=smoothing_mode, focal_gamma=focal_gamma, logit_adjustment=logit_adjustment,
                z_loss=z_loss, softcap=softcap, chunk_size=chunk_size)
    ignore_index = _check_options(reduction, smoothing_mode, label_smoothing, focal_gamma, z_loss, softcap,
                                  chunk_size, ignore_index)
    if is_dtensor(classifier):
        if group is not None or vocab_start is not None:
            raise ValueError("rarekit.distributed: the group and vocab_start of a DTensor classifier come from its "
                             "mesh and placements; pass neither")
        classifier, group, vocab_start = dtensor_shard(classifier, 0, "classifier")
        if is_dtensor(bias):
            bias, bias_group, bias_start = dtensor_shard(bias, 0, "bias")
            if bias_start != vocab_start or dist.get_process_group_ranks(bias_group) != \
                    dist.get_process_group_ranks(group):
                raise ValueError("rarekit.distributed: bias must be sharded as the classifier (same mesh dimension)")
    hidden, target, weight, logit_adjustment = (replicated_local(value, name) for value, name in (
        (hidden, "hidden"), (target, "target"), (weight, "weight"), (logit_adjustment, "logit_adjustment")))
    keywords: dict = dict(bias=bias, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                    smoothing_mode=smoothing_mode, focal_gamma=focal_gamma, logit_adjustment=logit_adjustment,
                    z_loss=z_loss, softcap=softcap, chunk_size=chunk_size)
    resolved = resolve_group(group)
    if resolved is None or resolved[2] == 1:
        if vocab_start not in (None, 0):
            raise ValueError(f"rarekit.distributed: vocab_start must be 0 (or None) with a single rank, got "
                             f"{vocab_start!r}")
        return linear_cross_entropy(hidden, classifier, target, weight, **keywords)
    group, rank, world = resolved
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in DTYPES or hidden.dim() == 0:
        raise TypeError(f"rarekit.distributed: hidden must be a floating-point (..., D) tensor, got "
                        f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    check_replicated(target, weight, logit_adjustment, tuple(hidden.shape[:-1]))
    if target.device != hidden.device:
        raise ValueError(f"rarekit.distributed: target is on {target.device} but hidden is on {hidden.device}")
    rows_hidden, rows_target = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
    options = LossOptions(ignore_index, float(label_smoothing), smoothing_mode == "target_weighted",
                          float(focal_gamma), float(z_loss))
    error = _classifier_error(classifier, bias, hidden) or vocab_start_error(vocab_start)
    header = local_header(error, rows_target.shape[0], 0 if error else classifier.shape[0], vocab_start, hidden.dtype,
                          options_code("linear", options, reduction, softcap), rows_target, weight, logit_adjustment)
    exchange = Exchange(group, rank, world, header, vocab_start, rows_target, ignore_index)
    accumulate = accumulator_dtype(hidden)
    if exchange.local_error:  # with vocab_start: meet the others in the exchange, then every rank raises
        exchange.gather(None, rows_target.shape[0], accumulate, options.statistics)
    # the backward holds a chunk's logits and their gradient: the default chunk is half linear_cross_entropy's
    chunk = chunk_rows(rows_target.shape[0], 2 * exchange.size, accumulate, chunk_size)
    losses, _, _ = _VocabParallelLinearCrossEntropy.apply(rows_hidden, classifier, bias, rows_target, weight,
                                                       logit_adjustment, exchange, options,
                                                       None if softcap is None else float(softcap), chunk,
                                                       torch.is_grad_enabled() and any(
                                                           tensor is not None and tensor.requires_grad
                                                           for tensor in (rows_hidden, classifier, bias)))
    loss = reduce_losses(losses, rows_target, weight, exchange.shards.classes, ignore_index, reduction, hidden.dtype)
    return loss.reshape(target.shape) if reduction == "none" else loss


class VocabParallelLinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`vocab_parallel_linear_cross_entropy`: ``weight`` and ``logit_adjustment`` are
    buffers (full-vocabulary, replicated); ``forward(hidden, classifier, target, bias=None)``."""

    weight: torch.Tensor | None  # buffers
    logit_adjustment: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, *, group=None, vocab_start: int | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 smoothing_mode: str = "pytorch", focal_gamma: float = 0.0,
                 logit_adjustment: torch.Tensor | None = None, z_loss: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=weight is not None)
        self.register_buffer("logit_adjustment", logit_adjustment, persistent=logit_adjustment is not None)
        self.group, self.vocab_start, self.ignore_index, self.reduction = group, vocab_start, ignore_index, reduction
        self.label_smoothing, self.smoothing_mode = label_smoothing, smoothing_mode
        self.focal_gamma, self.z_loss, self.softcap, self.chunk_size = focal_gamma, z_loss, softcap, chunk_size

    def forward(self, hidden: torch.Tensor, classifier: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return vocab_parallel_linear_cross_entropy(
            hidden, classifier, target, self.weight, group=self.group, vocab_start=self.vocab_start, bias=bias,
            ignore_index=self.ignore_index, reduction=self.reduction, label_smoothing=self.label_smoothing,
            smoothing_mode=self.smoothing_mode, focal_gamma=self.focal_gamma,
            logit_adjustment=self.logit_adjustment, z_loss=self.z_loss, softcap=self.softcap,
            chunk_size=self.chunk_size)
