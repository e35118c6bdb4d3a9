"""rarekit.oversample_indices against imbalanced-learn, a naive torch implementation and a write-only floor;
rarekit.RandomOverSampler.fit_resample end to end against imbalanced-learn's.

1e6 labels over 100 long-tail classes (Zipf, exponent 0.9), sampling_strategy='auto': about 15.6M
output indices. Contenders: imblearn's RandomOverSampler.fit_resample with X = arange(N) as a column
(CPU only), the obvious torch code (a stable argsort, then one randint + gather per class), and
torch.full of an int64 tensor of the output size (the floor: allocating and writing the output).
Targets: CPU >= 20x imblearn and >= 5x naive torch; H200 >= 5x naive torch on the GPU.

fit_resample (CPU): the same labels with float64 X of shape (1e6, 1) as a numpy array, as a pandas
DataFrame (y a Series) and as a scipy CSR matrix of shape (1e6, 8) with 1/4 of its entries set; the
two samplers' calls alternate (FIT_REPEAT timed calls each, after the warm-up), and the whole comparison
is run FIT_RUNS times: the median of the runs' ratios (each of medians) is quoted with the range of the
runs (the spread). Target: >= 20x imblearn on numpy X.
"""
import statistics

import numpy as np
import torch

import rarekit
from common import median_seconds, median_seconds_interleaved, parse_args, report

CLASSES = 100
ZIPF_EXPONENT = 0.9
FIT_RUNS = 3
FIT_REPEAT = 5  # a median of 5: a call that meets a slow phase of the 2-core VM (page faults) does not set it


def zipf_labels(n: int, seed: int = 0) -> torch.Tensor:
    """Class c in [0, 100) with probability ∝ (c + 1)^-0.9."""
    probabilities = np.arange(1, CLASSES + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    return torch.from_numpy(np.random.default_rng(seed).choice(CLASSES, n, p=probabilities / probabilities.sum()))


def naive_oversample(y: torch.Tensor) -> torch.Tensor:
    """'auto' over-sampling as one would write it in torch: argsort, then per class random picks."""
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=CLASSES)
    starts = counts.cumsum(0) - counts
    majority = int(counts.max())
    parts = [torch.arange(y.numel(), device=y.device)]
    for start, count in zip(starts.tolist(), counts.tolist()):
        if 0 < count < majority:
            parts.append(order[start + torch.randint(0, count, (majority - count,), device=y.device)])
    return torch.cat(parts)


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    n = 1_000_000 // (100 if args.quick else 1)
    y = zipf_labels(n).to(device)
    total = rarekit.oversample_indices(y, seed=0).numel()
    assert total == naive_oversample(y).numel()
    # each contender's calls back to back, as a data pipeline makes them (see bench_cross_entropy.py)
    peers = {
        "rarekit.oversample_indices": lambda: rarekit.oversample_indices(y, seed=0),
        "naive torch": lambda: naive_oversample(y),
        "torch.full (write floor)": lambda: torch.full((total,), 1, dtype=torch.int64, device=device),
    }
    times = {name: median_seconds(peer, device, args.repeat) for name, peer in peers.items()}
    if device.type == "cpu":
        from imblearn.over_sampling import RandomOverSampler

        X, y_numpy = np.arange(n)[:, None], y.numpy()
        times["imblearn RandomOverSampler"] = median_seconds(
            lambda: RandomOverSampler(random_state=0).fit_resample(X, y_numpy), device, min(args.repeat, 3), warmup=1)
    ours = times["rarekit.oversample_indices"]
    ratios = {f"speed-up vs {name}": seconds / ours for name, seconds in times.items()
              if name not in ("rarekit.oversample_indices", "torch.full (write floor)")}
    ratios["rarekit / write floor"] = ours / times["torch.full (write floor)"]
    case = {"case": f"{n} Zipf labels, {CLASSES} classes, 'auto' -> {total} indices",
            "median_ms": {name: seconds * 1e3 for name, seconds in times.items()}, "ratios": ratios,
            "million_output_indices_per_second": total / ours / 1e6}
    if device.type == "cpu":
        case["note"] = ("rarekit asks Linux for transparent huge pages behind its fresh output (advise_huge_pages); "
                        "torch.full faults its output in 4 KiB pages, hence a ratio to the floor below 1")
    cases = [case]
    if device.type == "cpu":
        cases += fit_resample_cases(y.numpy(), args)
    report("sampling", device, cases, args.out)


def fit_resample_inputs(y: np.ndarray) -> dict:
    """The X of each fit_resample case (and its y): numpy, pandas and scipy sparse."""
    import pandas
    from scipy import sparse

    X = np.random.default_rng(1).normal(size=(len(y), 1))
    return {"numpy X (N, 1) float64": (X, y),
            "pandas DataFrame (N, 1), y a Series": (pandas.DataFrame({"x": X[:, 0]}), pandas.Series(y, name="y")),
            "scipy CSR (N, 8), density 0.25": (sparse.random(len(y), 8, density=0.25, format="csr", random_state=2),
                                               y)}


def fit_resample_cases(y: np.ndarray, args) -> list[dict]:
    """rarekit's and imblearn's RandomOverSampler.fit_resample on each input of fit_resample_inputs."""
    from imblearn.over_sampling import RandomOverSampler as ImblearnOverSampler

    cases = []
    for name, (X, labels) in fit_resample_inputs(y).items():
        peers = {"rarekit RandomOverSampler": lambda: rarekit.RandomOverSampler(random_state=0).fit_resample(X, labels),
                 "imblearn RandomOverSampler": lambda: ImblearnOverSampler(random_state=0).fit_resample(X, labels)}
        runs = [median_seconds_interleaved(peers, torch.device("cpu"), min(args.repeat, FIT_REPEAT), warmup=1)
                for _ in range(FIT_RUNS)]
        ratios = sorted(run["imblearn RandomOverSampler"] / run["rarekit RandomOverSampler"] for run in runs)
        X_res, _ = peers["rarekit RandomOverSampler"]()
        cases.append({
            "case": f"fit_resample, {name}, {len(y)} Zipf labels, {CLASSES} classes, 'auto' -> {X_res.shape[0]} rows",
            "median_ms": {peer: statistics.median(run[peer] for run in runs) * 1e3 for peer in peers},
            "ratios": {"speed-up vs imblearn RandomOverSampler (median of runs)": statistics.median(ratios)},
            "spread": f"speed-up over {FIT_RUNS} interleaved runs: {ratios[0]:.1f}x to {ratios[-1]:.1f}x",
        })
    return cases


if __name__ == "__main__":
    main()
