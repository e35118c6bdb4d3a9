"""``rarekit demo``: an end-to-end imbalance study on real data, offline.

The same small model, seeds and budget are trained with each method, on digits-LT (images) and on
chatterbot-corpus topics (text), or on the user's ``--data`` file; the report compares per-class
recall, macro-F1, balanced accuracy, accuracy on the rarest third of the classes and training time,
and times rarekit's kernels against torch on this machine. Under ``torchrun ... --ddp`` the label
counts are all-reduced, the data is sharded per rank, the model is wrapped in
DistributedDataParallel, and rank 0 writes the report.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import rarekit
from rarekit.datasets import Split, chatterbot_topics, describe, digits_long_tailed, load_arrays, load_table


@dataclass
class Method:
    """A training recipe: the loss built from the training class counts, and how batches are drawn."""

    name: str
    make_loss: Callable[[torch.Tensor], nn.Module]
    balanced_sampling: bool = False
    augment: bool = False


def methods(text: bool) -> list[Method]:
    def weighted(counts):
        return rarekit.CrossEntropyLoss(weight=rarekit.class_weights(counts, "effective_number", beta=0.999))

    found = [
        Method("plain CE", lambda counts: rarekit.CrossEntropyLoss()),
        Method("weighted CE (effective number)", weighted),
        Method("balanced sampler", lambda counts: rarekit.CrossEntropyLoss(), balanced_sampling=True),
        Method("logit adjustment (tau=1)", lambda counts: rarekit.LogitAdjustedLoss(counts, tau=1.0)),
        Method("focal (gamma=2)", lambda counts: rarekit.FocalLoss(gamma=2.0)),
    ]
    if text:
        found.append(Method("augment_minority + CE", lambda counts: rarekit.CrossEntropyLoss(), augment=True))
    return found


# --- distributed ---------------------------------------------------------------------------------

def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_distributed() -> torch.device:
    """Joins the torchrun job: nccl on GPU, gloo on CPU."""
    if "RANK" not in os.environ:
        raise ValueError("--ddp needs torchrun (e.g. torchrun --nproc_per_node=2 -m rarekit demo --ddp)")
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- features ------------------------------------------------------------------------------------

WORD = re.compile(r"[a-z0-9']+")


def text_features(train: list[str], test: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """TF-IDF bag of words over the training vocabulary; document frequencies come from rarekit.count."""
    vocabulary: dict[str, int] = {}
    train_ids = [[vocabulary.setdefault(word, len(vocabulary)) for word in WORD.findall(text.lower())] for text in train]
    test_ids = [[vocabulary[word] for word in WORD.findall(text.lower()) if word in vocabulary] for text in test]
    unique_per_doc = torch.tensor([i for ids in train_ids for i in set(ids)], dtype=torch.int64)
    document_frequency = rarekit.count(unique_per_doc, len(vocabulary)).double().numpy()
    idf = np.log((1 + len(train)) / (1 + document_frequency)) + 1.0

    def tfidf(docs):
        rows = np.zeros((len(docs), len(vocabulary)), dtype=np.float32)
        doc_of_word = np.repeat(np.arange(len(docs)), [len(ids) for ids in docs])
        np.add.at(rows, (doc_of_word, np.fromiter((i for ids in docs for i in ids), dtype=np.int64)), 1.0)
        rows = np.log1p(rows) * idf
        return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    return tfidf(train_ids), tfidf(test_ids), vocabulary


def augmented_texts(split: Split, augmenter, seed: int, progress: bool) -> tuple[list[str], np.ndarray]:
    from rarekit.augment import augment_minority

    texts, labels = augment_minority(split.x_train, split.y_train.tolist(), "auto", augmenter=augmenter, seed=seed,
                                     progress=progress)
    return list(texts), np.asarray(labels, dtype=np.int64)


def rare_class_example(split: Split, augmenter) -> dict:
    """Two augmented variants of the first training text of the rarest class, for the report."""
    counts = np.bincount(split.y_train, minlength=len(split.class_names))
    rarest = int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))
    original = split.x_train[int(np.flatnonzero(split.y_train == rarest)[0])]
    return {"class": split.class_names[rarest], "training_samples": int(counts[rarest]), "original": original,
            "variants": augmenter.augment([original], n=2)[0]}


def make_augmenter(method: str, mlm: str | None, seed: int, device: torch.device):
    """``--augmenter`` (model-free by default); ``contextual`` fills masks with the ``--mlm`` model."""
    from rarekit.augment import RareAugmenter

    if method == "contextual":
        if not mlm:
            raise ValueError("--augmenter contextual needs --mlm PATH_OR_NAME (a masked LM folder or hub name)")
        return RareAugmenter("contextual", model_path=mlm, device=device.type, seed=seed)
    return RareAugmenter(method, seed=seed)


# --- training and evaluation ---------------------------------------------------------------------

def make_model(features: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, classes))


def train(method: Method, x: np.ndarray, y: np.ndarray, classes: int, *, epochs: int, seed: int,
          device: torch.device, original_size: int | None = None, batch_size: int = 64,
          progress: bool = True) -> tuple[nn.Module, float]:
    """Trains the small model with ``method`` for ``epochs`` passes' worth of steps over the original
    training set (``original_size`` samples; ``len(y)`` unless the data was augmented)."""
    rank, world = rank_and_world()
    counter = rarekit.TokenCounter(classes, device=device)
    counter.update(torch.as_tensor(y[rank::world], device=device))  # each rank counts its shard
    if world > 1:
        counter.all_reduce()
    counts = counter.counts.cpu()
    model = make_model(x.shape[1], classes, seed).to(device)
    loss_fn = method.make_loss(counts).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    if method.balanced_sampling:
        sampler = rarekit.BalancedSampler(torch.as_tensor(y), seed=seed, num_replicas=world, rank=rank)
    else:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    # the same budget for every method: `epochs` passes over the original training set, in steps
    # (a balanced sampler or augmented data makes longer epochs)
    total_steps = epochs * -(-(original_size or len(y)) // (batch_size * world))
    start, step, epoch = time.perf_counter(), 0, 0
    with tqdm(total=total_steps, desc=method.name, leave=False, disable=not progress or rank != 0) as bar:
        while step < total_steps:
            sampler.set_epoch(epoch)
            for features, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(features.to(device)), labels.to(device)).backward()
                optimizer.step()
                step += 1
                bar.update()
                if step == total_steps:
                    break
            epoch += 1
    return model, time.perf_counter() - start


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, train_counts: np.ndarray, device) -> dict:
    from sklearn.metrics import f1_score, recall_score

    model.eval()
    with torch.no_grad():
        predicted = model(torch.as_tensor(x, device=device)).argmax(1).cpu().numpy()
    classes = np.arange(len(train_counts))
    recall = recall_score(y, predicted, labels=classes, average=None, zero_division=0)
    present = np.isin(classes, y)
    rarest_third = np.argsort(train_counts, kind="stable")[: max(1, len(classes) // 3)]
    in_rare = np.isin(y, rarest_third)
    return {
        "per_class_recall": recall.tolist(),
        "macro_f1": float(f1_score(y, predicted, labels=classes[present], average="macro", zero_division=0)),
        "balanced_accuracy": float(recall[present].mean()),  # mean recall over the classes tested
        "rare_third_accuracy": float((predicted[in_rare] == y[in_rare]).mean()) if in_rare.any() else float("nan"),
        "rare_third_test_samples": int(in_rare.sum()),
    }


@dataclass
class Study:
    split: Split
    results: dict = field(default_factory=dict)
    augmentation_example: dict | None = None  # a text of the rarest class and its augmented variants


def run_study(split: Split, text: bool, *, epochs: int, seed: int, device: torch.device, progress: bool,
              augmenter=None) -> Study:
    study = Study(split)
    train_counts = np.bincount(split.y_train, minlength=len(split.class_names))
    for method in methods(text):
        x_train, y_train = split.x_train, split.y_train
        if method.augment:
            x_train, y_train = augmented_texts(split, augmenter, seed, progress)
            study.augmentation_example = rare_class_example(split, augmenter)
        if text:
            x_train, x_test, _ = text_features(x_train, split.x_test)
        else:
            x_test = split.x_test
        model, seconds = train(method, x_train, y_train, len(split.class_names), epochs=epochs, seed=seed,
                               device=device, original_size=len(split.y_train), progress=progress)
        metrics = evaluate(model, x_test, split.y_test, train_counts, device)
        metrics["train_seconds"] = seconds
        study.results[method.name] = metrics
    return study


# --- kernel speed ----------------------------------------------------------------------------------

def kernel_speed(device: torch.device) -> dict:
    """rarekit vs torch on this machine: weighted CE forward+backward, and counting Zipf ids."""
    def median_ms(fn, repeat=5):
        fn()
        times = []
        for _ in range(repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1024, 8192, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 8192, (1024,), generator=gen).to(device)
    weight = (torch.rand(8192, generator=gen) + 0.1).to(device)
    ids = torch.from_numpy((np.random.default_rng(0).zipf(1.2, 10_000_000) - 1) % 50_000).to(device)
    ce_rarekit = median_ms(lambda: torch.autograd.grad(rarekit.cross_entropy(logits, target, weight), logits))
    ce_torch = median_ms(lambda: torch.autograd.grad(F.cross_entropy(logits, target, weight), logits))
    count_rarekit = median_ms(lambda: rarekit.count(ids, 50_000, check=False))
    count_torch = median_ms(lambda: torch.bincount(ids, minlength=50_000))
    return {
        "cross_entropy 1024x8192 fwd+bwd (ms)": {"rarekit": ce_rarekit, "torch": ce_torch, "speed-up": ce_torch / ce_rarekit},
        "count 1e7 zipf ids, V=50000 (ms)": {"rarekit": count_rarekit, "torch.bincount": count_torch,
                                            "speed-up": count_torch / count_rarekit},
    }


# --- report ------------------------------------------------------------------------------------------

def verdict(results: dict) -> list[str]:
    """Plain sentences: does each rarekit method beat plain CE on the rarest third of the classes?"""
    baseline = results["plain CE"]
    samples = baseline["rare_third_test_samples"]
    lines = [f"The rarest third of the classes has {samples} test samples, so one sample moves its accuracy by "
             f"{1 / max(samples, 1):.3f}: differences of that size are noise, not evidence."]
    for name, metrics in results.items():
        if name == "plain CE":
            continue
        delta = metrics["rare_third_accuracy"] - baseline["rare_third_accuracy"]
        word = "beats" if delta > 0 else ("ties with" if delta == 0 else "does NOT beat")
        lines.append(f"- {name} {word} plain CE on the rarest third ({metrics['rare_third_accuracy']:.3f} vs "
                     f"{baseline['rare_third_accuracy']:.3f}; macro-F1 {metrics['macro_f1']:.3f} vs {baseline['macro_f1']:.3f}).")
    return lines


def table(results: dict) -> list[str]:
    lines = ["| method | macro-F1 | balanced acc. | rarest-third acc. | train (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {m['macro_f1']:.3f} | {m['balanced_accuracy']:.3f} | {m['rare_third_accuracy']:.3f} | "
              f"{m['train_seconds']:.1f} |" for name, m in results.items()]
    return lines


def plot_recall(study: Study, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install rarekit[plot]") from error
    names = list(study.results)
    positions = np.arange(len(study.split.class_names))
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(max(8, len(positions) * 0.6), 4.5))
    for i, name in enumerate(names):
        axes.bar(positions + i * width, study.results[name]["per_class_recall"], width, label=name)
    counts = np.bincount(study.split.y_train, minlength=len(positions))
    axes.set_xticks(positions + 0.4 - width / 2,
                    [f"{label}\n(n={n})" for label, n in zip(study.split.class_names, counts)],
                    rotation=90 if len(positions) > 12 else 0, fontsize=7)
    axes.set_ylabel("test recall")
    axes.set_title(f"Per-class recall by method: {study.split.name}")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(studies: list[Study], speed: dict, out: Path, total_seconds: float) -> str:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# rarekit demo report", "", f"Machine: {rarekit.backend_info()['cpu_isa']} CPU kernels, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; total time {total_seconds:.0f} s.", ""]
    payload = {"studies": [], "kernel_speed": speed, "backend": rarekit.backend_info()}
    for index, study in enumerate(studies):
        slug = re.sub(r"[^a-z0-9]+", "-", study.split.name.lower()).strip("-")
        recall_png, freq_png = f"recall-{slug}.png", f"label-frequencies-{slug}.png"
        plot_recall(study, out / recall_png)
        counts = torch.as_tensor(np.bincount(study.split.y_train, minlength=len(study.split.class_names)))
        rarekit.plot_frequencies(counts, out / freq_png)
        info = describe(study.split)
        lines += [f"## {study.split.name}", "",
                  f"{info['train']} training and {info['test']} test samples, {info['classes']} classes, "
                  f"imbalance {info['imbalance_ratio']:.0f}:1 in training.", ""] + table(study.results) + [
                  "", "Does rarekit beat plain CE on the rare classes?", ""] + verdict(study.results) + [
                  "", f"![per-class recall]({recall_png})", f"![label frequencies]({freq_png})", ""]
        example = study.augmentation_example
        if example:
            lines += [f"augment_minority on the rarest class, {example['class']!r} ({example['training_samples']} "
                      "training texts): an original and two of its variants", "",
                      f"- original: {example['original'][:200]}"] + [
                      f"- variant: {variant[:200]}" for variant in example["variants"]] + [""]
        payload["studies"].append({"data": info, "results": study.results, "class_names": study.split.class_names,
                                   "augmentation_example": example})
    lines += ["## Kernel speed on this machine", "", "| job | rarekit (ms) | torch (ms) | speed-up |", "|---|---:|---:|---:|"]
    for job, figures in speed.items():
        torch_ms = figures.get("torch", figures.get("torch.bincount"))
        lines.append(f"| {job.replace(' (ms)', '')} | {figures['rarekit']:.2f} | {torch_ms:.2f} | {figures['speed-up']:.2f}x |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    return "\n".join(lines)


def run(args) -> int:
    """Entry point of ``rarekit demo`` (arguments from rarekit.cli)."""
    start = time.perf_counter()
    device = start_distributed() if args.ddp else torch.device("cpu")
    rank, _ = rank_and_world()
    progress = not args.no_progress
    if args.data is None:
        datasets = [(digits_long_tailed(seed=args.seed), False), (chatterbot_topics(seed=args.seed), True)]
    elif Path(args.data).suffix == ".npz":
        datasets = [(load_arrays(args.data, seed=args.seed), False)]
    else:
        if not args.text_col or not args.label_col:
            raise ValueError("--data with a text file needs --text-col and --label-col")
        datasets = [(load_table(args.data, args.text_col, args.label_col, seed=args.seed), True)]
    augmenter = make_augmenter(args.augmenter, args.mlm, args.seed, device) if any(text for _, text in datasets) else None
    studies = [run_study(split, text, epochs=args.epochs, seed=args.seed, device=device, progress=progress,
                         augmenter=augmenter) for split, text in datasets]
    if rank == 0:
        speed = kernel_speed(device)
        text = write_report(studies, speed, Path(args.out), time.perf_counter() - start)
        for study in studies:
            print(f"\n{study.split.name}")
            print("\n".join(table(study.results)))
            if study.augmentation_example:
                example = study.augmentation_example
                print(f"augmented rare class {example['class']!r}: {example['original'][:80]!r} -> "
                      f"{example['variants'][0][:80]!r}")
        print("\nkernel speed: " + "; ".join(f"{job}: {f['speed-up']:.2f}x" for job, f in speed.items()))
        print(f"report: {Path(args.out) / 'report.md'} ({len(text.splitlines())} lines), results.json and plots in {args.out}")
    if args.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return 0
