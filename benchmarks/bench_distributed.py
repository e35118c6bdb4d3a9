"""Tensor-parallel (vocabulary-parallel) losses on W = 2 gloo ranks of this machine's CPU, one thread each
(issue 22): rarekit.distributed against single-process rarekit on two threads and against gathering the
shards onto every rank (an all-gather of the logits, or of the classifier rows for the fused loss).

- CE: weighted cross-entropy forward+backward, fp32 N = 1024 x V = 131072 (each rank holds 1024 x 65536);
- fused linear CE: weighted, fp32 8192 tokens x 256 hidden x 64000 vocab (each rank holds 32000 rows).

Reported per contender: the median step time (the contenders timed round-robin in one job: the W = 2 steps
on both ranks, the single-process step on rank 0 with two threads while rank 1 waits in a barrier); the
peak memory growth per rank during the first step (the peak-RSS mark is reset before each contender, then
ru_maxrss after its first step minus the resident memory before it; it counts the returned gradients);
and the bytes each rank sends per step, counted from the collectives issued, against Megatron-LM's
scheme (3 all-reduces of N floats, 2 (W-1)/W · 4N bytes sent per rank each by a ring all-reduce).
Targets (issue 22): CE peak growth <= 1.3x the local logits, fused <= 0.5x; W = 2 step <= 1.5x the
single-process step on two threads.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import common
from common import parse_args, report

WORLD = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def first_step_growth(step) -> int:
    """Peak resident memory growth of the first step: the heap's free memory is handed back (glibc
    malloc_trim) and the kernel's peak-RSS mark reset (Linux clear_refs 5), then ru_maxrss after the
    step minus the resident memory before it. rarekit's kept CPU gradient buffers are freed first, so the
    memory a step reuses from them counts as the step's."""
    import rarekit

    rarekit.release_cpu_buffers()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = rss_bytes()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


class ByteCounter:
    """Counts the bytes this rank sends through torch.distributed's all-gathers (every form: the list
    form, all_gather_single, all_gather_into_tensor) and all_reduce while active: (W-1) x the block for an
    all-gather, 2 (W-1)/W x the tensor for a ring all-reduce."""

    GATHERS = ("all_gather", "all_gather_single", "all_gather_into_tensor")

    def __init__(self):
        self.sent, self.calls, self.active = 0, 0, False
        for name in self.GATHERS:
            if hasattr(dist, name):
                setattr(dist, name, self.counting(getattr(dist, name), WORLD - 1))
        dist.all_reduce = self.counting(dist.all_reduce, 2 * (WORLD - 1) / WORLD, position=0)

    def counting(self, collective, copies: float, position: int = 1):
        """``collective`` that first records ``copies`` x the bytes of its argument at ``position``."""
        def counted(*args, **kwargs):
            tensor = args[position]
            self.record(copies * tensor.numel() * tensor.element_size())
            return collective(*args, **kwargs)
        return counted

    def record(self, sent: float) -> None:
        if self.active:
            self.sent += sent
            self.calls += 1

    def count(self, step) -> tuple[float, int]:
        self.sent, self.calls, self.active = 0, 0, True
        step()
        self.active = False
        return self.sent, self.calls


def gathered(local: torch.Tensor, dim: int) -> torch.Tensor:
    """The whole tensor from every rank's shard along ``dim``, differentiable in this rank's shard."""
    parts = [torch.empty_like(local) for _ in range(WORLD)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts, dim)


def ce_contenders(rank: int, rows: int, vocab: int):
    import rarekit
    from rarekit.distributed import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(0)
    full = torch.randn(rows, vocab, generator=gen)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    weight = torch.rand(vocab, generator=gen) + 0.1
    shard = vocab // WORLD
    local = full[:, rank * shard:(rank + 1) * shard].clone().requires_grad_()
    whole = full.requires_grad_() if rank == 0 else None
    del full

    def parallel():
        vocab_parallel_cross_entropy(local, target, weight).backward()
        local.grad = None

    def all_gather_logits():
        rarekit.cross_entropy(gathered(local, 1), target, weight).backward()
        local.grad = None

    def single_process():
        rarekit.cross_entropy(whole, target, weight).backward()
        whole.grad = None
    return {"rarekit.distributed (W=2)": parallel, "all-gather the logits (W=2)": all_gather_logits,
            "single-process rarekit (2 threads)": single_process}, local.numel() * local.element_size(), rows


def fused_contenders(rank: int, rows: int, dim: int, vocab: int):
    import rarekit
    from rarekit.distributed import vocab_parallel_linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, dim, generator=gen).requires_grad_()
    classifier = torch.randn(vocab, dim, generator=gen) / dim ** 0.5
    target = torch.randint(0, vocab, (rows,), generator=gen)
    weight = torch.rand(vocab, generator=gen) + 0.1
    shard = vocab // WORLD
    local = classifier[rank * shard:(rank + 1) * shard].clone().requires_grad_()
    whole = classifier.requires_grad_() if rank == 0 else None

    def parallel():
        vocab_parallel_linear_cross_entropy(hidden, local, target, weight).backward()
        hidden.grad = local.grad = None

    def all_gather_classifier():
        rarekit.linear_cross_entropy(hidden, gathered(local, 0), target, weight).backward()
        hidden.grad = local.grad = None

    def single_process():
        rarekit.linear_cross_entropy(hidden, whole, target, weight).backward()
        hidden.grad = whole.grad = None
    return {"rarekit.distributed (W=2)": parallel, "all-gather the classifier (W=2)": all_gather_classifier,
            "single-process rarekit (2 threads)": single_process}, rows * shard * 4, rows


def run_contender(rank: int, name: str, step) -> None:
    """One step of ``name`` on the ranks that take part (the single-process step: rank 0, two threads),
    then a barrier, so that every rank leaves together."""
    if name.startswith("single-process"):
        if rank == 0:
            torch.set_num_threads(WORLD)
            step()
            torch.set_num_threads(1)
    else:
        step()
    dist.barrier()


def rank_main(rank: int, port: int, job: str, shape: tuple, repeat: int, warmup: bool, quick: bool, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    common.QUICK = quick
    counter = ByteCounter()
    contenders, local_logits_bytes, rows = (ce_contenders if job == "ce" else fused_contenders)(rank, *shape)
    growth, sent = {}, {}
    for name, step in contenders.items():  # each contender's first step: memory, then bytes
        growth[name] = first_step_growth(lambda: run_contender(rank, name, step))
        sent[name] = counter.count(lambda: run_contender(rank, name, step))
    times = {name: [] for name in contenders}
    start, warmup_seconds = time.perf_counter(), common.QUICK_WARMUP_SECONDS if quick else common.WARMUP_SECONDS
    while warmup and time.perf_counter() - start < warmup_seconds:
        for name, step in contenders.items():
            run_contender(rank, name, step)
    for _ in range(repeat):
        for name, step in contenders.items():
            begin = time.perf_counter()
            run_contender(rank, name, step)
            times[name].append(time.perf_counter() - begin)
    growths = [None] * WORLD
    dist.all_gather_object(growths, growth)
    if rank == 0:
        result = {"median_s": {name: statistics.median(seconds) for name, seconds in times.items()},
                  "spread_s": {name: [min(seconds), max(seconds)] for name, seconds in times.items()},
                  "growth": growths, "sent": sent, "local_logits_bytes": local_logits_bytes, "rows": rows,
                  "hidden_bytes": shape[0] * shape[1] * 4 if job == "fused" else 0}
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


def run_job(job: str, shape: tuple, repeat: int, warmup: bool, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        mp.start_processes(rank_main, args=(free_port(), job, shape, repeat, warmup, quick, out), nprocs=WORLD,
                           start_method="spawn")
        with open(out) as handle:
            return json.load(handle)


def case_of(title: str, result: dict) -> dict:
    parallel, single = "rarekit.distributed (W=2)", "single-process rarekit (2 threads)"
    gather = next(name for name in result["median_s"] if name.startswith("all-gather"))
    times = result["median_s"]
    local = result["local_logits_bytes"]
    ring = 2 * (WORLD - 1) / WORLD  # bytes a rank sends per byte all-reduced
    megatron = ring * (3 * 4 * result["rows"] + result["hidden_bytes"])
    return {
        "case": title,
        "median_ms": {name: seconds * 1e3 for name, seconds in times.items()},
        "ratios": {"W=2 step / single-process step (target <= 1.5)": times[parallel] / times[single],
                   "same, fastest steps": result["spread_s"][parallel][0] / result["spread_s"][single][0],
                   f"speed-up vs {gather}": times[gather] / times[parallel]},
        "step_range_ms": {f"{name} {end}": seconds * 1e3 for name, (low, high) in result["spread_s"].items()
                          for end, seconds in (("min", low), ("max", high))},
        "peak_growth_MiB_rank0": {name: bytes_ / 2**20 for name, bytes_ in result["growth"][0].items()},
        "peak_growth_MiB_rank1": {name: bytes_ / 2**20 for name, bytes_ in result["growth"][1].items()
                                  if not name.startswith("single")},
        "peak_growth_vs_local_logits_max_rank": {
            name: max(growth[name] for growth in result["growth"]) / local for name in result["growth"][0]
            if not name.startswith("single")},
        "local_logits_MiB": local / 2**20,
        "bytes_sent_per_rank_per_step": {name: sent for name, (sent, _) in result["sent"].items()},
        "collectives_per_step": {name: calls for name, (_, calls) in result["sent"].items()},
        "Megatron-LM bytes sent per rank per step": megatron,
        "note": "Megatron-LM: 3 all-reduces of N fp32 in the forward" + (
            ", and the all-reduce of the (N, D) hidden gradient its column-parallel head also needs" if
            result["hidden_bytes"] else "") + "; ring all-reduce, 2 (W-1)/W bytes sent per byte",
    }


def main() -> None:
    args = parse_args(__doc__)
    if args.device != "cpu":
        print("bench_distributed: gloo ranks on the CPU only; skipped for --device", args.device)
        return
    ce_shape, fused_shape = (1024, 131072), (8192, 256, 64000)
    if args.quick:
        ce_shape, fused_shape = (256, 16384), (1024, 64, 8000)
    fused_repeat = args.repeat if args.quick else max(1, args.repeat // 3)  # a fused step takes tens of seconds
    cases = []
    for job, shape, repeat, warmup, title in (
            ("ce", ce_shape, args.repeat, True, f"weighted CE fp32 {ce_shape[0]} x {ce_shape[1]}, forward+backward"),
            ("fused", fused_shape, fused_repeat, False,  # the memory and byte rounds warm it up
             f"fused linear + weighted CE fp32, {fused_shape[0]} tokens x {fused_shape[1]} hidden x "
             f"{fused_shape[2]} vocab, forward+backward")):
        start = time.perf_counter()
        cases.append(case_of(title, run_job(job, shape, repeat, warmup, args.quick)))
        print(f"({job}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    report("distributed", torch.device("cpu"), cases, args.out)


if __name__ == "__main__":
    main()
