"""Weighted cross-entropy forward+backward: rarekit against torch eager, torch.compile and Liger Kernel.

CPU: fp32 4096x32000; CUDA: bf16 16384x128256 and 8192x256000. Each step copies this
step's logits into a buffer (as an LM head writes them) and runs forward + backward to the logits'
gradient. Reports the median step time with a copy of the logits as the floor, and the peak memory
beyond the inputs (CPU: resident memory sampled during one step; CUDA: max_memory_allocated).
Targets: CPU >= 3x eager, >= 2x torch.compile, peak extra <= 1x the logits (~0 with inplace_backward);
H200 >= 85 % of copy bandwidth (read logits + write grad), >= 1.25x Liger.
Few classes (CPU, fp32, issue 21): N=2^20 C=2 >= 3x eager, N=2^20 C=10 >= 4x, N=2^17 C=100 >= 4x, and
N=512 C=256000 not slower than before; small batches (256x10, 64x2) no slower than eager, timed as a
training loop calls them (many steps per sample).
--busy N (CPU): the few-class and small-batch cases again with N busy processes running, on torch's
thread count and on one thread.
"""
import functools

import torch
import torch.nn.functional as F

import common
import rarekit
from common import cpu_peak_extra_bytes, median_seconds, median_seconds_interleaved, parse_args, report, under_load


def contenders(device: torch.device) -> dict:
    def rarekit_ce(x, t, w):
        return rarekit.cross_entropy(x, t, w)

    def rarekit_inplace(x, t, w):
        return rarekit.cross_entropy(x, t, w, inplace_backward=True)

    def eager(x, t, w):
        return F.cross_entropy(x, t, w.to(x.dtype))

    found = {"rarekit": rarekit_ce, "rarekit inplace_backward": rarekit_inplace, "torch eager": eager}
    if not common.QUICK:  # compiling takes seconds: the smoke test (--quick) leaves it out
        found["torch.compile"] = torch.compile(eager)
    if device.type == "cuda":
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss
        except ImportError:
            pass
        else:
            found["liger"] = lambda x, t, w: LigerCrossEntropyLoss(weight=w)(x, t)
    return found


def make_inputs(rows: int, classes: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen).to(device=device, dtype=dtype)
    target = torch.randint(0, classes, (rows,), generator=gen).to(device)
    weight = torch.rand(classes, generator=gen).to(device) + 0.1
    return logits, target, weight


def step(fn, buffer, pristine, target, weight):
    """One training step's loss part: this step's logits land in `buffer` (as an LM head writes them),
    then forward + backward to the gradient of the logits."""
    with torch.no_grad():
        buffer.copy_(pristine)
    return torch.autograd.grad(fn(buffer, target, weight), buffer)[0]


@torch.no_grad()
def copy_floor(buffer: torch.Tensor, pristine: torch.Tensor) -> None:
    buffer.copy_(pristine)


def cpu_peak_extra(fn, buffer, pristine, target, weight) -> int:
    """Peak resident memory during one step beyond what existed before it; the returned gradient
    counts, the buffer and the inputs do not."""
    return cpu_peak_extra_bytes(lambda: step(fn, buffer, pristine, target, weight))


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    shapes = [(4096, 32000, torch.float32)] if device.type == "cpu" else [
        (16384, 128256, torch.bfloat16), (8192, 256000, torch.bfloat16)]
    if args.quick:
        shapes = [(rows // 16, classes // 4, dtype) for rows, classes, dtype in shapes]
    cases = []
    for rows, classes, dtype in shapes:
        pristine, target, weight = make_inputs(rows, classes, dtype, device)
        # a non-leaf, as an LM head's output is (inplace_backward refuses a leaf that requires grad)
        buffer = torch.empty(1, dtype=dtype, device=device).requires_grad_().expand_as(pristine).contiguous()
        # each contender's steps back to back, as a training loop calls them: a step's fresh gradient
        # then reuses the memory the previous step freed (round-robin timing would hand it memory the
        # other contenders just churned; see the note below)
        peers = {name: functools.partial(step, fn, buffer, pristine, target, weight)
                 for name, fn in contenders(device).items()}
        peers["copy_ of the logits (floor)"] = functools.partial(copy_floor, buffer, pristine)
        times = {name: median_seconds(peer, device, args.repeat) for name, peer in peers.items()}
        fastest_rarekit = min(times["rarekit"], times["rarekit inplace_backward"])
        ratios = {f"speed-up vs {name}": seconds / times["rarekit"] for name, seconds in times.items()
                  if not name.startswith("rarekit") and "floor" not in name}
        ratios["rarekit inplace speed-up vs torch eager"] = times["torch eager"] / times["rarekit inplace_backward"]
        ratios["rarekit / copy floor"] = times["rarekit"] / times["copy_ of the logits (floor)"]
        case = {"case": f"{str(dtype).replace('torch.', '')} {rows}x{classes} weighted CE forward+backward",
                "median_ms": {name: seconds * 1e3 for name, seconds in times.items()}, "ratios": ratios}
        logits_bytes = pristine.numel() * pristine.element_size()
        if device.type == "cpu":
            case["peak_extra_memory_x_logits"] = {
                name: cpu_peak_extra(fn, buffer, pristine, target, weight) / logits_bytes
                for name, fn in contenders(device).items()}
            case["note"] = ("rarekit without inplace_backward writes a gradient as large as the logits, into a "
                            "buffer a previous step freed (rarekit keeps up to two, see release_cpu_buffers): the "
                            "peak counts it; inplace_backward writes into the logits and allocates nothing")
        if device.type == "cuda":
            case["bandwidth_GBps"] = {name: 2 * logits_bytes / seconds / 1e9 for name, seconds in times.items()}
            case["rarekit share of copy bandwidth"] = times["copy_ of the logits (floor)"] / fastest_rarekit
            peaks = {}
            for name, fn in contenders(device).items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step(fn, buffer, pristine, target, weight)
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / logits_bytes
            case["peak_extra_memory_x_logits"] = peaks
        cases.append(case)
    if device.type == "cpu":
        cases += few_class_cases(args)
    report("cross_entropy", device, cases, args.out)


FEW_CLASS_SHAPES = [(2**20, 2), (2**20, 10), (2**17, 100), (512, 256000)]
SMALL_BATCHES = [(256, 10), (64, 2)]


def repeated(fn, times: int):
    """fn run `times` times: one timed sample of a step too short to time alone."""
    def run():
        for _ in range(times):
            fn()
    return run


def few_class_cases(args) -> list[dict]:
    """fp32 weighted forward+backward, rarekit and torch eager interleaved (round-robin), with the copy
    of the logits as the floor; small batches as per-step times of 200 steps in a row."""
    device = torch.device("cpu")
    found = contenders(device)
    peers_of = {"rarekit": found["rarekit"], "torch eager": found["torch eager"]}
    cases = []
    shapes = [(rows // 16, classes) for rows, classes in FEW_CLASS_SHAPES] if args.quick else FEW_CLASS_SHAPES
    loaded = {}
    for rows, classes in shapes + SMALL_BATCHES:
        small = (rows, classes) in SMALL_BATCHES
        pristine, target, weight = make_inputs(rows, classes, torch.float32, device)
        buffer = torch.empty(1).requires_grad_().expand_as(pristine).contiguous()
        steps = 200 if small else 1
        peers = {name: repeated(functools.partial(step, fn, buffer, pristine, target, weight), steps)
                 for name, fn in peers_of.items()}
        if not small:
            peers["copy_ of the logits (floor)"] = functools.partial(copy_floor, buffer, pristine)
        times = {name: seconds / steps for name, seconds in
                 median_seconds_interleaved(peers, device, args.repeat).items()}
        case = {"case": f"float32 {rows}x{classes} weighted CE forward+backward" + (" (per step)" if small else ""),
                "median_ms": {name: seconds * 1e3 for name, seconds in times.items()},
                "ratios": {"speed-up vs torch eager": times["torch eager"] / times["rarekit"]}}
        if not small:
            case["ratios"]["rarekit / copy floor"] = times["rarekit"] / times["copy_ of the logits (floor)"]
        cases.append(case)
        if args.busy and (small or classes <= 100):
            loaded[(rows, classes, steps)] = peers
    if args.busy:
        for (rows, classes, steps), peers in loaded.items():
            peers = {name: peer for name, peer in peers.items() if "floor" not in name}
            times = under_load(peers, device, args.repeat, args.busy)
            cases.append({"case": f"float32 {rows}x{classes} weighted CE forward+backward, {args.busy} busy "
                                  "processes" + (" (per step)" if steps > 1 else ""),
                          "median_ms": {name: seconds / steps * 1e3 for name, seconds in times.items()}})
    return cases


if __name__ == "__main__":
    main()
