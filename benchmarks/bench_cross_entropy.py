"""Weighted cross-entropy forward+backward: rarekit against torch eager, torch.compile and Liger Kernel.

CPU: fp32 4096x32000; CUDA: bf16 16384x128256 and 8192x256000. Reports the median time of
forward+backward and the peak memory beyond the inputs (CPU: peak RSS in a fresh subprocess per
contender; CUDA: torch.cuda.max_memory_allocated), with a copy of the logits as the floor.
Targets: CPU >= 3x eager, >= 2x torch.compile, peak extra <= 1x the logits (~0 with inplace_backward);
H200 >= 85 % of copy bandwidth (read logits + write grad), >= 1.25x Liger.
"""
import json
import os
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

import rarekit
from common import median_seconds, parse_args, report


def contenders(device: torch.device) -> dict:
    def rarekit_ce(x, t, w):
        return rarekit.cross_entropy(x, t, w)

    def rarekit_inplace(x, t, w):
        return rarekit.cross_entropy(x, t, w, inplace_backward=True)

    def eager(x, t, w):
        return F.cross_entropy(x, t, w.to(x.dtype))

    found = {"rarekit": rarekit_ce, "rarekit inplace_backward": rarekit_inplace, "torch eager": eager,
             "torch.compile": torch.compile(eager)}
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


def step(fn, logits, target, weight, inplace: bool):
    """One forward+backward through a non-leaf copy of the logits (as from an LM head)."""
    leaf = logits.detach().requires_grad_()
    x = leaf * 1.0 if not inplace else leaf.clone()
    fn(x, target, weight).backward()
    return leaf.grad


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_peak_extra(name: str, rows: int, classes: int) -> int:
    """Peak RSS beyond the inputs, the leaf and its working copy, in a fresh process."""
    code = f"""
import sys, resource, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_cross_entropy as b
fn = b.contenders(torch.device('cpu'))[{name!r}]
logits, target, weight = b.make_inputs({rows}, {classes}, torch.float32, torch.device('cpu'))
b.step(fn, logits[:8], target[:8], weight, {name!r}.endswith('inplace_backward'))  # warm-up (compiles)
leaf = logits.detach().requires_grad_(); x = leaf.clone()
x.add_(0); leaf.grad = torch.empty_like(leaf); leaf.grad.zero_(); leaf.grad = None
base = b.rss_bytes()
if {name!r}.endswith('inplace_backward'):
    fn(x, target, weight).backward()
else:
    x = leaf * 1.0; fn(x, target, weight).backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    shapes = [(4096, 32000, torch.float32)] if device.type == "cpu" else [
        (16384, 128256, torch.bfloat16), (8192, 256000, torch.bfloat16)]
    if args.quick:
        shapes = [(rows // 16, classes // 4, dtype) for rows, classes, dtype in shapes]
    cases = []
    for rows, classes, dtype in shapes:
        logits, target, weight = make_inputs(rows, classes, dtype, device)
        times = {}
        for name, fn in contenders(device).items():
            inplace = name.endswith("inplace_backward")
            times[name] = median_seconds(lambda: step(fn, logits, target, weight, inplace), device, args.repeat)
        scratch = torch.empty_like(logits)
        times["copy_ of the logits (floor)"] = median_seconds(lambda: scratch.copy_(logits), device, args.repeat)
        fastest_rarekit = min(times["rarekit"], times["rarekit inplace_backward"])
        ratios = {f"speed-up vs {name}": seconds / times["rarekit"] for name, seconds in times.items()
                  if not name.startswith("rarekit") and "floor" not in name}
        ratios["rarekit inplace speed-up vs torch eager"] = times["torch eager"] / times["rarekit inplace_backward"]
        ratios["rarekit / copy floor"] = times["rarekit"] / times["copy_ of the logits (floor)"]
        case = {"case": f"{str(dtype).replace('torch.', '')} {rows}x{classes} weighted CE forward+backward",
                "median_ms": {name: seconds * 1e3 for name, seconds in times.items()}, "ratios": ratios}
        logits_bytes = logits.numel() * logits.element_size()
        if device.type == "cpu" and not args.quick:
            case["peak_extra_memory_x_logits"] = {
                name: cpu_peak_extra(name, rows, classes) / logits_bytes for name in contenders(device)}
        if device.type == "cuda":
            case["bandwidth_GBps"] = {name: 2 * logits_bytes / seconds / 1e9 for name, seconds in times.items()}
            case["rarekit share of copy bandwidth"] = times["copy_ of the logits (floor)"] / fastest_rarekit
            peaks = {}
            for name, fn in contenders(device).items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step(fn, logits, target, weight, name.endswith("inplace_backward"))
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / logits_bytes
            case["peak_extra_memory_x_logits"] = peaks
        cases.append(case)
        print(json.dumps({k: v for k, v in case.items() if "memory" in k or "bandwidth" in k}, indent=1))
    report("cross_entropy", device, cases, args.out)


if __name__ == "__main__":
    main()
