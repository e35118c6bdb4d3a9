"""``rarekit demo --lm``: a rare-token language-model study on real text, offline, on CPU.

A 2-layer GRU language model over a word-level vocabulary is trained on the English dialogues of the
``chatterbot-corpus`` package (BSD licence; the demo's text data, split 3:1 per topic) with the same
seed, steps and batches for each method, all through :func:`rarekit.linear_cross_entropy` (the
logits of a batch are never materialized):

* plain cross-entropy;
* rare-token weights w = ``class_weights(counts, "inverse_sqrt")`` from a :class:`rarekit.TokenCounter`
  (Mahajan et al. 2018);
* logit adjustment, z + τ log π with τ = 1 in training only (Menon et al. 2021);
* the same weights with label smoothing ε = 0.1 in ``smoothing_mode="target_weighted"``, so that the
  up-weighted rare ids do not draw smoothing mass from every row.

On the held-out text it reports perplexity, next-token accuracy, recall and precision on the rarest
third of the vocabulary (by training count), accuracy per training-frequency bucket (a plot), and the
peak memory of one loss step, fused against materialized logits (torch's profiler, every CPU
allocation counted).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import rarekit
from rarekit.study.report import share
from rarekit.plots import figure_class
from rarekit._files import atomic_output, write_text_atomic
from rarekit.losses.linear import linear_cross_entropy
from rarekit.losses.cross_entropy import cross_entropy, log_prior

TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")  # lower-cased words and single punctuation marks
UNK, EOS = "<unk>", "<eos>"
DEFAULT_EPOCHS = 4


@dataclass
class Corpus:
    """Word ids of the training and held-out text (each text ends with ``<eos>``), the vocabulary
    (training words seen at least ``min_count`` times; the others are ``<unk>``) and the training counts."""

    vocab: list[str]
    train: torch.Tensor
    heldout: torch.Tensor
    counts: torch.Tensor


def load_corpus(seed: int = 0, min_count: int = 2) -> Corpus:
    from rarekit.study.datasets import chatterbot_topics

    split = chatterbot_topics(seed=seed)
    train_words = [TOKEN.findall(text.lower()) + [EOS] for text in split.x_train]
    frequencies = Counter(itertools.chain.from_iterable(train_words))
    vocab = [UNK, EOS] + sorted(word for word, n in frequencies.items() if n >= min_count and word != EOS)
    index = {word: i for i, word in enumerate(vocab)}

    def ids(texts_words):
        return torch.tensor([index.get(word, 0) for words in texts_words for word in words], dtype=torch.int64)

    train = ids(train_words)
    heldout = ids(TOKEN.findall(text.lower()) + [EOS] for text in split.x_test)
    counts = rarekit.TokenCounter(len(vocab), ignore_index=None).update(train).counts
    return Corpus(vocab, train, heldout, counts)


class GRULanguageModel(nn.Module):
    """Embedding → 2-layer GRU → linear head; :meth:`features` gives the head's input, so that the
    loss can run the head fused with the cross-entropy."""

    def __init__(self, vocab: int, embedding: int = 64, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = nn.GRU(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def features(self, ids: torch.Tensor, state: torch.Tensor | None = None):
        output, state = self.rnn(self.embed(ids), state)
        return output, state


@dataclass
class LMMethod:
    name: str
    loss_keywords: dict  # keywords of linear_cross_entropy


def lm_methods(counts: torch.Tensor) -> list[LMMethod]:
    weights = rarekit.class_weights(counts, "inverse_sqrt")
    return [
        LMMethod("plain CE", {}),
        LMMethod("rare-token weights (inverse sqrt)", {"weight": weights}),
        LMMethod("logit adjustment (tau=1)", {"logit_adjustment": log_prior(counts)}),
        LMMethod("weights + target-weighted smoothing (eps=0.1)",
                 {"weight": weights, "label_smoothing": 0.1, "smoothing_mode": "target_weighted"}),
    ]


def batchify(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """The id stream cut into ``rows`` contiguous streams, one per batch row (the tail is dropped)."""
    columns = ids.numel() // rows
    if columns < 2:
        raise ValueError(f"{ids.numel()} ids are too few for {rows} streams")
    return ids[: rows * columns].reshape(rows, columns)


def train_lm(method: LMMethod, corpus: Corpus, *, epochs: int, seed: int, batch_rows: int = 32, window: int = 32,
             max_steps: int | None = None, progress: bool = True) -> tuple[GRULanguageModel, float]:
    """Truncated backpropagation through time over ``window`` tokens, the GRU state carried across
    windows, for ``epochs`` passes or ``max_steps`` optimizer steps, whichever ends first; returns the
    model and the training seconds."""
    torch.manual_seed(seed)
    model = GRULanguageModel(len(corpus.vocab))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    streams = batchify(corpus.train, batch_rows)
    starts = range(0, streams.shape[1] - 1, window)
    steps = epochs * len(starts) if max_steps is None else min(max_steps, epochs * len(starts))
    start = time.perf_counter()
    with tqdm(total=steps, desc=method.name, leave=False,
              disable=None if progress else True) as bar:  # None: shown on a terminal only
        done = 0
        while done < steps:  # an epoch: one pass over the streams, the state starting afresh
            state = None
            for column in starts[: steps - done]:
                inputs, targets = streams[:, column:column + window], streams[:, column + 1:column + 1 + window]
                inputs = inputs[:, : targets.shape[1]]
                features, state = model.features(inputs, state)
                state = state.detach()
                loss = linear_cross_entropy(features, model.head.weight, targets, bias=model.head.bias,
                                            **method.loss_keywords)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                done += 1
                bar.update()
    return model, time.perf_counter() - start


def frequency_buckets(counts: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """Each id's bucket of training count: [1, 4), [4, 16), [16, 64), ... (powers of 4), and their labels."""
    bucket = np.floor(np.log(np.maximum(counts.numpy(), 1)) / np.log(4)).astype(int)
    labels = [f"{4 ** b}-{4 ** (b + 1) - 1}" for b in range(bucket.max() + 1)]
    return bucket, labels


@torch.no_grad()
def evaluate_lm(model: GRULanguageModel, corpus: Corpus, rows: int = 32) -> dict:
    """Perplexity and next-token accuracy on the held-out text, overall, on the rarest third of the
    vocabulary by training count (the targets that are such ids: recall; the predictions that are:
    precision, None when it predicts none of them) and per frequency bucket. ``<unk>`` targets count in
    the perplexity and accuracy only."""
    model.eval()
    streams = batchify(corpus.heldout, rows)
    features, _ = model.features(streams[:, :-1])
    targets = streams[:, 1:].reshape(-1)
    features = features.reshape(-1, features.shape[-1])
    nll = linear_cross_entropy(features, model.head.weight, targets, bias=model.head.bias, reduction="none")
    predicted = torch.cat([F.linear(chunk, model.head.weight, model.head.bias).argmax(-1)
                           for chunk in features.split(4096)])
    correct = predicted == targets
    vocab = len(corpus.vocab)
    rare = torch.zeros(vocab, dtype=torch.bool)
    rare[torch.argsort(corpus.counts, stable=True)[: vocab // 3]] = True
    rare_targets, rare_predictions = rare[targets], rare[predicted]
    known = targets != 0
    bucket, labels = frequency_buckets(corpus.counts)
    target_bucket = torch.as_tensor(bucket)[targets]
    in_bucket = {label: known & (target_bucket == b) for b, label in enumerate(labels)}
    in_bucket = {label: rows for label, rows in in_bucket.items() if rows.any()}
    model.train()
    return {
        "perplexity": float(nll.mean().exp()),
        "accuracy": float(correct.float().mean()),
        "rare_third_recall": float(correct[rare_targets].float().mean()),
        "rare_third_precision": float(correct[rare_predictions].float().mean()) if rare_predictions.any() else None,
        "rare_third_predictions": int(rare_predictions.sum()),
        "rare_third_targets": int(rare_targets.sum()),
        "known_targets": int(known.sum()),
        "rare_third_ids_recalled": int(targets[rare_targets & correct].unique().numel()),
        "bucket_accuracy": {label: float(correct[rows].float().mean()) for label, rows in in_bucket.items()},
        "bucket_targets": {label: int(rows.sum()) for label, rows in in_bucket.items()},
    }


# --- peak memory of the loss step ------------------------------------------------------------------

@contextlib.contextmanager
def _stderr_to_devnull():
    """fd 2 to /dev/null: torch's profiler prints start/stop (and GPU probe) lines from C++ on CPU-only machines."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_cpu_memory(step) -> int:
    """Peak bytes held by CPU tensors allocated while ``step()`` runs, beyond those held before it:
    torch's profiler records every allocation and free of the CPU allocator, and the peak of their
    running sum is taken."""
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with _stderr_to_devnull():
        profiler.start()
    try:
        step()
    finally:
        with _stderr_to_devnull():
            profiler.stop()
    session = profiler.profiler
    if session is None or session.kineto_results is None:
        raise RuntimeError("torch's profiler recorded no events")
    recorded: list = session.kineto_results.events()  # torch's stubs lack _KinetoEvent.nbytes
    events = sorted((event.start_ns(), event.nbytes()) for event in recorded
                    if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU)
    return max(itertools.accumulate((nbytes for _, nbytes in events), initial=0))


def loss_step_memory(tokens: int, vocab: int, hidden: int, seed: int = 0) -> dict:
    """Peak memory of one weighted loss step (forward and backward to the hidden states and the head
    weight) at (tokens, hidden) × (vocab, hidden), fused against F.linear + rarekit.cross_entropy."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(tokens, hidden, generator=gen).requires_grad_()
    classifier = (torch.randn(vocab, hidden, generator=gen) / math.sqrt(hidden)).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    weight = torch.rand(vocab, generator=gen) + 0.5

    def fused():
        torch.autograd.grad(linear_cross_entropy(features, classifier, target, weight), (features, classifier))

    def materialized():
        torch.autograd.grad(cross_entropy(F.linear(features, classifier), target, weight), (features, classifier))

    peaks = {"fused": peak_cpu_memory(fused), "materialized": peak_cpu_memory(materialized)}
    return {"tokens": tokens, "vocab": vocab, "hidden": hidden, "logits_bytes": tokens * vocab * 4,
            "peak_bytes": peaks, "fused_over_materialized": peaks["fused"] / peaks["materialized"]}


# --- the study and its report -----------------------------------------------------------------------

LM_SCALE_LOSS_STEP = (4096, 32000, 32)  # tokens, vocabulary, hidden: a Llama-2-sized vocabulary


def run_lm_study(*, epochs: int = DEFAULT_EPOCHS, seed: int = 0, progress: bool = True, batch_rows: int = 32, window: int = 32,
                 max_steps: int | None = None, memory_shapes=(LM_SCALE_LOSS_STEP,), threads: int = 1) -> dict:
    """Trains one model per method and evaluates it, then measures the loss step's peak memory at the
    study's own shape (``batch_rows · window`` tokens) and at ``memory_shapes``; returns the results
    (see :func:`write_lm_report`).

    It runs on ``threads`` CPU threads (torch's setting is restored after): the GRU's (1024 × 128)
    matmuls gain little from more, and on a shared machine two threads waiting for each other were
    measured 9× slower per step than one."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_lm_study(epochs, seed, progress, batch_rows, window, max_steps, memory_shapes)
    finally:
        torch.set_num_threads(previous_threads)


def _run_lm_study(epochs, seed, progress, batch_rows, window, max_steps, memory_shapes) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    corpus = load_corpus(seed)
    results = {}
    for method in lm_methods(corpus.counts):
        model, seconds = train_lm(method, corpus, epochs=epochs, seed=seed, batch_rows=batch_rows, window=window,
                                  max_steps=max_steps, progress=progress)
        results[method.name] = {**evaluate_lm(model, corpus), "train_seconds": seconds}
    study_shape = (batch_rows * window, len(corpus.vocab), model.head.in_features)
    memory = [loss_step_memory(tokens, vocab, hidden, seed=seed)
              for tokens, vocab, hidden in (study_shape, *memory_shapes)]
    counts = corpus.counts
    return {
        "corpus": {"name": "chatterbot-corpus (English dialogues)", "train_tokens": corpus.train.numel(),
                   "heldout_tokens": corpus.heldout.numel(), "vocab": len(corpus.vocab),
                   "heldout_unk_share": float((corpus.heldout == 0).float().mean()),
                   "rare_third_max_count": int(counts.sort(stable=True).values[len(counts) // 3 - 1])},
        "epochs": epochs, "max_steps": max_steps, "seed": seed, "threads": torch.get_num_threads(), "results": results, "loss_step_memory": memory,
        "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
    }


def lm_verdict(study: dict) -> list[str]:
    """Plain sentences: which method recalls more rare tokens than plain CE, at what perplexity, and
    a conclusion."""
    results = study["results"]
    base = results["plain CE"]
    samples = base["rare_third_targets"]
    lines = [f"The held-out text has {samples} tokens from the rarest third of the vocabulary, so one of them moves "
             f"the rare-third recall by {1 / max(samples, 1):.4f}; differences of a few of them are noise."]
    helping = {}
    for name, metrics in results.items():
        if name == "plain CE":
            continue
        hits = round((metrics["rare_third_recall"] - base["rare_third_recall"]) * samples)
        perplexity_cost = metrics["perplexity"] / base["perplexity"] - 1
        if hits > 2:
            word = "recalls more rare tokens than"
            helping[name] = metrics
        elif hits < -2:
            word = "recalls fewer rare tokens than"
        else:
            word = "is no better on rare tokens than"
        lines.append(f"- {name} {word} plain CE ({metrics['rare_third_recall']:.3f} vs {base['rare_third_recall']:.3f}, "
                     f"{hits:+d} tokens; precision of its rare predictions {share(metrics['rare_third_precision'])} "
                     f"vs {share(base['rare_third_precision'])}) at {perplexity_cost:+.1%} perplexity "
                     f"({metrics['perplexity']:.1f} vs {base['perplexity']:.1f}).")
    if not helping:
        lines.append("In short: no method recalls measurably more rare tokens than plain CE here.")
        return lines
    most = max(helping, key=lambda name: helping[name]["rare_third_recall"])
    cheapest = min(helping, key=lambda name: helping[name]["perplexity"])
    guessing = [name for name, m in helping.items() if (m["rare_third_precision"] or 0.0) < 0.05]
    free = [name for name, m in helping.items() if m["perplexity"] <= base["perplexity"]]
    costs = [m["perplexity"] / base["perplexity"] - 1 for m in helping.values()]
    price = (f"{', '.join(free)} helps at no perplexity cost" if free else
             f"none is free: they raise the perplexity by {min(costs):+.0%} to {max(costs):+.0%}")
    lines.append(f"In short: {most} recalls the most rare tokens and {cheapest} costs the least perplexity of the "
                 f"methods that help; {price}"
                 + (f"; the rare words predicted by {', '.join(guessing)} are mostly wrong (precision below "
                    f"0.05)." if guessing else "."))
    return lines


def lm_table(results: dict) -> list[str]:
    lines = ["| method | perplexity | accuracy | rare-third recall | rare-third precision | rare predictions | train (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {m['perplexity']:.1f} | {m['accuracy']:.3f} | {m['rare_third_recall']:.3f} | "
              f"{share(m['rare_third_precision'])} | {m['rare_third_predictions']} | {m['train_seconds']:.1f} |"
              for name, m in results.items()]
    return lines


def memory_table(memory: list[dict]) -> list[str]:
    lines = ["| tokens × vocab × hidden | logits (MiB) | fused peak (MiB) | materialized peak (MiB) | fused / materialized |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {m['tokens']} × {m['vocab']} × {m['hidden']} | {m['logits_bytes'] / 2**20:.1f} | "
              f"{m['peak_bytes']['fused'] / 2**20:.1f} | {m['peak_bytes']['materialized'] / 2**20:.1f} | "
              f"{m['fused_over_materialized']:.2f} |" for m in memory]
    return lines


def plot_bucket_accuracy(study: dict, path: Path) -> None:
    Figure = figure_class()
    results = study["results"]
    targets = next(iter(results.values()))["bucket_targets"]
    labels = list(targets)
    positions = np.arange(len(labels))
    width = 0.8 / len(results)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    for i, (name, metrics) in enumerate(results.items()):
        axes.bar(positions + i * width, [metrics["bucket_accuracy"].get(label, 0.0) for label in labels], width,
                 label=f"{name} (ppl {metrics['perplexity']:.0f})")
    axes.set_xticks(positions + 0.4 - width / 2, [f"{label}\nn={targets[label]:,}" for label in labels])
    axes.set_xlabel("training count of the target word (n: its held-out tokens)")
    axes.set_ylabel("held-out next-token accuracy")
    axes.set_title("Next-token accuracy by training frequency (chatterbot-corpus, 2-layer GRU)")
    axes.legend(fontsize=7)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110)


def write_lm_report(study: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    plot_bucket_accuracy(study, out / "bucket-accuracy.png")
    corpus = study["corpus"]
    training = f"{study['epochs']} epochs" + (f" (at most {study['max_steps']} steps)" if study["max_steps"] else "")
    lines = ["# rarekit language-model study", "",
             f"A 2-layer GRU LM (word level) trained {training} with each method on {corpus['name']}: "
             f"{corpus['train_tokens']:,} training and {corpus['heldout_tokens']:,} held-out tokens, a vocabulary of "
             f"{corpus['vocab']:,} words (training words seen twice or more; {corpus['heldout_unk_share']:.1%} of the "
             f"held-out tokens are <unk>). The rarest third of the vocabulary are the words seen at most "
             f"{corpus['rare_third_max_count']} times in training. Total time {study['seconds']:.0f} s "
             f"({study['cpu_seconds']:.0f} s of CPU) on {study['threads']} thread(s).", ""]
    lines += lm_table(study["results"]) + ["", "Does a rarekit method help rare tokens, and at what cost?", ""]
    lines += lm_verdict(study) + ["", "![accuracy by training frequency](bucket-accuracy.png)", ""]
    lines += ["## Peak memory of one weighted loss step (forward + backward)", "",
              "Every CPU allocation of the step beyond its inputs, from torch's profiler: "
              "rarekit.linear_cross_entropy (fused) against F.linear + rarekit.cross_entropy (materialized). "
              "The fused loss holds one chunk of logits at a time (256 MiB by default), so it saves memory only "
              "where the logits outgrow a chunk.", ""] + memory_table(study["loss_step_memory"]) + [""]
    text = "\n".join(lines)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "results.json", json.dumps(study, indent=2))
    return text


def run(args) -> int:
    """Entry point of ``rarekit demo --lm`` (arguments from rarekit.cli): writes into ``--out``/lm-study."""
    out = Path(args.out) / "lm-study"
    study = run_lm_study(epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs, seed=args.seed,
                         progress=not args.no_progress, threads=args.train_threads)
    write_lm_report(study, out)
    print("\n".join(lm_table(study["results"])))
    print("\n".join(lm_verdict(study)))
    print("\n".join(memory_table(study["loss_step_memory"])))
    print(f"report: {out / 'report.md'}, results.json and bucket-accuracy.png in {out} ({study['seconds']:.0f} s)")
    return 0
