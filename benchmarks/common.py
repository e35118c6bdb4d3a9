"""Shared by the benchmarks: median timing, the machine's description, JSON output."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import statistics
import threading
import time

import torch

from rarekit._files import write_text_atomic

QUICK = False  # set by parse_args: --quick runs are smoke tests, and their JSON says so

def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                        help="folder for the JSON results (default: benchmarks/out)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, short warm-up (a smoke test)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="also time the small cases with N busy processes running (more runnable threads "
                             "than cores, as with busy data-loader workers)")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP_SECONDS = 1.0
QUICK_WARMUP_SECONDS = 0.05


def median_seconds(fn, device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeat` runs, after the untimed warm-up runs (see below)."""
    return median_seconds_interleaved({"fn": fn}, device, repeat, warmup)["fn"]


def median_seconds_interleaved(fns: dict, device: torch.device, repeat: int, warmup: int = 2) -> dict:
    """Median wall time of each fn, timed in turn (round-robin), so that a slow phase of a noisy
    machine (another process, the kernel settling the memory in) weighs on every peer alike."""
    return {name: statistics.median(seconds) for name, seconds in
            seconds_interleaved(fns, device, repeat, warmup).items()}


def seconds_interleaved(fns: dict, device: torch.device, repeat: int, warmup: int = 2) -> dict:
    """Wall times of each fn over `repeat` rounds, each round timing every fn in turn. Untimed warm-up
    rounds come first: `warmup` of them, and more until WARMUP_SECONDS have passed (the first half
    second after a large allocation runs slow on the 2-core VM)."""
    start, rounds = time.perf_counter(), 0
    warmup, warmup_seconds = (1, QUICK_WARMUP_SECONDS) if QUICK else (warmup, WARMUP_SECONDS)
    while rounds < warmup or time.perf_counter() - start < warmup_seconds:
        for fn in fns.values():
            fn()
        sync(device)
        rounds += 1
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10000))


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` processes that keep a core busy each until the block ends."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # the spawned interpreters start
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


def under_load(peers: dict, device: torch.device, repeat: int, busy: int) -> dict:
    """Median times of each peer on torch's default thread count and on one thread, with ``busy``
    busy processes running; the thread count is restored after."""
    threads = torch.get_num_threads()
    times = {}
    with busy_processes(busy):
        try:
            for count in dict.fromkeys((threads, 1)):
                torch.set_num_threads(count)
                measured = median_seconds_interleaved(peers, device, repeat)
                times.update({f"{name}, {count} thread{'s' if count > 1 else ''}": seconds
                              for name, seconds in measured.items()})
        finally:
            torch.set_num_threads(threads)
    return times


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_peak_extra_bytes(run) -> int:
    """Peak resident memory during run() beyond what existed before it (sampled every 0.2 ms); what
    run() returns counts until it is dropped. rarekit's kept CPU gradient buffers are freed first, so
    the memory a step reuses from them counts as the step's."""
    import rarekit

    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0002)

    gc.collect()
    rarekit.release_cpu_buffers()
    base = rss_bytes()
    sampler = threading.Thread(target=sample)
    sampler.start()
    result = run()
    done.set()
    sampler.join()
    del result
    return max(peak[0], rss_bytes()) - base


def machine() -> dict:
    import rarekit

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rarekit_backend": rarekit.backend_info(),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table_cell(value) -> str:
    return f"{value:10.3f}" if isinstance(value, float) else str(value)


def report(job: str, device: torch.device, cases: list[dict], out_dir: str) -> str:
    """Prints each case as a table (its medians, ratios and every other figure; the JSON goes only
    into the file), writes <out_dir>/<job>-<device>.json, returns its path."""
    for case in cases:
        print(f"\n{job} [{device.type}] {case['case']}")
        for name, seconds in case["median_ms"].items():
            print(f"  {name:<28} {seconds:10.3f} ms")
        for name, ratio in case.get("ratios", {}).items():
            print(f"  {name:<40} {ratio:8.2f}x")
        for key, value in case.items():
            if key in ("case", "median_ms", "ratios"):
                continue
            if isinstance(value, dict):
                print(f"  {key}:")
                for name, item in value.items():
                    print(f"    {name:<38} {table_cell(item)}")
            elif isinstance(value, str):
                print(f"  {key}: {value}")
            else:
                print(f"  {key:<40} {table_cell(value)}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{job}-{device.type}.json")
    write_text_atomic(path, json.dumps({"job": job, "device": device.type, "quick": QUICK, "machine": machine(),
                                        "cases": cases}, indent=2))
    print(f"\nwrote {path}")
    return path
