"""The row copies ``rarekit::gather_rows`` (``out[j] = source[indices[j]]``), ``rarekit::repeat_rows_into``
(``source[b]`` ``repeats[b]`` times, row after row) and ``rarekit::gather_segments_into`` (runs of rows of
variable length, e.g. rows of a CSR matrix): fake kernels, dispatch, and the autograd of ``gather_rows``
(differentiable in ``source``, as ``source[indices]``). Rows of any dtype are copied as bytes by one
multi-threaded kernel (CPU) or one grid-stride kernel (CUDA).
"""
from __future__ import annotations

import torch

from rarekit import _backend, reference

if _backend._C is not None:
    @torch.library.register_fake("rarekit::gather_rows")
    def _gather_rows_fake(source, indices, check=True):
        return source.new_empty((indices.shape[0], *source.shape[1:]))

    def _gather_rows_setup_context(ctx, inputs, output):
        source, indices, check = inputs
        ctx.save_for_backward(indices)
        ctx.source_shape, ctx.check = source.shape, check

    def _gather_rows_backward(ctx, grad_out):
        """The gradient of ``source[indices]``: the output's gradient rows added into zeros at ``indices``
        (index_add, itself differentiable). With ``check=False`` (CUDA) a row left zero for an index
        outside ``source`` adds nothing."""
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (indices,) = ctx.saved_tensors
        if not ctx.check:
            inside = (indices >= 0) & (indices < ctx.source_shape[0])
            indices = torch.where(inside, indices, 0)
            grad_out = grad_out * inside.reshape(-1, *[1] * (grad_out.dim() - 1))
        return grad_out.new_zeros(ctx.source_shape).index_add(0, indices, grad_out), None, None

    torch.library.register_autograd("rarekit::gather_rows", _gather_rows_backward,
                                    setup_context=_gather_rows_setup_context)

    @torch.library.register_fake("rarekit::repeat_rows_into")
    def _repeat_rows_into_fake(source, repeats, out, check=True):
        return None

    @torch.library.register_fake("rarekit::gather_segments_into")
    def _gather_segments_into_fake(values, starts, out_offsets, out, check=True):
        return None


def gather_rows(source: torch.Tensor, indices: torch.Tensor, check: bool = True) -> torch.Tensor:
    """``source[indices]`` along the first dimension into a fresh contiguous tensor. IndexError for an index
    outside ``[0, len(source))``; on CUDA ``check=False`` skips that check (one host synchronization) and
    leaves such rows zero."""
    if _backend.native(source.device):
        return torch.ops.rarekit.gather_rows(source, indices, check)
    return reference.gather_rows(source, indices)


def check_out(op: str, out: torch.Tensor, rows: torch.Tensor, name: str) -> None:
    """The kernels' check of an ``out`` on the reference path: contiguous, of the dtype, row shape and
    device of ``rows`` (TypeError for the dtype, ValueError otherwise)."""
    if out.dtype != rows.dtype or out.shape[1:] != rows.shape[1:] or not out.is_contiguous() \
            or out.device != rows.device:
        raise (TypeError if out.dtype != rows.dtype else ValueError)(
            f"{op}: out must be contiguous, of {name}'s dtype {rows.dtype} and row shape {tuple(rows.shape[1:])}, "
            f"on {rows.device}; got {out.dtype}, shape {tuple(out.shape)}, contiguous={out.is_contiguous()}, "
            f"on {out.device}")


def repeat_rows_into(source: torch.Tensor, repeats: torch.Tensor, out: torch.Tensor, check: bool = True) -> None:
    """Writes ``torch.repeat_interleave(source, repeats, dim=0)`` into the contiguous ``out`` (of source's
    dtype and row shape, ``repeats.sum()`` rows). ValueError for negative repeats or another sum; on CUDA
    that check copies ``repeats`` to the host (one synchronization), and ``check=False`` skips it."""
    if _backend.native(source.device):
        torch.ops.rarekit.repeat_rows_into(source, repeats, out, check)
        return
    check_out("rarekit.repeat_rows_into", out, source, "source")
    out.copy_(reference.repeat_rows(source, repeats, out.shape[0], check or source.device.type == "cpu"))


def gather_segments_into(values: torch.Tensor, starts: torch.Tensor, out_offsets: torch.Tensor, out: torch.Tensor,
                         check: bool = True) -> None:
    """Copies runs of rows: ``out[out_offsets[j]:out_offsets[j + 1]]`` from ``values`` rows ``starts[j]`` on,
    for every j (e.g. chosen rows of a CSR matrix). ValueError for a run outside ``values`` or the
    contiguous ``out``; on CUDA that check waits for the kernel, and ``check=False`` skips it (such runs
    are then not written)."""
    if _backend.native(values.device):
        torch.ops.rarekit.gather_segments_into(values, starts, out_offsets, out, check)
        return
    check_out("rarekit.gather_segments_into", out, values, "values")
    reference.gather_segments_into(values, starts, out_offsets, out, check or values.device.type == "cpu")
