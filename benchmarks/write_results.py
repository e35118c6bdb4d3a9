"""Regenerates benchmarks/RESULTS.md from the JSON files the bench_*.py scripts wrote.

    python benchmarks/write_results.py [--json-dir benchmarks/out] [--output benchmarks/RESULTS.md]

`rarekit bench` runs it with --output DIR/RESULTS.md, and also onto benchmarks/RESULTS.md only with
--update-results. Results of --quick runs are labelled as smoke figures.

Figures from several JSON files are kept apart per job and device, each with its machine.
"""
import argparse
import glob
import json
import os

from rarekit._files import write_text_atomic


def machine_line(machine: dict) -> str:
    backend = machine.get("rarekit_backend", {})
    parts = [machine.get("cpu", "?"), f"{machine.get('cores')} cores", f"{machine.get('threads')} torch threads",
             f"torch {machine.get('torch')}", f"CPU ISA {backend.get('cpu_isa')}"]
    if machine.get("gpu"):
        parts.insert(0, machine["gpu"])
    return ", ".join(str(part) for part in parts)


SMOKE_NOTE = ("**Smoke figures** (`rarekit bench --quick`): small inputs, a short warm-up and few repeats. They show "
              "that the benchmarks run; they are not performance figures.")


def job_section(result: dict) -> list[str]:
    smoke = " (smoke figures)" if result.get("quick") else ""
    lines = [f"## {result['job']} on {result['device']}{smoke}", "", f"Machine: {machine_line(result['machine'])}", ""]
    for case in result["cases"]:
        lines += [f"### {case['case']}", "", "| contender | median (ms) |", "|---|---:|"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in case["median_ms"].items()]
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f}x |" for name, value in case.get("ratios", {}).items()]
        for key, value in case.items():
            if key in ("case", "median_ms", "ratios"):
                continue
            if isinstance(value, dict):
                lines += ["", f"{key}:", ""] + [f"- {name}: {v:.3f}" for name, v in value.items()]
            else:
                lines += ["", f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}"]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json-dir", default=os.path.join(os.path.dirname(__file__), "out"))
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.json_dir, "*.json")))
    results = [json.load(open(path)) for path in paths if os.path.basename(path) != "all.json"]
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/write_results.py` from the JSON of `benchmarks/bench_*.py`. Every ratio "
             "compares contenders measured in the same run on the same machine (medians of repeated runs, "
             "count times its contenders round-robin).", ""]
    if any(result.get("quick") for result in results):
        lines += [SMOKE_NOTE, ""]
    for result in results:
        lines += job_section(result)
    write_text_atomic(args.output, "\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.output} ({len(results)} result files)")


if __name__ == "__main__":
    main()
