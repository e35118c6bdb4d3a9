"""rarekit.count against torch.bincount, numpy.bincount and a read-bandwidth floor (torch.sum).

5e7 Zipf-distributed int64 ids (2^28 on CUDA) into V=128256 and V=64 bins.
Targets: CPU >= 3x torch.bincount at V=128256 and <= 2.5x the torch.sum floor;
H200 >= 70 % of read bandwidth and >= 3x torch.bincount.
--busy N (CPU) adds 1e6 ids timed with N busy processes running, on torch's thread count and on one
thread: a parallel kernel must not collapse when it has fewer cores than threads.
"""
import numpy as np
import torch

import rarekit
from common import median_seconds_interleaved, parse_args, report, under_load


def zipf_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).zipf(1.2, n) - 1) % vocab).long()


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    n = 2**28 if device.type == "cuda" else 50_000_000
    if args.quick:
        n //= 100
    cases = []
    for vocab in (128256, 64):
        ids = zipf_ids(n, vocab).to(device)
        peers = {
            "rarekit.count": lambda: rarekit.count(ids, vocab, check=False),
            "torch.bincount": lambda: torch.bincount(ids, minlength=vocab),
            "torch.sum (read floor)": lambda: ids.sum(),
        }
        if device.type == "cpu":
            ids_np = ids.numpy()
            peers["numpy.bincount"] = lambda: np.bincount(ids_np, minlength=vocab)
        times = median_seconds_interleaved(peers, device, args.repeat)
        rarekit_s = times["rarekit.count"]
        ratios = {f"speed-up vs {name}": seconds / rarekit_s for name, seconds in times.items()
                  if name not in ("rarekit.count", "torch.sum (read floor)")}
        ratios["rarekit / read floor"] = rarekit_s / times["torch.sum (read floor)"]
        case = {"case": f"{n} zipf int64 ids, V={vocab}", "median_ms": {k: v * 1e3 for k, v in times.items()},
                "ratios": ratios}
        if device.type == "cuda":
            case["read_bandwidth_GBps"] = ids.numel() * ids.element_size() / rarekit_s / 1e9
        cases.append(case)
    if args.busy and device.type == "cpu":
        for vocab in (128256, 64):
            ids = zipf_ids(1_000_000, vocab)
            times = under_load({"rarekit.count": lambda: rarekit.count(ids, vocab, check=False),
                                "torch.bincount": lambda: torch.bincount(ids, minlength=vocab)},
                               device, args.repeat, args.busy)
            cases.append({"case": f"1e6 zipf int64 ids, V={vocab}, {args.busy} busy processes",
                          "median_ms": {k: v * 1e3 for k, v in times.items()}})
    report("count", device, cases, args.out)


if __name__ == "__main__":
    main()
