"""``rarekit demo``: an end-to-end imbalance study on real data, offline.

The same small model, seeds and budget are trained with each method, on digits-LT (images) and on
chatterbot-corpus topics (text), or on the user's ``--data`` file; the report
(:mod:`rarekit.study.report`) compares per-class recall, macro-F1, balanced accuracy, accuracy on the
rarest third of the classes and training time, and times rarekit's kernels against torch on this
machine. Texts become sparse TF-IDF rows (:mod:`rarekit.study.text`).

Training runs on ``--train-threads`` threads (default 1): the small model gains little from
intra-op threads, and on a loaded machine their barriers made a step 10x slower here (180 vs 15 ms).

Budgets: every method trains for ``epochs`` passes over the original training set, in optimizer
steps of ``batch_size`` samples; a method whose projected time exceeds ``--time-budget`` seconds is
skipped with the reason, and a study whose cheapest method cannot fit is refused up front with an
estimate unless ``--force`` is given (which lifts the budget).

Under ``torchrun ... --ddp`` the label counts are all-reduced, each rank draws ``batch_size / world``
samples per step from its shard, gradients are averaged by DistributedDataParallel, so the global
batch and the step count equal the single-process run's; rank 0 writes the report.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import rarekit
from rarekit.study.datasets import Split, chatterbot_topics, digits_long_tailed, load_arrays, load_table
from rarekit.study.text import (AugmentationBudget, OverBudget, augment_within_budget, augmentation_example,
                               tfidf_features)

HIDDEN = 128
CALIBRATION_STEPS = 10  # steps timed before a method's projected time is checked against its budget
BUDGET_CHECK_EVERY = 200  # and again every so many steps
EVAL_ROWS = 2048  # test rows per forward pass: (rows, classes) logits stay small with many classes
AUTO_BATCH_STEPS = 100  # the automatic batch size keeps an epoch to about this many steps


@dataclass
class Method:
    """A training recipe: the loss built from the training class counts, and how batches are drawn.

    Deferred re-weighting: from the step ``ceil(reweight_from · total steps)`` on, the loss's ``weight``
    buffer becomes ``make_late_weight(counts)``."""

    name: str
    make_loss: Callable[[torch.Tensor], nn.Module]
    balanced_sampling: bool = False
    augment: bool = False
    reweight_from: float | None = None
    make_late_weight: Callable[[torch.Tensor], torch.Tensor] | None = None

    def reweight_step(self, total_steps: int) -> int | None:
        """The first step trained with the late weights (None: the weights never change)."""
        return None if self.reweight_from is None else math.ceil(self.reweight_from * total_steps)


def methods(text: bool) -> list[Method]:
    def weighted(counts):
        return rarekit.CrossEntropyLoss(weight=rarekit.class_weights(counts, "effective_number", beta=0.999))

    def class_balanced(counts):  # Cao et al.'s DRW weights
        return rarekit.class_weights(counts, "effective_number", beta=0.9999)

    found = [
        Method("plain CE", lambda counts: rarekit.CrossEntropyLoss()),
        Method("weighted CE (effective number)", weighted),
        Method("balanced sampler", lambda counts: rarekit.CrossEntropyLoss(), balanced_sampling=True),
        Method("logit adjustment (tau=1)", lambda counts: rarekit.LogitAdjustedLoss(counts, tau=1.0)),
        Method("focal (gamma=2)", lambda counts: rarekit.FocalLoss(gamma=2.0)),
        # LDAM margins, class-balanced weights for the last 20 % of the steps (Cao et al.: epochs 160-200)
        Method("LDAM-DRW", lambda counts: rarekit.LDAMLoss(counts, max_margin=0.5), reweight_from=0.8,
               make_late_weight=class_balanced),
    ]
    if text:
        found.append(Method("augment_minority + CE", lambda counts: rarekit.CrossEntropyLoss(), augment=True))
    return found


@dataclass(frozen=True)
class Settings:
    """The training budget shared by every method of a study."""

    epochs: int
    seed: int
    device: torch.device
    progress: bool
    batch_size: int | None = None  # None: automatic, see batch_size_for
    time_budget: float = float("inf")  # seconds per method
    augmentation: AugmentationBudget = AugmentationBudget()
    max_features: int | None = 50_000

    def batch_size_for(self, rows: int) -> int:
        """``--batch-size``, or 64 rising to ``rows / AUTO_BATCH_STEPS`` for large training sets."""
        return self.batch_size or max(64, -(-rows // AUTO_BATCH_STEPS))

    def total_steps(self, rows: int) -> int:
        return self.epochs * -(-rows // self.batch_size_for(rows))


# --- distributed ---------------------------------------------------------------------------------

def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def require_torchrun() -> None:
    """``--ddp`` outside torchrun fails here, before anything is counted or trained."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--ddp needs torchrun (e.g. torchrun --nproc_per_node=2 -m rarekit demo --ddp)")


def start_distributed() -> torch.device:
    """Joins the torchrun job: nccl on GPU, gloo on CPU."""
    require_torchrun()
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- model and batches ---------------------------------------------------------------------------

class DemoModel(nn.Module):
    """ŷ = W₂ ReLU(x W₁ + b₁) + b₂. Sparse rows (CSR, e.g. TF-IDF) are read as ``(indices, offsets,
    values)`` by an ``EmbeddingBag`` that sums W₁'s rows weighted by the values, which is x W₁ without
    a dense row; dense rows go through ``nn.Linear``."""

    def __init__(self, features: int, classes: int, sparse: bool, hidden: int = HIDDEN):
        super().__init__()
        self.sparse = sparse
        self.first = nn.EmbeddingBag(features, hidden, mode="sum") if sparse else nn.Linear(features, hidden)
        if sparse:
            nn.init.normal_(self.first.weight, std=1.0 / math.sqrt(hidden))
            self.first_bias = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.sparse:
            indices, offsets, values = inputs
            return self.head(self.first(indices, offsets, per_sample_weights=values) + self.first_bias)
        return self.head(self.first(inputs[0]))


def is_sparse(x) -> bool:
    return hasattr(x, "tocsr")


def batch_inputs(x, rows, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The model inputs of ``rows`` of ``x`` (a dense array or a CSR matrix)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not is_sparse(x):
        return (torch.from_numpy(x[rows]).to(device),)
    part = x[rows]
    return (torch.from_numpy(part.indices.astype(np.int64)).to(device),
            torch.from_numpy(part.indptr[:-1].astype(np.int64)).to(device),
            torch.from_numpy(part.data.astype(np.float32, copy=False)).to(device))


def make_model(x, classes: int, seed: int, device: torch.device) -> DemoModel:
    torch.manual_seed(seed)
    return DemoModel(x.shape[1], classes, is_sparse(x)).to(device)


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # fused Adam: one kernel over all parameters (10x faster than the default on a 2-core CPU here)
    return torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4, fused=device.type in ("cpu", "cuda"))


# --- training and evaluation ---------------------------------------------------------------------

def train(method: Method, x, y: np.ndarray, classes: int, settings: Settings,
          original_size: int | None = None) -> tuple[nn.Module, nn.Module, float]:
    """Trains the small model with ``method`` for ``settings.epochs`` passes' worth of steps over the
    original training set (``original_size`` samples; ``len(y)`` unless the data was augmented);
    returns the model, the loss module and the seconds. Raises :class:`OverBudget` when the projected
    time exceeds ``settings.time_budget``."""
    rank, world = rank_and_world()
    device = settings.device
    rows = original_size or len(y)
    batch_size = settings.batch_size_for(rows)
    counter = rarekit.TokenCounter(classes, device=device)
    counter.update(torch.as_tensor(y[rank::world], device=device))  # each rank counts its shard
    counts = counter.all_reduce().counts.cpu()
    model: nn.Module = make_model(x, classes, settings.seed, device)
    loss_fn = method.make_loss(counts).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(model, device)
    sampler: torch.utils.data.Sampler
    if method.balanced_sampling:
        sampler = rarekit.BalancedSampler(torch.as_tensor(y), seed=settings.seed, num_replicas=world, rank=rank)
    else:
        sampler = torch.utils.data.DistributedSampler(torch.utils.data.TensorDataset(torch.as_tensor(y)),
                                                      num_replicas=world, rank=rank, seed=settings.seed)
    # each rank takes batch_size / world rows a step: the global batch and the step count are the
    # single-process run's (a balanced sampler or augmented data makes longer epochs, not more steps)
    batches = torch.utils.data.BatchSampler(sampler, max(1, batch_size // world), drop_last=False)
    labels = torch.as_tensor(y)
    total_steps = settings.total_steps(rows)
    reweight_step = method.reweight_step(total_steps)
    start, step, epoch = time.perf_counter(), 0, 0
    with tqdm(total=total_steps, desc=method.name, leave=False, disable=not settings.progress or rank != 0) as bar:
        while step < total_steps:
            sampler.set_epoch(epoch)
            for batch in batches:
                if step == reweight_step and method.make_late_weight is not None:
                    loss_fn.weight = method.make_late_weight(counts).to(device)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(*batch_inputs(x, batch, device)), labels[batch].to(device)).backward()
                optimizer.step()
                step += 1
                bar.update()
                if step == CALIBRATION_STEPS or step % BUDGET_CHECK_EVERY == 0:
                    check_budget(time.perf_counter() - start, step, total_steps, settings.time_budget)
                if step == total_steps:
                    break
            epoch += 1
    return model, loss_fn, time.perf_counter() - start


def slowest(value: float) -> float:
    """The largest ``value`` over the ranks (``value`` itself outside DDP): ranks that decide on it
    decide alike."""
    if rank_and_world()[1] == 1:
        return value
    largest = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest.item()


def check_budget(elapsed: float, step: int, total_steps: int, budget: float) -> None:
    """Raises :class:`OverBudget` when ``total_steps`` at the slowest rank's pace so far exceed
    ``budget`` seconds."""
    projected = slowest(elapsed / step * total_steps)
    if projected > budget:
        raise OverBudget(f"{total_steps:,} steps would take ~{projected:.0f} s ({1e3 * projected / total_steps:.0f} "
                         f"ms/step), over the --time-budget of {budget:g} s")


def evaluate(model: nn.Module, x, y: np.ndarray, train_counts: np.ndarray, device) -> dict:
    """Per-class recall (None for a class without test samples) and macro metrics over the classes
    that have test samples, as scikit-learn's ``labels=`` set to those classes computes them."""
    from sklearn.metrics import f1_score, recall_score

    model.eval()
    with torch.no_grad():
        predicted = np.concatenate([model(*batch_inputs(x, np.arange(start, min(start + EVAL_ROWS, len(y))), device))
                                    .argmax(1).cpu().numpy() for start in range(0, len(y), EVAL_ROWS)])
    classes = np.arange(len(train_counts))
    present = np.isin(classes, y)
    recall = recall_score(y, predicted, labels=classes[present], average=None, zero_division=0)
    per_class = np.full(len(classes), np.nan)
    per_class[present] = recall
    tested = classes[present]  # the rarest third of the classes that have test samples
    rarest_third = tested[np.argsort(np.asarray(train_counts)[tested], kind="stable")[: max(1, len(tested) // 3)]]
    in_rare = np.isin(y, rarest_third)
    return {
        "per_class_recall": [None if np.isnan(value) else float(value) for value in per_class],
        "macro_f1": float(f1_score(y, predicted, labels=classes[present], average="macro", zero_division=0)),
        "balanced_accuracy": float(recall.mean()),  # mean recall over the classes tested
        "rare_third_accuracy": float((predicted[in_rare] == y[in_rare]).mean()) if in_rare.any() else None,
        "rare_third_test_samples": int(in_rare.sum()),
    }


@dataclass
class Study:
    split: Split
    text: bool
    results: dict = field(default_factory=dict)  # method name -> metrics
    skipped: dict = field(default_factory=dict)  # method name -> the reason
    augmentation_example: dict | None = None  # a rare-class text and its variants, changes marked
    generated_per_class: list[int] | None = None
    batch_size: int = 0
    steps: int = 0


def run_study(split: Split, text: bool, settings: Settings, augmenter=None) -> Study:
    rows = len(split.y_train)
    study = Study(split, text, batch_size=settings.batch_size_for(rows), steps=settings.total_steps(rows))
    classes = len(split.class_names)
    train_counts = np.bincount(split.y_train, minlength=classes)
    if text:
        vectorizer, x_train, x_test = tfidf_features(split.x_train, split.x_test, settings.max_features, split.name)
    else:
        x_train, x_test = split.x_train, split.x_test
    check_feasible(split, x_train, settings)
    for method in methods(text):
        try:
            x, y = x_train, split.y_train
            if method.augment:
                try:
                    texts, y, generated = augment_within_budget(split, augmenter, settings.augmentation,
                                                                settings.seed, settings.progress)
                    over = ""
                except OverBudget as reason:
                    over = str(reason)
                if slowest(float(bool(over))):  # every rank skips if one does
                    raise OverBudget(over or "another rank's augmentation is over the budget")
                study.generated_per_class = generated.tolist()
                study.augmentation_example = augmentation_example(split, augmenter)
                x = vectorizer.transform(texts)  # the original training vocabulary
            model, loss_fn, seconds = train(method, x, y, classes, settings, original_size=rows)
        except OverBudget as reason:
            study.skipped[method.name] = str(reason)
            continue
        metrics = evaluate(model, x_test, split.y_test, train_counts, settings.device)
        metrics["train_seconds"] = seconds
        if isinstance(loss_fn, rarekit.LDAMLoss):
            metrics["margins"] = loss_fn.margins.tolist()
        if method.reweight_from is not None:
            metrics["reweighted_from_step"] = method.reweight_step(study.steps)
        study.results[method.name] = metrics
    return study


def estimate_seconds(x, y: np.ndarray, classes: int, settings: Settings) -> tuple[float, float]:
    """``(seconds per method, seconds per step)``: plain CE's projected training time on ``x``, from
    timing :data:`CALIBRATION_STEPS` steps of the real batch shape."""
    batch_size = settings.batch_size_for(len(y))
    model = make_model(x, classes, settings.seed, settings.device)
    optimizer = make_optimizer(model, settings.device)
    rows = np.random.default_rng(settings.seed).integers(0, len(y), (CALIBRATION_STEPS, batch_size))
    start = time.perf_counter()
    for batch in rows:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(*batch_inputs(x, batch, settings.device)),
                                    torch.as_tensor(y[batch], device=settings.device)).backward()
        optimizer.step()
    per_step = slowest((time.perf_counter() - start) / CALIBRATION_STEPS)
    return per_step * settings.total_steps(len(y)), per_step


def check_feasible(split: Split, x, settings: Settings) -> None:
    """Refuses, with the estimate, a study whose cheapest method cannot train within the budget."""
    if math.isinf(settings.time_budget):
        return
    seconds, per_step = estimate_seconds(x, split.y_train, len(split.class_names), settings)
    if seconds > settings.time_budget:
        count = len(methods(isinstance(split.x_train, list)))
        raise ValueError(
            f"{split.name}: {len(split.class_names):,} classes, {len(split.y_train):,} training samples: each method "
            f"would train ~{seconds:.0f} s ({settings.total_steps(len(split.y_train)):,} steps at {1e3 * per_step:.0f} "
            f"ms/step; ~{seconds * count / 60:.1f} min for all {count} methods), over the --time-budget of "
            f"{settings.time_budget:g} s per method. Lower --epochs, raise --time-budget, or pass --force to run "
            "without a budget")


def run(args) -> int:
    """Entry point of ``rarekit demo`` (arguments from rarekit.cli)."""
    from rarekit.study.report import kernel_speed, print_summary, write_report

    start, load_before = time.perf_counter(), os.getloadavg()
    device = start_distributed() if args.ddp else torch.device("cpu")
    rank, _ = rank_and_world()
    time_budget = float("inf") if args.force else args.time_budget
    settings = Settings(epochs=args.epochs, seed=args.seed, device=device,
                        progress=not args.no_progress and sys.stderr.isatty(), batch_size=args.batch_size,
                        time_budget=time_budget,
                        augmentation=AugmentationBudget(args.augment_per_text, args.augment_max, time_budget),
                        max_features=args.max_features)
    datasets = load_datasets(args)
    augmenter = make_augmenter(args.augmenter, args.mlm, args.seed, device) if any(t for _, t in datasets) else None
    threads = torch.get_num_threads()
    torch.set_num_threads(args.train_threads)
    try:
        studies = [run_study(split, text, settings, augmenter) for split, text in datasets]
    finally:
        torch.set_num_threads(threads)  # the kernel timings use every thread
    if rank == 0:
        speed = kernel_speed(device)
        machine = {"seconds": time.perf_counter() - start, "load_before": load_before,
                   "load_after": os.getloadavg(), "world_size": rank_and_world()[1], "train_threads": args.train_threads}
        report = write_report(studies, speed, Path(args.out), machine, settings)
        print_summary(studies, speed, Path(args.out), report)
    if args.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def load_datasets(args) -> list[tuple[Split, bool]]:
    """``(split, is text)`` of each study: digits-LT and chatterbot topics, or ``--data``, read and checked."""
    table = args.data is not None and Path(args.data).suffix != ".npz"
    if not table and (args.text_col or args.label_col):
        raise ValueError("--text-col and --label-col name the columns of a --data text file (.csv, .tsv, .jsonl); "
                         + ("there is no --data" if args.data is None else f"{Path(args.data).name} is an .npz file"))
    if args.data is None:
        return [(digits_long_tailed(seed=args.seed), False), (chatterbot_topics(seed=args.seed), True)]
    if not table:
        return [(load_arrays(args.data, seed=args.seed), False)]
    if not args.text_col or not args.label_col:
        raise ValueError("--data with a text file needs --text-col and --label-col")
    return [(load_table(args.data, args.text_col, args.label_col, seed=args.seed), True)]


def make_augmenter(method: str, mlm: str | None, seed: int, device: torch.device):
    """``--augmenter`` (model-free by default); ``contextual`` fills masks with the ``--mlm`` model."""
    from rarekit.augment import RareAugmenter

    if method == "contextual":
        if not mlm:
            raise ValueError("--augmenter contextual needs --mlm PATH_OR_NAME (a masked LM folder or hub name)")
        return RareAugmenter("contextual", model_path=mlm, device=device.type, seed=seed)
    return RareAugmenter(method, seed=seed)
