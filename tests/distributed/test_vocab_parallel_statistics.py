"""rarekit::vocab_parallel_statistics (issue 22): one shard's per-row partials in one pass over its logits,
against the torch implementation (``local_statistics``, the reference backend); the partials of every
shard, combined in one process, against single-process rarekit.cross_entropy (losses and gradients);
argument checks before any memory is touched; opcheck; torch.compile(fullgraph=True).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import rarekit
from rarekit.distributed._statistics import (LossOptions, combine_statistics, local_gradient, local_target_of,
                                             shard_statistics, smoothing_vector)

OPTIONS = [LossOptions(-100, eps, weighted, 0.0, 0.0) for eps, weighted in ((0.0, False), (0.1, False), (0.2, True))]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@contextlib.contextmanager
def reference_backend():
    rarekit.set_backend("reference")
    try:
        yield
    finally:
        rarekit.set_backend("native")


def case(gen, rows: int, classes: int, dtype: torch.dtype, device, masked_rows: int = 0):
    """Logits ×10 (large logits), global targets of a vocabulary of ``classes`` (10 % ignored), class
    weights and a logit adjustment; the first ``masked_rows`` rows hold -inf on columns 3..classes-3."""
    logits = (torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 10).to(dtype)
    logits[:masked_rows, 3:classes - 3] = -torch.inf
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[torch.rand(rows, generator=gen) < 0.1] = -100
    weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1
    adjustment = torch.randn(classes, generator=gen, dtype=torch.float64)
    return (logits.to(device), target.to(device), weight.to(dtype).to(device), adjustment.to(dtype).to(device))


def tolerances(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=3e-5, atol=3e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smoothing", "target-weighted"])
def test_kernel_equals_the_torch_statistics(device, gen, dtype, options):
    """Shards of a 2500-class vocabulary (one past the kernel's 2048-class block, one within it, one
    empty), with and without weights and adjustment, rows whose shard is all -inf, targets outside
    the shard and ignored rows: the kernel's block is the torch implementation's."""
    logits, target, weight, adjustment = case(gen, 37, 2500, dtype, device, masked_rows=2)
    for start, size in ((0, 2100), (2100, 400), (1200, 0)):
        shard = logits[:, start:start + size]
        for class_weight, adjust in ((None, None), (weight, adjustment)):
            slices = [None if vector is None else vector[start:start + size] for vector in (class_weight, adjust)]
            got = shard_statistics(shard, target, *slices, start, options)
            with reference_backend():
                expected = shard_statistics(shard, target, *slices, start, options)
            assert got.shape == (options.statistics, 37) and got.dtype == expected.dtype
            torch.testing.assert_close(got, expected, **tolerances(dtype),
                                       msg=lambda m: f"shard [{start}, {start + size}), weight={class_weight is not None}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_combined_shards_equal_single_process_cross_entropy(device, gen, dtype):
    """The partials of uneven shards (one empty), combined as every rank combines them, give
    rarekit.cross_entropy's per-row losses, and the shards' gradients its gradient, for every keyword
    (row 0: -inf logits, one shard all -inf)."""
    sizes = [700, 0, 1300, 51]
    starts = [sum(sizes[:rank]) for rank in range(len(sizes))]
    full, target, weight, adjustment = case(gen, 23, sum(sizes), dtype, device, masked_rows=1)
    full[0, starts[2]:starts[2] + sizes[2]] = -torch.inf  # rank 2's whole shard masked in row 0
    full[0, target[0].clamp(min=0)] = 1.0
    upstream = torch.randn(23, generator=gen, dtype=dtype).to(device)
    for eps, mode, gamma, zeta in ((0.0, "pytorch", 0.0, 0.0), (0.1, "pytorch", 2.0, 1e-3),
                                   (0.2, "target_weighted", 0.5, 0.0)):
        options = LossOptions(-100, eps, mode == "target_weighted", gamma, zeta)
        for class_weight, adjust in ((None, None), (weight, adjustment)):
            pieces = [(start, size, *(None if vector is None else vector[start:start + size]
                                      for vector in (class_weight, adjust)))
                      for start, size in zip(starts, sizes)]
            gathered = torch.stack([shard_statistics(full[:, start:start + size], target, piece_weight,
                                                     piece_adjust, start, options)
                                    for start, size, piece_weight, piece_adjust in pieces])
            result = combine_statistics(gathered, target, class_weight, tuple(sizes), options)
            whole = full.clone().requires_grad_()
            expected = rarekit.cross_entropy(whole, target, class_weight, reduction="none", label_smoothing=eps,
                                             smoothing_mode=mode, focal_gamma=gamma, z_loss=zeta,
                                             logit_adjustment=adjust)
            (expected * upstream).sum().backward()
            context = f"{options}, weight={class_weight is not None}"
            rows = slice(1 if eps > 0 else 0, None)  # smoothing over -inf logits: an infinite loss, no gradient
            torch.testing.assert_close(result.losses[rows], expected.detach()[rows], **tolerances(dtype),
                                       msg=lambda m: f"{context}: {m}")
            gradient = torch.cat([
                local_gradient(full[:, start:start + size], local_target_of(target, start, size, -100),
                               smoothing_vector(piece_weight, options), result.row_terms, upstream, options,
                               piece_adjust)
                for start, size, piece_weight, piece_adjust in pieces], 1)
            torch.testing.assert_close(gradient[rows], whole.grad[rows], **tolerances(dtype),
                                       msg=lambda m: f"{context}, gradient: {m}")


def test_opcheck(device, gen):
    logits, target, weight, adjustment = case(gen, 9, 40, torch.float32, device)
    op = torch.ops.rarekit.vocab_parallel_statistics.default
    for args in ((logits, target, None, None, 0, -100, 0.0, False),
                 (logits, target, weight, adjustment, 17, -100, 0.1, False),
                 (logits.double(), target, weight, None, 5, -100, 0.3, True),
                 (logits.bfloat16(), target.int(), None, adjustment, 0, 3, 0.0, False),
                 (logits[:, :0], target, None, None, 40, -100, 0.1, False)):
        torch.library.opcheck(op, args)


def test_compiles_fullgraph(gen):
    """The op in a compiled graph (its fake kernel gives the shape), and a single-rank call of the
    public loss (no process group: rarekit.cross_entropy) compiled whole."""
    from rarekit.distributed import vocab_parallel_cross_entropy

    logits, target, weight, _ = case(gen, 8, 30, torch.float32, "cpu")

    def statistics(logits, target, weight):
        return torch.ops.rarekit.vocab_parallel_statistics(logits * 2, target, weight, None, 10, -100, 0.1, False)

    shard = logits[:, 10:25].contiguous()
    torch.testing.assert_close(torch.compile(statistics, fullgraph=True)(shard, target, weight[10:25]),
                               statistics(shard, target, weight[10:25]))

    def loss_fn(logits, target, weight):
        return vocab_parallel_cross_entropy(logits, target, weight, label_smoothing=0.1, focal_gamma=2.0)

    torch.testing.assert_close(torch.compile(loss_fn, fullgraph=True)(logits, target, weight),
                               rarekit.cross_entropy(logits, target, weight, label_smoothing=0.1, focal_gamma=2.0))


def test_bad_arguments_raise_before_the_kernel_runs():
    op = torch.ops.rarekit.vocab_parallel_statistics
    logits, target = torch.randn(4, 6), torch.tensor([0, 7, -100, 2])
    cases = [
        ((torch.randn(4), target, None, None, 0, -100, 0.0, False), ValueError, "logits must be"),
        ((logits.int(), target, None, None, 0, -100, 0.0, False), TypeError, "logits must be float32"),
        ((logits, target[:3], None, None, 0, -100, 0.0, False), ValueError, r"target must have shape \(4,\)"),
        ((logits, target.float(), None, None, 0, -100, 0.0, False), TypeError, "integer class indices"),
        ((logits, target, torch.ones(7), None, 0, -100, 0.0, False), ValueError, r"weight must have shape \(6,\)"),
        ((logits, target, None, torch.ones(6, 1), 0, -100, 0.0, False), ValueError, "logit_adjustment must have"),
        ((logits, target, torch.ones(6, dtype=torch.long), None, 0, -100, 0.1, False), TypeError, "floating point"),
        ((logits, target, None, None, -1, -100, 0.0, False), ValueError, "vocab_start must be >= 0"),
        ((logits, target, None, None, 2**63 - 3, -100, 0.0, False), ValueError, "vocab_start must be >= 0"),
        ((logits, target, None, None, 0, -100, 1.5, False), ValueError, r"label_smoothing must be in \[0, 1\]"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            op(*args)


@pytest.mark.cuda
def test_cuda_kernel_equals_the_cpu_kernel(gen):
    """The CUDA kernel (one block per row) against the CPU one, on the same shard."""
    logits, target, weight, adjustment = case(gen, 50, 5000, torch.float32, "cpu", masked_rows=2)
    for options in OPTIONS:
        args = (logits[:, 1000:4100], target, weight[1000:4100], adjustment[1000:4100], 1000, -100,
                options.label_smoothing, options.target_weighted)
        expected = torch.ops.rarekit.vocab_parallel_statistics(*args)
        got = torch.ops.rarekit.vocab_parallel_statistics(*(arg.cuda() if isinstance(arg, torch.Tensor) else arg
                                                            for arg in args))
        torch.testing.assert_close(got.cpu(), expected, rtol=3e-5, atol=3e-5)
