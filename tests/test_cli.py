"""`rarekit count` and `rarekit demo` against numpy and collections.Counter."""
import collections
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rarekit import cli


def skewed_ids(gen, size, vocab):
    """Ids with a long tail: a few frequent, many rare."""
    return (torch.rand(size, generator=gen) ** 4 * vocab).long().numpy()


def read_outputs(out):
    return (np.load(out / "counts.npy"), json.loads((out / "summary.json").read_text()),
            json.loads((out / "weights.json").read_text()))


def expected_summary(counts, rare_max_count):
    """The summary fields computed with numpy from the expected counts."""
    rare = (counts >= 1) & (counts <= rare_max_count)
    return {"total": int(counts.sum()), "vocab_size": counts.size, "distinct": int((counts > 0).sum()),
            "singletons": int((counts == 1).sum()), "rare": int(rare.sum()),
            "rare_share": pytest.approx(counts[rare].sum() / counts.sum())}


def test_count_npy_in_chunks(tmp_path, gen, monkeypatch, capsys):
    monkeypatch.setattr(cli, "CHUNK_IDS", 97)
    ids = skewed_ids(gen, (60, 50), 700).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out"
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out), "--rare-max-count", "3"]) == 0
    counts, summary, weights = read_outputs(out)
    expected = np.bincount(ids.ravel())
    np.testing.assert_array_equal(counts, expected)
    assert summary == {**summary, **expected_summary(expected, 3), "dropped": 0, "format": "npy", "rare_max_count": 3}
    assert [count for _, count in summary["top"]] == sorted(expected, reverse=True)[:cli.TOP_IDS]
    assert all(expected[i] == count for i, count in summary["top"])
    seen = expected > 0
    inverse = 1 / expected[seen]
    assert weights["scheme"] == "inverse" and len(weights["weights"]) == expected.size
    np.testing.assert_allclose(np.array(weights["weights"])[seen], inverse / inverse.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.array(weights["weights"])[~seen], (inverse / inverse.mean()).max(), rtol=1e-5)
    assert (out / "zipf.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"total       {expected.sum():,} tokens" in printed and str(out / "zipf.png") in printed


@pytest.mark.parametrize("dtype, vocab", [("uint16", 50_000), ("uint32", 200_000)])
def test_count_raw_token_files(tmp_path, gen, monkeypatch, dtype, vocab):
    monkeypatch.setattr(cli, "CHUNK_IDS", 1000)
    parts = [skewed_ids(gen, 2500, vocab).astype(dtype), skewed_ids(gen, 1800, vocab).astype(dtype)]
    for index, part in enumerate(parts):
        part.tofile(tmp_path / f"train{index}.bin")
    out = tmp_path / "out"
    args = ["count", str(tmp_path / "train0.bin"), str(tmp_path / "train1.bin"), "--out", str(out), "--dtype", dtype]
    assert cli.main(args) == 0
    counts, summary, _ = read_outputs(out)
    expected = np.bincount(np.concatenate(parts).astype(np.int64))
    np.testing.assert_array_equal(counts, expected)
    assert summary == {**summary, **expected_summary(expected, 10), "format": "bin"}


def test_vocab_size_drops_ids_outside(tmp_path, gen, capsys):
    ids = skewed_ids(gen, 3000, 400)
    ids[::7] = -100
    np.save(tmp_path / "labels.npy", ids)
    vocab_size = int(torch.randint(50, 300, (1,), generator=gen))
    out = tmp_path / "out"
    assert cli.main(["count", str(tmp_path / "labels.npy"), "--vocab-size", str(vocab_size), "--out", str(out)]) == 0
    counts, summary, weights = read_outputs(out)
    kept = ids[(ids >= 0) & (ids < vocab_size)]
    np.testing.assert_array_equal(counts, np.bincount(kept, minlength=vocab_size))
    assert summary["dropped"] == ids.size - kept.size and len(weights["weights"]) == vocab_size
    assert f"({ids.size - kept.size:,} ids outside the vocabulary dropped)" in capsys.readouterr().out


def test_negative_ids_are_dropped_without_vocab_size(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([[3, -100, 1], [-100, 3, 0]]))
    assert cli.main(["count", str(tmp_path / "labels.npy"), "--out", str(tmp_path / "out")]) == 0
    counts, summary, _ = read_outputs(tmp_path / "out")
    assert counts.tolist() == [1, 1, 0, 2] and summary["dropped"] == 2


def test_count_text_builds_a_vocabulary(tmp_path, gen, monkeypatch):
    monkeypatch.setattr(cli, "CHUNK_IDS", 50)
    words = ["the", "sea", "wind", "cormorant", "brass", "naïve", "fog", "gale", "x"]
    split = [words[i] for i in (torch.rand(600, generator=gen) ** 3 * len(words)).long().tolist()]
    separators = ["  ", "\n", "\t", " \n "]
    for name, part in (("a.txt", split[:250]), ("b.txt", split[250:])):
        text = "".join(word + separators[i % 4] for i, word in enumerate(part))
        (tmp_path / name).write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["count", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(out)]) == 0
    counts, summary, _ = read_outputs(out)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == list(dict.fromkeys(split))
    assert dict(zip(vocab, counts.tolist())) == collections.Counter(split)
    assert summary["top"][0] == list(collections.Counter(split).most_common(1)[0])


def test_progress_bar_on_large_inputs_and_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    args = ["count", str(tmp_path / "train.bin"), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(args) == 0
    assert "counting" not in capsys.readouterr().err  # small input
    monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 1000)
    assert cli.main(args) == 0
    assert "counting" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file: no progress-bar lines
    assert cli.main(args) == 0
    assert "counting" not in capsys.readouterr().err


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    np.save(tmp_path / "ids.npy", np.array([0, 1, 1, 2]))
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "out")]) == 0
    error = capsys.readouterr().err
    assert "skipped zipf.png" in error and "pip install rarekit[plot]" in error
    assert not (tmp_path / "out" / "zipf.png").exists() and (tmp_path / "out" / "counts.npy").exists()


def write_bad_inputs(tmp_path):
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.5]))
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.int64))
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    (tmp_path / "ids.csv").write_text("1,2,3")
    (tmp_path / "words.txt").write_text("a b c")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    np.save(tmp_path / "ids.npy", np.array([1, 2]))


@pytest.mark.parametrize("args, message", [
    (["floats.npy"], "floats.npy: ids must have an integer dtype, got float64"),
    (["empty.npy"], "no ids in"),
    (["odd.bin"], "odd.bin: 3 bytes is not a whole number of uint16 ids"),
    (["ids.csv"], r"cannot tell the format of files ending in \['csv'\]; pass --format"),
    (["ids.npy", "words.txt"], r"FILEs must share one format, got \['npy', 'txt'\]"),
    (["words.txt", "--vocab-size", "10"], "--vocab-size 10 does not apply to txt"),
    (["latin1.txt"], "latin1.txt: 'utf-8' codec can't decode"),
    (["missing.npy"], "No such file"),
    (["ids.npy", "--vocab-size", "1"], r"no ids counted in .* \(2 read, all dropped\)"),
])
def test_count_errors_name_the_problem(tmp_path, monkeypatch, capsys, args, message):
    write_bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["count", *args, "--out", "out"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("rarekit count: error: ")
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [[], ["count"], ["count", "a.npy", "--vocab-size", "0"],
                                  ["count", "a.bin", "--dtype", "int8"], ["count", "a.npy", "--format", "csv"],
                                  ["frobnicate"]])
def test_bad_command_lines_exit_with_usage(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2 and "usage: rarekit" in capsys.readouterr().err


def shipped_corpus() -> str:
    return str(importlib.resources.files("rarekit.study") / "data" / "corpus.txt")


def test_counts_the_shipped_corpus(tmp_path, capsys):
    """The corpus `rarekit demo` starts with (the demo's study is tested in test_demo.py)."""
    out = tmp_path / "corpus"
    assert cli.main(["count", shipped_corpus(), "--out", str(out), "--rare-max-count",
                     str(cli.DEMO_RARE_MAX_COUNT)]) == 0
    words = (importlib.resources.files("rarekit.study") / "data" / "corpus.txt").read_text(encoding="utf-8").split()
    assert len(words) > 500
    counts, summary, _ = read_outputs(out)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert dict(zip(vocab, counts.tolist())) == collections.Counter(words)
    assert summary == {**summary, **expected_summary(counts, cli.DEMO_RARE_MAX_COUNT)}
    assert (out / "zipf.png").exists() and "singletons" in capsys.readouterr().out


def test_python_m_rarekit(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rarekit", "count", shipped_corpus(), "--out", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout and (tmp_path / "c" / "counts.npy").exists()


def test_huge_ids_without_vocab_size_ask_for_it(tmp_path, capsys):
    path = tmp_path / "ids.npy"
    np.save(path, np.array([1, 2, 2**40], dtype=np.int64))
    assert cli.main(["count", str(path), "--out", str(tmp_path / "out")]) == 1
    assert "--vocab-size" in capsys.readouterr().err
    np.save(path, np.array([1, 2**63 + 5], dtype=np.uint64))
    assert cli.main(["count", str(path), "--out", str(tmp_path / "out")]) == 1
    assert "does not fit in int64" in capsys.readouterr().err


FAKE_BENCH = '''"""A stand-in benchmark: one case, timed with common.py."""
import torch
from common import median_seconds, parse_args, report

args = parse_args(__doc__)
seconds = median_seconds(lambda: torch.ones(10).sum(), torch.device("cpu"), args.repeat)
report("fake", torch.device("cpu"), [{"case": "ones", "median_ms": {"torch.sum": seconds * 1e3}}], args.out)
'''


def fake_benchmarks(tmp_path):
    """A benchmarks folder with the real common.py and write_results.py and one quick benchmark."""
    import shutil

    source = Path(__file__).resolve().parent.parent / "benchmarks"
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name in ("common.py", "write_results.py"):
        shutil.copy(source / name, folder / name)
    (folder / "bench_fake.py").write_text(FAKE_BENCH)
    (folder / "RESULTS.md").write_text("# tracked figures\n")
    return folder


def test_bench_quick_writes_only_into_out_and_labels_smoke_figures(tmp_path, capsys):
    folder = fake_benchmarks(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["bench", "--quick", "--benchmarks", str(folder), "--out", str(out)]) == 0
    assert (folder / "RESULTS.md").read_text() == "# tracked figures\n"
    assert sorted(path.name for path in folder.iterdir() if path.name != "__pycache__") == [
        "RESULTS.md", "bench_fake.py", "common.py", "write_results.py"]
    assert json.loads((out / "fake-cpu.json").read_text())["quick"] is True
    results = (out / "RESULTS.md").read_text()
    assert "**Smoke figures**" in results and "## fake on cpu (smoke figures)" in results
    assert cli.main(["bench", "--quick", "--update-results", "--benchmarks", str(folder), "--out", str(out)]) == 1
    assert "--update-results with --quick" in capsys.readouterr().err
    assert cli.main(["bench", "--repeat", "2", "--update-results", "--benchmarks", str(folder), "--out", str(out)]) == 0
    tracked = (folder / "RESULTS.md").read_text()
    assert "## fake on cpu" in tracked and "moke" not in tracked


def test_count_refuses_to_overwrite_its_own_input(tmp_path, capsys):
    out = tmp_path / "out"
    np.save(tmp_path / "ids.npy", np.array([1, 2, 2]))
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    before = (out / "counts.npy").read_bytes()
    assert cli.main(["count", str(out / "counts.npy"), "--out", str(out)]) == 1
    assert "is an input and an output of --out" in capsys.readouterr().err
    assert (out / "counts.npy").read_bytes() == before


def test_outputs_in_the_folder_come_from_one_run(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "words.txt").write_text("a b b c")
    assert cli.main(["count", str(tmp_path / "words.txt"), "--out", str(out)]) == 0
    assert (out / "vocab.json").exists()
    np.save(tmp_path / "ids.npy", np.array([0, 1, 1]))
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["counts.npy", "summary.json", "weights.json", "zipf.png"]


def test_a_failed_write_keeps_the_earlier_output(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    np.save(tmp_path / "ids.npy", np.array([1, 2, 2]))
    assert cli.main(["count", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    real_save = np.save

    def disk_full(path, array, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x93NUMPY half")  # a partial write, then the error
        raise OSError(28, "No space left on device")

    real_save(tmp_path / "more.npy", np.array([3, 3]))
    monkeypatch.setattr(np, "save", disk_full)
    assert cli.main(["count", str(tmp_path / "more.npy"), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no half file, no temporary


@pytest.mark.parametrize("setup, args, message", [
    (lambda folder: (folder / "empty.npy").write_bytes(b""), ["empty.npy"],
     r"empty.npy: not a readable .npy file \(empty or truncated\?\)"),
    (lambda folder: (folder / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr'"), ["cut.npy"],
     "cut.npy: not a readable .npy file"),
    (lambda folder: np.save(folder / "ids.npy", np.array([1, 2])), ["ids.npy", "--vocab-size", "1099511627776"],
     r"--vocab-size 1,099,511,627,776 needs 24,576.0 GiB for its counts and weights, more than the .* GiB of memory"),
])
def test_bad_inputs_end_in_an_error_not_a_traceback(tmp_path, monkeypatch, capsys, setup, args, message):
    setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["count", *args, "--out", "out"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("rarekit count: error: ") and re.search(message, error), error
    assert "Traceback" not in error


@pytest.mark.parametrize("option, value", [("--rare-max-count", "1e30"), ("--rare-max-count", "ten"),
                                           ("--vocab-size", "-3")])
def test_non_integer_options_are_usage_errors(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["count", "ids.npy", option, value])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"rarekit count: error: argument {option}: must be a positive integer" in error
