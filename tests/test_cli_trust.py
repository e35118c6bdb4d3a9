"""`rarekit count` and `rarekit bench` regressions of issue 20: a half-written output set, temporary files of
killed runs, riddles for huge thresholds and a wrong --dtype, and raw JSON among the bench tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rarekit
from rarekit import cli

LIMITED_CHILD = """
import resource, signal, sys
from rarekit.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then raises OSError (EFBIG)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def snapshot(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_count_failing_half_way_leaves_the_earlier_set_whole(tmp_path):
    """Under a file size limit that counts.npy and summary.json fit but weights.json does not."""
    out = tmp_path / "out"
    (tmp_path / "words.txt").write_text("the sea and the wind and the fog\n")
    assert cli.main(["count", str(tmp_path / "words.txt"), "--out", str(out)]) == 0
    before = snapshot(out)
    assert set(before) == set(cli.COUNT_OUTPUTS)
    ids = np.random.default_rng(0).zipf(1.2, 50_000) % 2000  # 2000 ids with varied counts: long weights
    np.save(tmp_path / "ids.npy", ids)
    limit = 8 * 2000 + 4096  # counts.npy (8 bytes an id and a header) and summary.json fit, weights.json not
    result = subprocess.run([sys.executable, "-c", LIMITED_CHILD, str(limit), "count", str(tmp_path / "ids.npy"),
                             "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"rarekit count: error: cannot write {out / 'weights.json'}: ")
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(out) == before  # all old: no new counts.npy beside the old vocab.json, no temporary left


def test_what_killed_runs_left_behind_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this id
    abandoned = [out / ".counts.npy.k3j2h1.npy", out / ".weights.json.x9y8z7.json",
                 out / f"{cli.STAGING_PREFIX}{dead}-abc" / "counts.npy"]
    live = out / f"{cli.STAGING_PREFIX}{os.getpid()}-def" / "counts.npy"  # a run still writing: kept
    for path in abandoned + [live]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * 1000)
    (out / "notes.txt").write_text("the user's")
    np.save(tmp_path / "ids.npy", np.array([0, 1, 1]))
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["counts.npy", "notes.txt", "summary.json", "weights.json", "zipf.png", live.parent.name])
    assert live.exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("thresholds", [{"max_count": 10**30}, {"min_count": 1, "max_count": 2**63},
                                        {"max_count": 10**400}, {"min_count": 10**30}, {"min_count": 2**63 - 1}])
def test_rare_ids_takes_thresholds_past_int64(dtype, thresholds):
    counts = torch.tensor([0, 1, 5, 0, 2**40, 7], dtype=dtype)
    low, high = thresholds.get("min_count", 0), thresholds.get("max_count", float("inf"))
    expected = [i for i, c in enumerate(counts.tolist()) if low <= c <= high]  # Python compares ints exactly
    assert rarekit.rare_ids(counts, **thresholds).tolist() == expected


def test_count_with_a_rare_threshold_past_every_count(tmp_path, capsys):
    ids = np.array([0, 1, 1, 2, 2, 2, 5])
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out"
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out), "--rare-max-count", str(10**30)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    seen = np.bincount(ids) > 0
    assert summary["rare"] == seen.sum() and summary["rare_share"] == 1.0 and summary["rare_max_count"] == 10**30


def test_a_uint16_file_read_as_uint32_names_the_dtype(tmp_path, capsys):
    ids = np.random.default_rng(1).integers(0, 50_257, 4000).astype(np.uint16)  # GPT-2 ids, as nanoGPT writes them
    ids.tofile(tmp_path / "train.bin")
    assert cli.main(["count", str(tmp_path / "train.bin"), "--dtype", "uint32", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"rarekit count: error: {tmp_path / 'train.bin'}: read as uint32 (--dtype uint32), the ids "
                            f"are too large; read as uint16, the largest would be {int(ids.max()):,}: pass --dtype "
                            "uint16 if the file holds uint16 ids")
    assert cli.main(["count", str(tmp_path / "train.bin"), "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "counts.npy"), np.bincount(ids))


def test_a_uint32_file_read_as_uint16_is_refused_not_miscounted(tmp_path, capsys):
    """uint32 ids below 65,536 read as uint16 are each followed by a 0: counted, id 0 would be half the file."""
    ids = np.random.default_rng(2).integers(1, 50_257, 4000).astype(np.uint32)
    ids.tofile(tmp_path / "train.bin")
    assert cli.main(["count", str(tmp_path / "train.bin"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"rarekit count: error: {tmp_path / 'train.bin'}: read as uint16 (the default --dtype), "
                            "every second value is 0, as in a file of uint32 ids below 65,536: pass --dtype uint32")
    assert not (tmp_path / "out").exists()
    assert cli.main(["count", str(tmp_path / "train.bin"), "--dtype", "uint32", "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "counts.npy"), np.bincount(ids))


def test_a_uint16_file_with_many_zero_ids_is_still_counted(tmp_path):
    """Id 0 being common (padding) is not the uint32 pattern: only every second value being 0 is."""
    ids = np.random.default_rng(3).integers(0, 50_257, 4000).astype(np.uint16)
    ids[::3] = 0
    ids.tofile(tmp_path / "train.bin")
    assert cli.main(["count", str(tmp_path / "train.bin"), "--out", str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "counts.npy"), np.bincount(ids))


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_prints_tables_and_keeps_json_in_files(tmp_path, capsys):
    """What every benchmark prints: common.report's tables, with the case's figures besides its times."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    case = {"case": "ones", "median_ms": {"torch.sum": 0.5}, "ratios": {"speed-up": 2.0},
            "peak_extra_memory_MiB": {"rarekit": 1.25, "torch eager": 31.5}, "logits_MiB": 7.8125, "note": "a note"}
    path = common.report("figures", torch.device("cpu"), [case], str(tmp_path))
    printed = capsys.readouterr().out
    assert printed.splitlines()[1:] == [
        "figures [cpu] ones", "  torch.sum                         0.500 ms", f"  {'speed-up':<40}     2.00x",
        "  peak_extra_memory_MiB:", f"    {'rarekit':<38}      1.250", f"    {'torch eager':<38}     31.500",
        f"  {'logits_MiB':<40}      7.812", "  note: a note", "", f"wrote {path}"]
    assert json.loads(Path(path).read_text())["cases"] == [case]


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("bench_*.py")))
def test_benchmarks_print_no_json(script):
    """Their figures reach stdout through common.report's tables; the JSON only goes into files."""
    import ast

    tree = ast.parse((BENCHMARKS / script).read_text())
    printed_json = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and getattr(node.func, "id", None) == "print" and any(
                        isinstance(inner, ast.Attribute) and inner.attr == "dumps" for arg in node.args
                        for inner in ast.walk(arg))]
    assert printed_json == [], f"{script} prints JSON on lines {printed_json}"
