"""rarekit.distributed on gloo ranks (issue 22): the vocabulary-parallel losses equal single-process rarekit
on the concatenated logits for every keyword, bitwise alike on every rank, within the collective budget,
on subgroups and DTensors; bad inputs raise on every rank instead of hanging.

Each world size runs in one spawn of fresh processes (``ranks.run_ranks``, under a deadline); the
rank-side checks below are module-level functions, so the spawned ranks import them by name.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist

import rarekit
from ranks import run_ranks
from rarekit.distributed import (VocabParallelCrossEntropyLoss, VocabParallelLinearCrossEntropyLoss,
                                 vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

KEYWORD_GRID = [dict(label_smoothing=eps, smoothing_mode=mode, focal_gamma=gamma, z_loss=zeta)
                for eps, mode in ((0.0, "pytorch"), (0.1, "pytorch"), (0.2, "target_weighted"))
                for gamma in (0.0, 2.0, 0.5) for zeta in (0.0, 1e-3)]


def split_sizes(classes: int, world: int, skew: int = 0) -> list[int]:
    """Uneven contiguous shards: the remainder on the first ranks, and ``skew`` classes moved from the
    last rank to the first."""
    sizes = [classes // world + (1 if rank < classes % world else 0) for rank in range(world)]
    moved = min(skew, sizes[-1])
    sizes[0], sizes[-1] = sizes[0] + moved, sizes[-1] - moved
    return sizes


def shard_of(tensor: torch.Tensor, sizes: list[int], rank: int, dim: int = 1) -> torch.Tensor:
    start = sum(sizes[:rank])
    return tensor.narrow(dim, start, sizes[rank])


def inputs(seed: int, rows: int, classes: int, dtype: torch.dtype, ignored: float = 0.1, avoid=None):
    """Logits ×10 (large logits), targets (``ignored`` of them -100, none in the ``avoid`` range), class
    weights and a logit adjustment; the same on every rank (one seed)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 10).to(dtype)
    allowed = torch.arange(classes)
    if avoid is not None:
        allowed = allowed[(allowed < avoid[0]) | (allowed >= avoid[1])]
    target = allowed[torch.randint(0, allowed.numel(), (rows,), generator=gen)]
    target[torch.rand(rows, generator=gen) < ignored] = -100
    weight = (torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    adjustment = torch.randn(classes, generator=gen, dtype=torch.float64).to(dtype)
    return logits, target, weight, adjustment


def tolerances(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


def check_cross_entropy_parity(rank: int, sizes: list[int], dtype: torch.dtype, rows: int, group=None,
                               grid=KEYWORD_GRID, seed: int = 0, avoid_rank: int | None = None) -> None:
    """Loss and shard gradient against rarekit.cross_entropy on the whole logits, for every keyword of
    the grid, with and without weights and logit adjustment: per-row losses (``reduction="none"``,
    a random upstream gradient) everywhere, "mean" and "sum" on every third keyword set."""
    avoid = None if avoid_rank is None else (sum(sizes[:avoid_rank]), sum(sizes[:avoid_rank + 1]))
    full, target, weight, adjustment = inputs(seed, rows, sum(sizes), dtype, avoid=avoid)
    gen = torch.Generator().manual_seed(seed + 1)
    cases = [(keywords, reduction) for index, keywords in enumerate(grid)
             for reduction in (("none", "mean", "sum") if index % 3 == 0 else ("none",))]
    for (keywords, reduction), class_weight, adjust in itertools.product(cases, (None, weight), (None, adjustment)):
        local = shard_of(full, sizes, rank).clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(local, target, class_weight, group=group, reduction=reduction,
                                            logit_adjustment=adjust, **keywords)
        whole = full.clone().requires_grad_()
        expected = rarekit.cross_entropy(whole, target, class_weight, reduction=reduction, logit_adjustment=adjust,
                                         **keywords)
        context = f"rank {rank}, sizes {sizes}, {dtype}, {keywords}, weight={class_weight is not None}, " \
                  f"adjustment={adjust is not None}, {reduction}"
        torch.testing.assert_close(loss, expected, **tolerances(dtype), msg=lambda m: f"{context}: {m}")
        upstream = torch.randn(loss.shape, generator=gen, dtype=dtype)
        (loss * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(local.grad, shard_of(whole.grad, sizes, rank), **tolerances(dtype),
                                   msg=lambda m: f"{context}, gradient: {m}")


def check_masked_vocabulary(rank: int, sizes: list[int]) -> None:
    """-inf logits (a masked vocabulary), including a whole shard of some rows: the single-process
    answers, as long as no target is masked."""
    full, target, weight, adjustment = inputs(12, 10, sum(sizes), torch.float32)
    gen = torch.Generator().manual_seed(13)
    mask = torch.rand(full.shape, generator=gen) < 0.3
    mask[:3, sizes[0]:sizes[0] + sizes[1]] = True  # rank 1's whole shard, in three rows
    mask[torch.arange(10), target.clamp(min=0)] = False
    mask[:3, target.clamp(min=0)[:3]] = False
    full = full.masked_fill(mask, -torch.inf)
    for keywords in [entry for entry in KEYWORD_GRID if entry["label_smoothing"] == 0]:
        local = shard_of(full, sizes, rank).clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(local, target, weight, reduction="none", logit_adjustment=adjustment,
                                            **keywords)
        whole = full.clone().requires_grad_()
        expected = rarekit.cross_entropy(whole, target, weight, reduction="none", logit_adjustment=adjustment,
                                         **keywords)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        loss.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(local.grad, shard_of(whole.grad, sizes, rank), rtol=1e-5, atol=1e-6)


def check_all_ignored(rank: int, sizes: list[int]) -> None:
    """Every row ignored: torch's answers (mean NaN, sum 0, none zeros) and a zero gradient."""
    full, target, weight, _ = inputs(3, 6, sum(sizes), torch.float32)
    target.fill_(-100)
    for reduction in ("mean", "sum", "none"):
        local = shard_of(full, sizes, rank).clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(local, target, weight, reduction=reduction, label_smoothing=0.1)
        expected = torch.nn.functional.cross_entropy(full, target, weight, reduction=reduction, label_smoothing=0.1)
        torch.testing.assert_close(loss, expected, equal_nan=True)
        if reduction != "mean":
            loss.sum().backward()
            assert torch.equal(local.grad, torch.zeros_like(local))


def gathered_bits(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (float32 or 64), as int64 bit patterns, gathered in rank order."""
    bits = value.detach().double().reshape(-1).view(torch.int64)
    out = [torch.empty_like(bits) for _ in range(dist.get_world_size())]
    dist.all_gather(out, bits)
    return torch.stack(out)


def check_bitwise(rank: int, sizes: list[int]) -> None:
    """The loss is bitwise the same on every rank, and the same in a second run."""
    full, target, weight, adjustment = inputs(4, 33, sum(sizes), torch.float32)
    local = shard_of(full, sizes, rank)
    keywords = dict(label_smoothing=0.1, focal_gamma=2.0, logit_adjustment=adjustment, z_loss=1e-4)
    for reduction in ("mean", "none"):
        first = vocab_parallel_cross_entropy(local, target, weight, reduction=reduction, **keywords)
        second = vocab_parallel_cross_entropy(local, target, weight, reduction=reduction, **keywords)
        assert torch.equal(first, second)
        bits = gathered_bits(first)
        assert (bits == bits[0]).all(), f"rank {rank}: losses differ across ranks"


def collective_count(run) -> int:
    """gloo collectives that ``run()`` issues (the profiler's gloo:* events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as trace:
        run()
    return sum(1 for event in trace.events() if event.name.startswith("gloo:"))


def check_cross_entropy_budget(rank: int, sizes: list[int]) -> None:
    """CE: two collectives in the forward (sizes, statistics), one with vocab_start, none backward."""
    full, target, weight, _ = inputs(5, 16, sum(sizes), torch.float32)
    for vocab_start, expected in ((None, 2), (sum(sizes[:rank]), 1)):
        local = shard_of(full, sizes, rank).clone().requires_grad_()
        loss = [None]

        def forward():
            loss[0] = vocab_parallel_cross_entropy(local, target, weight, vocab_start=vocab_start,
                                                   label_smoothing=0.1, focal_gamma=1.0)
        assert collective_count(forward) == expected
        assert collective_count(lambda: loss[0].backward()) == 0
        assert local.grad is not None


def check_gradcheck(rank: int, world: int) -> None:
    """float64 gradcheck of the shard's gradient, one rank's shard at a time: the ranks call the loss in
    lockstep (shards of one size), the others with their shard fixed and the loss times 0 as output (it
    moves with the checked rank's probes)."""
    sizes = [3] * world
    full, target, weight, adjustment = inputs(6, 4, sum(sizes), torch.float64, ignored=0.25)
    local = shard_of(full, sizes, rank).clone()
    for keywords in (dict(reduction="none", label_smoothing=0.2, focal_gamma=1.5, logit_adjustment=adjustment),
                     dict(reduction="mean", label_smoothing=0.1, smoothing_mode="target_weighted", z_loss=0.01)):
        for turn in range(world):
            probe = local.clone().requires_grad_()

            def loss(x):
                if rank == turn:
                    return vocab_parallel_cross_entropy(x, target, weight, **keywords)
                return 0 * vocab_parallel_cross_entropy(local + 0 * x, target, weight, **keywords)
            assert torch.autograd.gradcheck(loss, (probe,))


def check_refusals(rank: int, sizes: list[int]) -> None:
    """Double backward and forward-mode AD raise (no collective is left half-done)."""
    full, target, weight, _ = inputs(7, 5, sum(sizes), torch.float64)
    local = shard_of(full, sizes, rank).clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, weight)
    (grad,) = torch.autograd.grad(loss, local, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(shard_of(full, sizes, rank).clone(), torch.ones_like(local))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            vocab_parallel_cross_entropy(dual, target, weight)


def check_bad_inputs(rank: int, sizes: list[int]) -> None:
    """Each bad input raises the same error on every rank; the group is still usable afterwards."""
    world = len(sizes)
    full, target, weight, _ = inputs(8, 9, sum(sizes), torch.float32)
    local = shard_of(full, sizes, rank)
    classes = sum(sizes)
    out_of_range = target.clone()
    out_of_range[4] = classes
    cases = [
        (IndexError, rf"target\[4\] = {classes} is out of range for the {classes} classes",
         lambda: vocab_parallel_cross_entropy(local, out_of_range, weight)),
        (IndexError, "out of range", lambda: vocab_parallel_cross_entropy(local, out_of_range, weight,
                                                                           vocab_start=sum(sizes[:rank]))),
        (ValueError, rf"weight must have shape \({classes},\)",
         lambda: vocab_parallel_cross_entropy(local, target, weight[:-1])),
        (ValueError, rf"weight must have shape \({classes},\)",
         lambda: vocab_parallel_cross_entropy(local, target, weight[:-1], vocab_start=sum(sizes[:rank]))),
        (ValueError, "disagree with vocab_start",
         lambda: vocab_parallel_cross_entropy(local, target, vocab_start=sum(sizes[:rank]) + (rank == world - 1))),
        (ValueError, "disagree on the number of rows",
         lambda: vocab_parallel_cross_entropy(torch.cat([local, local[:1]]) if rank == 1 else local,
                                              torch.cat([target, target[:1]]) if rank == 1 else target)),
        (ValueError, "rank 1 of the group: logits must be this rank's",
         lambda: vocab_parallel_cross_entropy(local[None] if rank == 1 else local, target)),
        (ValueError, "rank 1 of the group: logits must be this rank's",
         lambda: vocab_parallel_cross_entropy(local[None] if rank == 1 else local, target,
                                              vocab_start=sum(sizes[:rank]))),
        (ValueError, "target differs across ranks",
         lambda: vocab_parallel_cross_entropy(local, target.roll(rank))),
        (ValueError, "weight differs across ranks", lambda: vocab_parallel_cross_entropy(local, target, weight + rank)),
        (ValueError, "loss keywords differ", lambda: vocab_parallel_cross_entropy(local, target, z_loss=rank * 1e-3)),
        (ValueError, "rank 1 of the group: vocab_start must be an integer >= 0, got -1",
         lambda: vocab_parallel_cross_entropy(local, target, vocab_start=-1 if rank == 1 else sum(sizes[:rank]))),
        (ValueError, "rank 1 of the group: vocab_start must be an integer >= 0, got another value",
         lambda: vocab_parallel_cross_entropy(local, target, vocab_start=2.0 if rank == 1 else sum(sizes[:rank]))),
        (ValueError, "weight must be 1-D", lambda: vocab_parallel_cross_entropy(local, target, weight[None])),
        (TypeError, "target must hold integer class indices",
         lambda: vocab_parallel_cross_entropy(local, target.float())),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern):
            call()
    with pytest.raises(RuntimeError, match="logit_adjustment that requires grad"):
        vocab_parallel_cross_entropy(local, target, logit_adjustment=torch.zeros(classes, requires_grad=True))
    expected = rarekit.cross_entropy(full, target, weight)
    torch.testing.assert_close(vocab_parallel_cross_entropy(local, target, weight), expected)


def check_module(rank: int, sizes: list[int]) -> None:
    full, target, weight, adjustment = inputs(9, 8, sum(sizes), torch.float32)
    module = VocabParallelCrossEntropyLoss(weight, label_smoothing=0.1, focal_gamma=1.0, logit_adjustment=adjustment)
    expected = rarekit.CrossEntropyLoss(weight, label_smoothing=0.1, focal_gamma=1.0,
                                        logit_adjustment=adjustment)(full, target)
    torch.testing.assert_close(module(shard_of(full, sizes, rank), target), expected)
    assert set(module.state_dict()) == {"weight", "logit_adjustment"}


def linear_inputs(seed: int, rows: int, dim: int, classes: int, dtype: torch.dtype):
    """Hidden states (2, rows, dim), a classifier and a bias scaled to logits of a few units, and
    ``inputs``'s targets, weights and adjustment."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, rows, dim, generator=gen, dtype=torch.float64).to(dtype)
    classifier = (torch.randn(classes, dim, generator=gen, dtype=torch.float64) * 3 / dim ** 0.5).to(dtype)
    bias = torch.randn(classes, generator=gen, dtype=torch.float64).to(dtype)
    _, target, weight, adjustment = inputs(seed, 2 * rows, classes, dtype)
    return hidden, classifier, bias, target.reshape(2, rows), weight, adjustment


def check_linear_parity(rank: int, sizes: list[int], dtype: torch.dtype, rows: int, dim: int = 5,
                        grid=KEYWORD_GRID[::2]) -> None:
    """Loss and the gradients of hidden (whole), classifier and bias (the shard) against
    rarekit.linear_cross_entropy with the whole classifier: keywords, softcap, chunk sizes, reductions."""
    hidden, classifier, bias, target, weight, adjustment = linear_inputs(20, rows, dim, sum(sizes), dtype)
    gen = torch.Generator().manual_seed(21)
    cases = [(keywords, reduction, softcap, chunk) for index, keywords in enumerate(grid)
             for reduction, softcap, chunk in (("none", None, None), ("none", 4.0, 3), ("mean", 4.0, 5),
                                               ("sum", None, 2))[:4 if index % 3 == 0 else 2]]
    for (keywords, reduction, softcap, chunk), class_weight, adjust in itertools.product(
            cases, (None, weight), (None, adjustment)):
        probes = [hidden.clone().requires_grad_(), shard_of(classifier, sizes, rank, 0).clone().requires_grad_(),
                  shard_of(bias, sizes, rank, 0).clone().requires_grad_()]
        loss = vocab_parallel_linear_cross_entropy(probes[0], probes[1], target, class_weight, bias=probes[2],
                                                   reduction=reduction, logit_adjustment=adjust, softcap=softcap,
                                                   chunk_size=chunk, **keywords)
        wholes = [hidden.clone().requires_grad_(), classifier.clone().requires_grad_(), bias.clone().requires_grad_()]
        expected = rarekit.linear_cross_entropy(wholes[0], wholes[1], target, class_weight, bias=wholes[2],
                                                reduction=reduction, logit_adjustment=adjust, softcap=softcap,
                                                **keywords)
        context = f"rank {rank}, sizes {sizes}, {dtype}, {keywords}, weight={class_weight is not None}, " \
                  f"adjustment={adjust is not None}, {reduction}, softcap={softcap}, chunk_size={chunk}"
        torch.testing.assert_close(loss, expected, **tolerances(dtype), msg=lambda m: f"{context}: {m}")
        upstream = torch.randn(loss.shape, generator=gen, dtype=dtype)
        (loss * upstream).sum().backward()
        (expected * upstream).sum().backward()
        for name, probe, whole in zip(("hidden", "classifier", "bias"), probes, wholes):
            wanted = whole.grad if name == "hidden" else shard_of(whole.grad, sizes, rank, 0)
            torch.testing.assert_close(probe.grad, wanted, **tolerances(dtype),
                                       msg=lambda m: f"{context}, {name} gradient: {m}")
        bits = gathered_bits(probes[0].grad)
        assert (bits == bits[0]).all(), f"{context}: the hidden gradient differs across ranks"


def check_linear_budget(rank: int, sizes: list[int]) -> None:
    """Fused: the forward's collectives (2, or 1 with vocab_start) and the backward's one all-reduce
    do not depend on the number of chunks; no collective in the backward without a hidden gradient."""
    hidden, classifier, bias, target, weight, _ = linear_inputs(22, 12, 4, sum(sizes), torch.float32)
    local = shard_of(classifier, sizes, rank, 0)
    for vocab_start, forward_count in ((None, 2), (sum(sizes[:rank]), 1)):
        for chunk in (1, 5, 1000):
            for wants_hidden in (True, False):
                probe = hidden.clone().requires_grad_(wants_hidden)
                head = local.clone().requires_grad_()
                loss = [None]

                def forward():
                    loss[0] = vocab_parallel_linear_cross_entropy(probe, head, target, weight, vocab_start=vocab_start,
                                                                  chunk_size=chunk, label_smoothing=0.1)
                assert collective_count(forward) == forward_count
                assert collective_count(lambda: loss[0].backward()) == int(wants_hidden)
                assert head.grad is not None


def check_linear_kept_chunks(rank: int, sizes: list[int]) -> None:
    """The forward keeps its last chunks' logits for the first backward; a second backward
    (retain_graph) recomputes every chunk and gives the same gradients, which are the single-process
    ones; without a gradient to compute, nothing is kept."""
    hidden, classifier, bias, target, weight, adjustment = linear_inputs(24, 9, 4, sum(sizes), torch.float32)
    keywords = dict(label_smoothing=0.1, focal_gamma=1.0, logit_adjustment=adjustment, reduction="sum")
    wholes = [hidden.clone().requires_grad_(), classifier.clone().requires_grad_()]
    rarekit.linear_cross_entropy(*wholes, target, weight, **keywords).backward()
    for chunk in (2, 5, 18):  # kept and recomputed chunks, two kept chunks, one chunk
        probes = [hidden.clone().requires_grad_(), shard_of(classifier, sizes, rank, 0).clone().requires_grad_()]
        loss = vocab_parallel_linear_cross_entropy(*probes, target, weight, chunk_size=chunk, **keywords)
        loss.backward(retain_graph=True)
        first = [probe.grad.clone() for probe in probes]
        for probe in probes:
            probe.grad = None
        loss.backward()
        for name, probe, kept_path, whole in zip(("hidden", "classifier"), probes, first, wholes):
            torch.testing.assert_close(probe.grad, kept_path, rtol=1e-6, atol=1e-6, msg=f"{name}, chunk {chunk}")
            wanted = whole.grad if name == "hidden" else shard_of(whole.grad, sizes, rank, 0)
            torch.testing.assert_close(kept_path, wanted, rtol=1e-5, atol=1e-6, msg=f"{name}, chunk {chunk}")
    with torch.no_grad():
        torch.testing.assert_close(
            vocab_parallel_linear_cross_entropy(hidden, shard_of(classifier, sizes, rank, 0), target, weight,
                                                chunk_size=2, **keywords),
            rarekit.linear_cross_entropy(hidden, classifier, target, weight, **keywords))


def check_linear_gradcheck(rank: int, world: int) -> None:
    """float64 gradcheck of the fused loss: the replicated hidden states probed on every rank at once,
    the classifier and bias shards one rank at a time (see check_gradcheck)."""
    sizes = [3] * world
    hidden, classifier, bias, target, weight, adjustment = linear_inputs(23, 2, 3, sum(sizes), torch.float64)
    head, offset = shard_of(classifier, sizes, rank, 0).clone(), shard_of(bias, sizes, rank, 0).clone()
    keywords = dict(reduction="none", label_smoothing=0.2, focal_gamma=1.5, logit_adjustment=adjustment,
                    softcap=3.0, z_loss=0.01, chunk_size=3)
    assert torch.autograd.gradcheck(lambda x: vocab_parallel_linear_cross_entropy(
        x, head, target, weight, bias=offset, **keywords), (hidden.clone().requires_grad_(),))
    kept = dict(keywords, softcap=None, chunk_size=1)  # the forward keeps the last two chunks' logits
    assert torch.autograd.gradcheck(lambda x: vocab_parallel_linear_cross_entropy(
        x, head, target, weight, bias=offset, **kept), (hidden.clone().requires_grad_(),))
    for turn in range(world):
        def loss(rows, column):
            if rank == turn:
                return vocab_parallel_linear_cross_entropy(hidden, rows, target, weight, bias=column, **keywords)
            return 0 * vocab_parallel_linear_cross_entropy(hidden, head + 0 * rows, target, weight,
                                                           bias=offset + 0 * column, **keywords)
        assert torch.autograd.gradcheck(loss, (head.clone().requires_grad_(), offset.clone().requires_grad_()))


def check_linear_bad_inputs(rank: int, sizes: list[int]) -> None:
    hidden, classifier, bias, target, weight, _ = linear_inputs(24, 4, 3, sum(sizes), torch.float32)
    local, start, classes = shard_of(classifier, sizes, rank, 0), sum(sizes[:rank]), sum(sizes)
    out_of_range = target.clone()
    out_of_range[1, 2] = -3
    cases = [
        (IndexError, r"target\[6\] = -3 is out of range",
         lambda: vocab_parallel_linear_cross_entropy(hidden, local, out_of_range, weight)),
        (ValueError, rf"weight must have shape \({classes},\)",
         lambda: vocab_parallel_linear_cross_entropy(hidden, local, target, weight[:-1], vocab_start=start)),
        (ValueError, "disagree with vocab_start",
         lambda: vocab_parallel_linear_cross_entropy(hidden, local, target, vocab_start=0)),
        (ValueError, "disagree on the number of rows",
         lambda: vocab_parallel_linear_cross_entropy(hidden[:, 1:] if rank == 0 else hidden, local,
                                                     target[:, 1:] if rank == 0 else target)),
        (ValueError, "rank 0 of the group: classifier must be",
         lambda: vocab_parallel_linear_cross_entropy(hidden, local[:, 1:] if rank == 0 else local, target,
                                                     vocab_start=start)),
        (ValueError, "rank 1 of the group: bias must be",
         lambda: vocab_parallel_linear_cross_entropy(hidden, local, target, bias=bias[:2] if rank == 1 else
                                                     shard_of(bias, sizes, rank, 0))),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern):
            call()
    module = VocabParallelLinearCrossEntropyLoss(weight, label_smoothing=0.1, chunk_size=3)
    torch.testing.assert_close(module(hidden, local, target),
                               rarekit.LinearCrossEntropyLoss(weight, label_smoothing=0.1)(hidden, classifier, target))


def check_dtensor(rank: int, world: int) -> None:
    """A tiny embedding + LM head parallelized with parallelize_module (vocabulary-parallel embedding,
    column-parallel head): the loss on its DTensor logits, and the fused loss on its DTensor head weight,
    equal the unparallelized model's, and so does every parameter's gradient."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    classes, dim = 11, 4
    torch.manual_seed(30)
    reference = torch.nn.ModuleDict({"embed": torch.nn.Embedding(classes, dim),
                                     "head": torch.nn.Linear(dim, classes, bias=False)})
    ids = torch.randint(0, classes, (2, 5))
    target = ids.roll(-1, 1)
    target[0, -1] = -100
    weight = torch.rand(classes) + 0.5
    keywords = dict(label_smoothing=0.1, smoothing_mode="target_weighted", focal_gamma=1.0, z_loss=1e-3)
    mesh = init_device_mesh("cpu", (world,))
    for fused in (False, True):
        model = parallelize_module(copy.deepcopy(reference), mesh, {
            "embed": RowwiseParallel(input_layouts=Replicate()),
            "head": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)})
        expected_model = copy.deepcopy(reference)
        hidden, expected_hidden = model["embed"](ids), expected_model["embed"](ids)
        if fused:
            loss = vocab_parallel_linear_cross_entropy(hidden, model["head"].weight, target, weight, **keywords)
            expected = rarekit.linear_cross_entropy(expected_hidden, expected_model["head"].weight, target, weight,
                                                    **keywords)
        else:
            logits = model["head"](hidden)
            assert logits.placements == (Shard(2),)
            loss = vocab_parallel_cross_entropy(logits.reshape(-1, classes), target.reshape(-1), weight, **keywords)
            expected = rarekit.cross_entropy(expected_model["head"](expected_hidden).reshape(-1, classes),
                                             target.reshape(-1), weight, **keywords)
        torch.testing.assert_close(loss, expected)
        loss.backward()
        expected.backward()
        for (name, parameter), expected_parameter in zip(model.named_parameters(), expected_model.parameters()):
            assert isinstance(parameter.grad, DTensor), name  # (the embedding's comes back replicated)
            assert name != "head.weight" or parameter.grad.placements == (Shard(0),)
            torch.testing.assert_close(parameter.grad.full_tensor(), expected_parameter.grad, msg=name)


def check_subgroups(rank: int) -> None:
    """Tensor-parallel groups [0, 2] and [1, 3] in a world of 4: each pair splits its own logits."""
    groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    group, group_rank = groups[rank % 2], rank // 2
    sizes = split_sizes(11, 2)
    check_cross_entropy_parity(group_rank, sizes, torch.float32, 7, group=group, grid=KEYWORD_GRID[::5],
                               seed=100 + rank % 2)
    full, target, _, _ = inputs(200 + rank % 2, 5, sum(sizes), torch.float32)
    local = shard_of(full, sizes, group_rank)
    torch.testing.assert_close(vocab_parallel_cross_entropy(local, target, group=group),
                               rarekit.cross_entropy(full, target))


def check_reference_path(rank: int, sizes: list[int]) -> None:
    """The shard's gradient from the torch reference (no compiled kernel) gives the same answers."""
    rarekit.set_backend("reference")
    try:
        check_cross_entropy_parity(rank, sizes, torch.float64, 11, grid=KEYWORD_GRID[::2])
        check_linear_parity(rank, sizes, torch.float32, 5, grid=KEYWORD_GRID[::4])
    finally:
        rarekit.set_backend("native")


def two_ranks(rank: int, world: int) -> None:
    sizes = split_sizes(13, world)
    for dtype in (torch.float32, torch.float64):
        check_cross_entropy_parity(rank, sizes, dtype, 20)
        check_linear_parity(rank, sizes, dtype, 7)
    check_reference_path(rank, sizes)
    check_linear_budget(rank, sizes)
    check_linear_gradcheck(rank, world)
    check_linear_kept_chunks(rank, sizes)
    check_linear_bad_inputs(rank, sizes)
    check_dtensor(rank, world)
    check_all_ignored(rank, sizes)
    check_bitwise(rank, sizes)
    check_cross_entropy_budget(rank, sizes)
    check_gradcheck(rank, world)
    check_refusals(rank, sizes)
    check_bad_inputs(rank, sizes)
    check_module(rank, sizes)


def three_ranks(rank: int, world: int) -> None:
    sizes = split_sizes(17, world, skew=3)  # 9, 6, 2
    check_cross_entropy_parity(rank, sizes, torch.float32, 15, avoid_rank=1)  # rank 1 owns no target
    check_cross_entropy_parity(rank, sizes, torch.float64, 15, grid=KEYWORD_GRID[::3])
    check_masked_vocabulary(rank, sizes)
    check_linear_parity(rank, sizes, torch.float32, 6, grid=KEYWORD_GRID[::3])
    check_bitwise(rank, sizes)
    check_bad_inputs(rank, sizes)
    check_linear_bad_inputs(rank, sizes)
    check_dtensor(rank, world)


def four_ranks(rank: int, world: int) -> None:
    check_cross_entropy_parity(rank, [2, 1, 1, 0], torch.float32, 9, grid=KEYWORD_GRID[::4])  # an empty shard
    check_cross_entropy_parity(rank, split_sizes(50, world), torch.float64, 9, grid=KEYWORD_GRID[::4])
    check_linear_parity(rank, [2, 1, 1, 0], torch.float32, 4, grid=KEYWORD_GRID[::6])
    check_subgroups(rank)


@pytest.mark.parametrize("world, checks", [(2, two_ranks), (3, three_ranks), (4, four_ranks)],
                         ids=["2-ranks", "3-ranks", "4-ranks"])
def test_vocab_parallel_ranks(world, checks):
    run_ranks(checks, world)


def test_without_a_process_group_it_is_rarekit_cross_entropy():
    assert not dist.is_initialized()
    full, target, weight, adjustment = inputs(10, 12, 9, torch.float32)
    keywords = dict(label_smoothing=0.1, focal_gamma=2.0, logit_adjustment=adjustment, reduction="sum")
    assert torch.equal(vocab_parallel_cross_entropy(full, target, weight, **keywords),
                       rarekit.cross_entropy(full, target, weight, **keywords))
    with pytest.raises(ValueError, match="vocab_start must be 0"):
        vocab_parallel_cross_entropy(full, target, vocab_start=3)


def test_one_rank_group_is_rarekit_cross_entropy():
    from ranks import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        full, target, weight, _ = inputs(11, 12, 9, torch.float32)
        logits = full.clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(logits, target, weight, vocab_start=0, label_smoothing=0.2)
        expected = full.clone().requires_grad_()
        reference = rarekit.cross_entropy(expected, target, weight, label_smoothing=0.2)
        loss.backward(), reference.backward()
        assert torch.equal(loss, reference) and torch.equal(logits.grad, expected.grad)
    finally:
        dist.destroy_process_group()


def test_without_a_process_group_it_is_rarekit_linear_cross_entropy():
    hidden, classifier, bias, target, weight, adjustment = linear_inputs(12, 6, 4, 9, torch.float32)
    keywords = dict(bias=bias, label_smoothing=0.1, focal_gamma=2.0, logit_adjustment=adjustment, softcap=5.0,
                    chunk_size=4)
    assert torch.equal(vocab_parallel_linear_cross_entropy(hidden, classifier, target, weight, **keywords),
                       rarekit.linear_cross_entropy(hidden, classifier, target, weight, **keywords))


def test_import_rarekit_does_not_load_the_distributed_losses():
    import subprocess
    import sys

    code = "import sys, rarekit; print('rarekit.distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
