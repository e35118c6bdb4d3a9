"""The report of ``rarekit demo``: ``report.md``, ``results.json`` and the plots, and the kernel timings.

Every file is written through :func:`rarekit._files.atomic_output`; ``results.json`` and ``report.md``
are written even when a plot cannot be drawn (the report then says why), and plots and results of
an earlier run that this run does not write are removed, so a folder holds one run's outputs.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import rarekit
from rarekit._files import write_text_atomic
from rarekit.study.datasets import describe
from rarekit.plots import plot_frequencies
from rarekit.study.plots import plot_class_recall
from rarekit.study.text import shortened

NO_TEST = "n/a (no test samples)"
PER_CLASS_ROWS = 60  # the per-class table lists every class up to this many; beyond, the rarest and most frequent
KERNEL_REPEATS = 7
PLOT_PATTERNS = ("recall-*.png", "label-frequencies-*.png")


def timed(fn, device: torch.device, repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn`` in ms, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def compare(ours: list[float], theirs: list[float]) -> dict:
    """Median and min-max of both; the speed-up is called one only when the min-max spreads do not overlap."""
    speed_up = float(np.median(theirs) / np.median(ours))
    if max(ours) < min(theirs):
        verdict = f"{speed_up:.2f}x faster"
    elif max(theirs) < min(ours):
        verdict = f"{1 / speed_up:.2f}x slower"
    else:
        verdict = "within noise"
    return {"rarekit": spread(ours), "torch": spread(theirs), "speed-up": speed_up, "verdict": verdict}


def spread(times: list[float]) -> dict:
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)), "max_ms": float(max(times))}


def kernel_speed(device: torch.device) -> dict:
    """rarekit vs torch on this machine, :data:`KERNEL_REPEATS` runs each: weighted CE
    forward+backward, and counting Zipf ids."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1024, 8192, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 8192, (1024,), generator=gen).to(device)
    weight = (torch.rand(8192, generator=gen) + 0.1).to(device)
    # V^U - 1 for uniform U has density ∝ 1/(id+1) over [0, V): Zipf's law with s = 1, drawn fast
    ids = (50_000 ** torch.rand(10_000_000, generator=gen, dtype=torch.float64)).long().sub_(1).clamp_(0, 49_999).to(device)
    jobs = {
        "cross_entropy 1024x8192 fwd+bwd": (
            lambda: torch.autograd.grad(rarekit.cross_entropy(logits, target, weight), logits),
            lambda: torch.autograd.grad(F.cross_entropy(logits, target, weight), logits)),
        "count 1e7 Zipf ids, V=50000 (vs torch.bincount)": (
            lambda: rarekit.count(ids, 50_000, check=False), lambda: torch.bincount(ids, minlength=50_000)),
    }
    return {job: compare(timed(ours, device, KERNEL_REPEATS), timed(theirs, device, KERNEL_REPEATS))
            for job, (ours, theirs) in jobs.items()}


def verdict(results: dict) -> list[str]:
    """Plain sentences: does each rarekit method beat plain CE on the rarest third of the classes?"""
    if "plain CE" not in results:
        return ["Plain CE was skipped, so there is no baseline to compare with."]
    baseline = results["plain CE"]
    samples = baseline["rare_third_test_samples"]
    if baseline["rare_third_accuracy"] is None:
        return ["No class of the rarest third has test samples: there is nothing to compare on them."]
    lines = [f"The rarest third of the classes has {samples} test samples, so one sample moves its accuracy by "
             f"{1 / max(samples, 1):.3f}: differences of that size are noise, not evidence."]
    for name, metrics in results.items():
        if name == "plain CE":
            continue
        delta = metrics["rare_third_accuracy"] - baseline["rare_third_accuracy"]
        word = "beats" if delta > 0 else ("ties with" if delta == 0 else "does NOT beat")
        lines.append(f"- {name} {word} plain CE on the rarest third ({metrics['rare_third_accuracy']:.3f} vs "
                     f"{baseline['rare_third_accuracy']:.3f}; macro-F1 {metrics['macro_f1']:.3f} vs "
                     f"{baseline['macro_f1']:.3f}).")
    return lines


def share(value: float | None) -> str:
    """A share to 3 decimals, or "n/a" where there was nothing to measure it on."""
    return "n/a" if value is None else f"{value:.3f}"


def table(results: dict, skipped: dict | None = None) -> list[str]:
    lines = ["| method | macro-F1 | balanced acc. | rarest-third acc. | train (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {m['macro_f1']:.3f} | {m['balanced_accuracy']:.3f} | {share(m['rare_third_accuracy'])} | "
              f"{m['train_seconds']:.1f} |" for name, m in results.items()]
    lines += [f"| {name} | skipped: {reason} | | | |" for name, reason in (skipped or {}).items()]
    return lines


def per_class_table(study) -> list[str]:
    """Training and test counts and each method's recall per class, then the LDAM margins of the methods
    that have them; a class without test samples reads :data:`NO_TEST`. Past :data:`PER_CLASS_ROWS`
    classes, the rarest and the most frequent half each."""
    names = study.split.class_names
    train_counts = np.bincount(study.split.y_train, minlength=len(names))
    test_counts = np.bincount(study.split.y_test, minlength=len(names))
    order = np.argsort(-train_counts, kind="stable")
    shown = order if len(order) <= PER_CLASS_ROWS else np.concatenate(
        [order[:PER_CLASS_ROWS // 2], [-1], order[-PER_CLASS_ROWS // 2:]])
    methods = list(study.results)
    with_margins = [m for m in methods if "margins" in study.results[m]]
    generated = study.generated_per_class
    extras = [f"margin ({m})" for m in with_margins] + ["generated"] * bool(generated)
    lines = ["| class | n train | n test | " + " | ".join(methods + extras) + " |",
             "|---|---:|---:|" + "---:|" * (len(methods) + len(extras))]
    for label in shown:
        if label < 0:
            lines.append(f"| ... {len(order) - PER_CLASS_ROWS} classes ... |" + " |" * (len(methods) + 2 + len(extras)))
            continue
        recalls = [study.results[m]["per_class_recall"][label] for m in methods]
        cells = [NO_TEST if value is None else f"{value:.2f}" for value in recalls]
        cells += [f"{study.results[m]['margins'][label]:.3f}" for m in with_margins]
        extra = f" {generated[label]} |" if generated else ""
        lines.append(f"| {names[label]} | {train_counts[label]} | {test_counts[label]} | " + " | ".join(cells)
                     + " |" + extra)
    return lines


def method_notes(study) -> list[str]:
    """What the results table leaves out of a method: its LDAM margins and its deferred re-weighting step."""
    lines = []
    for name, metrics in study.results.items():
        parts = []
        if "margins" in metrics:
            margins = metrics["margins"]
            parts.append(f"LDAM margins m_c ∝ n_c^(-1/4) from {min(margins):.3f} (the most frequent class) to "
                         f"{max(margins):.3f} (the rarest; column \"margin ({name})\" below)")
        if "reweighted_from_step" in metrics:
            parts.append(f"deferred re-weighting: class weights from step {metrics['reweighted_from_step']:,} of "
                         f"{study.steps:,}")
        if parts:
            lines.append(f"{name}: " + "; ".join(parts) + ".")
    return lines + [""] * bool(lines)


def augmentation_lines(study, settings) -> list[str]:
    budget = settings.augmentation
    lines = [f"Augmentation budget: at most {budget.per_text} generated texts per original (--augment-per-text) "
             f"and {budget.total:,} in all (--augment-max), each class up to the majority count.", ""]
    if study.generated_per_class is not None:
        lines += [f"Generated {sum(study.generated_per_class):,} texts (per class: column \"generated\" above).", ""]
    example = study.augmentation_example
    if example:
        lines += [f"augment_minority on {example['class']!r}, the rarest class with test samples "
                  f"({example['training_samples']} training, {example['test_samples']} test texts): an original "
                  "and two variants, changed words in **bold**, deleted ones ~~struck~~", "",
                  f"- original{cut_from(example)}: {shortened(example['original'], 300)}"] + [
                  f"- variant: {shortened(variant, 400)}" for variant in example["marked_variants"]] + [""]
    return lines


def cut_from(example: dict) -> str:
    """Says that the example's original is the start of a longer training text, if it is."""
    length, total = len(example["original"]), example["original_characters"]
    return f" (the first {length:,} of its {total:,} characters)" if total > length else ""


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def draw_plots(study, out: Path) -> tuple[list[str], list[str]]:
    """``(markdown lines, files written)``; a plot that cannot be drawn is named with the reason."""
    names = study.split.class_names
    counts = torch.as_tensor(np.bincount(study.split.y_train, minlength=len(names)))
    recall_png, freq_png = f"recall-{slug(study.split.name)}.png", f"label-frequencies-{slug(study.split.name)}.png"
    lines, written = [], []
    plots = [(recall_png, "per-class recall",
              lambda path: plot_class_recall({name: m["per_class_recall"] for name, m in study.results.items()},
                                             counts.numpy(), names, path, title=study.split.name)),
             (freq_png, "label frequencies",
              lambda path: plot_frequencies(counts, path, names=names, unit="classes",
                                            title=f"Training label frequencies: {study.split.name}"))]
    for file, what, draw in plots:
        try:
            draw(out / file)
        except (ImportError, MemoryError, ValueError, RuntimeError) as error:
            lines.append(f"({what} plot not drawn: {error})")
            continue
        lines.append(f"![{what}]({file})")
        written.append(file)
    return lines, written


def write_report(studies: list, speed: dict, out: Path, machine: dict, settings) -> str:
    """Writes ``report.md``, ``results.json`` and the plots into ``out``; returns the report's text."""
    out.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{value:.2f}" for value in machine["load_before"])
    load_after = ", ".join(f"{value:.2f}" for value in machine["load_after"])
    lines = ["# rarekit demo report", "",
             f"Machine: {rarekit.backend_info()['cpu_isa']} CPU kernels, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {machine['world_size']} process(es); total time "
             f"{machine['seconds']:.0f} s. Load average (1, 5, 15 min) {load} at the start, {load_after} at the end: "
             "on a loaded machine every time here is inflated.", "",
             f"Budget per method: {settings.epochs} epochs over the original training set, in optimizer steps of "
             "the batch size below; a method projected past "
             f"{settings.time_budget:g} s (--time-budget) is skipped with the reason. \"train (s)\" is one run per "
             f"method on {machine['train_threads']} thread(s): a guide to the cost, not a benchmark.", "",
             "Macro-F1 and balanced accuracy average over the classes that have test samples (scikit-learn's "
             "`labels=` set to them); a class without test samples reads \"" + NO_TEST + "\" and is left out.", ""]
    payload: dict = {"studies": [], "kernel_speed": speed, "backend": rarekit.backend_info(), "machine": machine}
    written = {"report.md", "results.json"}
    for study in studies:
        info = describe(study.split)
        plot_lines, files = draw_plots(study, out)
        written.update(files)
        lines += [f"## {study.split.name}", "",
                  f"{info['train']} training and {info['test']} test samples, {info['classes']} classes, "
                  f"imbalance {info['imbalance_ratio']:.0f}:1 in training; batch size {study.batch_size}, "
                  f"{study.steps:,} steps per method.", ""] + [f"Note: {note}." for note in info["notes"]] + [
                  ""] * bool(info["notes"]) + table(study.results, study.skipped) + [""] + method_notes(study) + [
                  "Does rarekit beat plain CE on the rare classes?", ""] + verdict(study.results) + [
                  "", "Per class (n train: training samples; recall on the test samples):", ""] + per_class_table(
                  study) + [""] + (augmentation_lines(study, settings) if study.text else []) + plot_lines + [""]
        payload["studies"].append({"data": info, "results": study.results, "skipped": study.skipped,
                                   "class_names": study.split.class_names, "batch_size": study.batch_size,
                                   "steps": study.steps, "generated_per_class": study.generated_per_class,
                                   "augmentation_example": study.augmentation_example})
    lines += ["## Kernel speed on this machine", "",
              f"Median and min-max of {KERNEL_REPEATS} runs each; a speed-up is called one only when the spreads "
              "do not overlap.", "",
              "| job | rarekit (ms) | torch (ms) | median ratio | verdict |", "|---|---:|---:|---:|---|"]
    for job, figures in speed.items():
        ours, theirs = figures["rarekit"], figures["torch"]
        lines.append(f"| {job} | {ours['median_ms']:.2f} ({ours['min_ms']:.2f}-{ours['max_ms']:.2f}) | "
                     f"{theirs['median_ms']:.2f} ({theirs['min_ms']:.2f}-{theirs['max_ms']:.2f}) | "
                     f"{figures['speed-up']:.2f}x | {figures['verdict']} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "results.json", json.dumps(payload, indent=2))
    write_text_atomic(out / "report.md", text)
    remove_stale(out, written)
    return text


def remove_stale(out: Path, written: set[str]) -> None:
    """Removes the plots of an earlier run in ``out`` that this run did not write."""
    for pattern in PLOT_PATTERNS:
        for path in out.glob(pattern):
            if path.name not in written:
                path.unlink()


def print_summary(studies: list, speed: dict, out: Path, report: str) -> None:
    for study in studies:
        print(f"\n{study.split.name}")
        print("".join(f"note: {note}\n" for note in study.split.notes), end="")
        print("\n".join(table(study.results, study.skipped)))
        example = study.augmentation_example
        if example:
            print(f"augmented class {example['class']!r}: {shortened(example['original'], 80)!r} -> "
                  f"{shortened(example['marked_variants'][0], 80)!r}")
    print("\nkernel speed: " + "; ".join(f"{job}: {f['verdict']}" for job, f in speed.items()))
    print(f"report: {out / 'report.md'} ({len(report.splitlines())} lines), results.json and plots in {out}")
