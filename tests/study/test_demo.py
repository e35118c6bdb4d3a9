"""`rarekit demo` on generated data: the report, its numbers, bad files, and the torchrun path."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from rarekit import cli
from rarekit.study import datasets, report as demo_report, text as demo_text

pytest.importorskip("sklearn")
pytest.importorskip("pandas")

WORDS = {"weather": "rain sun cloud wind storm snow", "sports": "goal match team score ball coach",
         "music": "song guitar drum melody band tune"}


@pytest.fixture(autouse=True)
def fewer_kernel_timings(monkeypatch):
    monkeypatch.setattr(demo_report, "KERNEL_REPEATS", 3)


def write_csv(path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for label, size in sizes.items():
        vocabulary = WORDS[label].split()
        rows += [" ".join(rng.choice(vocabulary, 6)) + f",{label}" for _ in range(size)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run_demo(*args):
    return cli.main(["demo", "--epochs", "2", "--no-progress", *map(str, args)])


def test_text_data_report(tmp_path, capsys):
    data = write_csv(tmp_path / "reviews.csv", {"weather": 60, "sports": 20, "music": 8})
    out = tmp_path / "out"
    assert run_demo("--data", data, "--text-col", "text", "--label-col", "label", "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    (study,) = results["studies"]
    assert study["data"]["train_counts"] == {"music": 6, "sports": 15, "weather": 45}  # 25 % of each class tested
    methods = study["results"]
    assert {"plain CE", "weighted CE (effective number)", "balanced sampler", "logit adjustment (tau=1)",
            "focal (gamma=2)", "LDAM-DRW", "augment_minority + CE"} <= set(methods)
    for metrics in methods.values():
        assert 0.0 <= metrics["macro_f1"] <= 1.0 and len(metrics["per_class_recall"]) == 3
        assert metrics["train_seconds"] > 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in methods) and "macro-F1" in printed
    report = (out / "report.md").read_text()
    assert "Does rarekit beat plain CE on the rare classes?" in report and "Kernel speed" in report
    assert list(out.glob("recall-*.png")) and list(out.glob("label-frequencies-*.png"))


def test_metrics_match_sklearn_on_the_predictions():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    import torch

    from rarekit.study import demo

    class Fixed(torch.nn.Module):  # predicts a given class per row
        def __init__(self, predicted):
            super().__init__()
            self.predicted = predicted

        def forward(self, x):
            return torch.nn.functional.one_hot(self.predicted, 3).float()

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)
    predicted = np.where(rng.random(50) < 0.7, y, rng.integers(0, 3, 50))
    metrics = demo.evaluate(Fixed(torch.as_tensor(predicted)), np.zeros((50, 1), np.float32), y,
                            np.array([30, 5, 12]), "cpu")
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert metrics["rare_third_accuracy"] == pytest.approx((predicted[y == 1] == 1).mean())  # class 1 is rarest


def test_array_data(tmp_path):
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], [40, 12, 4])
    x = rng.normal(size=(len(y), 5)) + y[:, None]
    np.savez(tmp_path / "arrays.npz", X=x, y=y)
    assert run_demo("--data", tmp_path / "arrays.npz", "--out", tmp_path / "out") == 0
    (study,) = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]
    assert "augment_minority + CE" not in study["results"] and len(study["results"]) == 6


@pytest.mark.parametrize("content,args,message", [
    ("text,label\nrain sun,weather\n", ["--text-col", "body", "--label-col", "label"], "no column 'body'"),
    ("", ["--text-col", "text", "--label-col", "label"], "empty"),
    ("text,label\nrain,weather\nsun,weather\nsnow,weather\n", ["--text-col", "text", "--label-col", "label"],
     "at least two classes"),
    ("text,label\nrain,weather\n", [], "needs --text-col and --label-col"),
])
def test_bad_text_files(tmp_path, capsys, content, args, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    assert run_demo("--data", path, "--out", tmp_path / "out", *args) == 1
    assert message in capsys.readouterr().err


def test_bad_array_files(tmp_path, capsys):
    np.savez(tmp_path / "text.npz", X=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    assert run_demo("--data", tmp_path / "text.npz", "--out", tmp_path / "out") == 1
    assert "must be numeric" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", X=np.zeros((4, 2)))
    assert run_demo("--data", tmp_path / "nolabels.npz", "--out", tmp_path / "out") == 1
    assert "missing ['y']" in capsys.readouterr().err
    assert run_demo("--data", tmp_path / "absent.npz", "--out", tmp_path / "out") == 1
    assert "no such file" in capsys.readouterr().err


def bad_npz_files(folder):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 3)), np.repeat([0, 1], 6)
    (folder / "empty.npz").write_bytes(b"")
    np.savez(folder / "whole.npz", X=x, y=y)
    whole = (folder / "whole.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    np.save(folder / "array.npy", x)
    (folder / "array.npy").rename(folder / "array.npz")
    x_nan = x.copy()
    x_nan[7, 1] = np.nan
    np.savez(folder / "nan-features.npz", X=x_nan, y=y)
    np.savez(folder / "nan-labels.npz", X=x, y=np.where(np.arange(12) == 3, np.nan, y.astype(float)))


@pytest.mark.parametrize("name, message", [
    ("empty.npz", "empty.npz is not a readable .npz file"),
    ("truncated.npz", "truncated.npz is not a readable .npz file"),
    ("array.npz", "holds a single .npy array, not an .npz archive"),
    ("nan-features.npz", "X in nan-features.npz holds NaN or infinite values (1 of them; the first in row 7)"),
    ("nan-labels.npz", "y in nan-labels.npz holds NaN or infinite values"),
])
def test_broken_npz_files_end_in_an_error_not_a_traceback(tmp_path, capsys, name, message):
    bad_npz_files(tmp_path)
    assert run_demo("--data", tmp_path / name, "--out", tmp_path / "out") == 1
    error = capsys.readouterr().err
    assert error.startswith("rarekit demo: error: --data: ") and message in error and "Traceback" not in error


def test_digits_are_made_long_tailed_and_the_test_split_stays_balanced():
    split = datasets.digits_long_tailed(imbalance_ratio=50.0)
    train_counts = np.bincount(split.y_train)
    assert np.all(np.diff(train_counts) <= 0) and 40 <= train_counts[0] / train_counts[-1] <= 60
    test_counts = np.bincount(split.y_test)
    assert test_counts.max() - test_counts.min() <= 2


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_torchrun_ddp(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    data = write_csv(tmp_path / "reviews.csv", {"weather": 40, "sports": 16, "music": 8})
    result = subprocess.run(
        [torchrun if os.path.exists(torchrun) else "torchrun", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "rarekit", "demo", "--ddp", "--epochs", "1", "--no-progress", "--data", str(data),
         "--text-col", "text", "--label-col", "label", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (study,) = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]
    assert study["data"]["train_counts"] == {"music": 6, "sports": 12, "weather": 30}
    assert "balanced sampler" in study["results"]
    # the global batch and the step count of the single-process run: 1 epoch of 48 samples, 64 a step
    assert study["batch_size"] == 64 and study["steps"] == 1


def test_report_shows_augmented_text_of_a_rare_class_with_test_samples_changes_marked(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", {"weather": 40, "sports": 16, "music": 8})
    assert run_demo("--data", data, "--text-col", "text", "--label-col", "label", "--out", tmp_path / "out") == 0
    (study,) = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]
    example = study["augmentation_example"]
    assert example["class"] == "music" and example["test_samples"] == 2 and len(example["variants"]) == 2
    assert all(variant != example["original"] for variant in example["variants"])
    words = " ".join(example["variants"]).lower().split()
    assert set(words) <= set(WORDS["music"].split())  # random_swap reorders words (and may capitalize one)
    for variant, marked in zip(example["variants"], example["marked_variants"]):
        assert marked.replace("**", "") == variant and "**" in marked
    report = (tmp_path / "out" / "report.md").read_text()
    assert "augment_minority on 'music', the rarest class with test samples" in report
    assert example["marked_variants"][0] in report
    # the budget: at most 4 variants per text, up to the majority count (30 training texts)
    assert study["generated_per_class"] == [min(30 - 6, 4 * 6), min(30 - 12, 4 * 12), 0]  # music, sports, weather
    assert "| generated |" in report


def test_marked_changes():
    assert demo_text.marked_changes("a b c d", "a c b d") == "a **c** **b** d"
    assert demo_text.marked_changes("a b c d", "a b d") == "a b ~~c~~ d"
    assert demo_text.marked_changes("a b", "a x b y") == "a **x** b **y**"


def test_augmentation_budget_caps_per_text_and_in_all():
    counts = np.array([1000, 300, 40, 3])
    assert demo_text.planned_gains(counts, demo_text.AugmentationBudget(per_text=4, total=10**6)).tolist() == \
        [0, 700, 160, 12]
    capped = demo_text.planned_gains(counts, demo_text.AugmentationBudget(per_text=4, total=436))
    assert capped.tolist() == [0, 350, 80, 6] and capped.sum() <= 436


def test_class_without_test_samples_reads_na_and_macro_metrics_leave_it_out(tmp_path):
    from sklearn.metrics import f1_score

    data = write_csv(tmp_path / "reviews.csv", {"weather": 40, "sports": 16, "music": 1})
    out = tmp_path / "out"
    assert run_demo("--data", data, "--text-col", "text", "--label-col", "label", "--out", out) == 0
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    assert study["data"]["train_counts"]["music"] == 1
    music = study["class_names"].index("music")
    for metrics in study["results"].values():
        assert metrics["per_class_recall"][music] is None
        tested = [r for r in metrics["per_class_recall"] if r is not None]
        assert metrics["balanced_accuracy"] == pytest.approx(np.mean(tested))
    report = (out / "report.md").read_text()
    assert "| music | 1 | 0 | n/a (no test samples) |" in report and "`labels=`" in report
    # evaluate's macro-F1 is scikit-learn's with labels= the tested classes
    from rarekit.study import demo

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()

    y = np.array([0, 1, 1, 0])  # class 2 has no test sample but is predicted
    metrics = demo.evaluate(Fixed(), np.zeros((4, 1), np.float32), y, np.array([5, 5, 1]), "cpu")
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, [0, 2, 1, 2], labels=[0, 1], average="macro"))
    assert metrics["per_class_recall"] == [0.5, 0.5, None]


def test_timing_verdict_says_within_noise_when_spreads_overlap():
    assert demo_report.compare([1.0, 1.2, 1.1], [3.0, 3.3, 2.9])["verdict"] == "2.73x faster"
    assert demo_report.compare([3.0, 3.3, 2.9], [1.0, 1.2, 1.1])["verdict"] == "2.73x slower"
    assert demo_report.compare([1.0, 2.0, 1.5], [1.9, 2.5, 2.2])["verdict"] == "within noise"


def test_report_states_timings_load_and_n_train(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", {"weather": 30, "sports": 12, "music": 8})
    out = tmp_path / "out"
    assert run_demo("--data", data, "--text-col", "text", "--label-col", "label", "--out", out) == 0
    report = (out / "report.md").read_text()
    assert "Load average (1, 5, 15 min)" in report and "| n train | n test |" in report
    assert f"Median and min-max of {demo_report.KERNEL_REPEATS} runs" in report
    results = json.loads((out / "results.json").read_text())
    for figures in results["kernel_speed"].values():
        assert figures["rarekit"]["min_ms"] <= figures["rarekit"]["median_ms"] <= figures["rarekit"]["max_ms"]
        assert figures["verdict"] == "within noise" or figures["verdict"].endswith(("faster", "slower"))
    assert len(results["machine"]["load_before"]) == 3


def test_label_frequency_plot_has_dataset_name_class_names_and_classes_legend(tmp_path):
    pytest.importorskip("matplotlib")
    import rarekit

    counts = torch.tensor([5, 40, 0, 12])
    names = ["cat", "dog", "eel", "fox"]
    figure = rarekit.plot_frequencies(counts, tmp_path / "f.png", names=names, unit="classes",
                                      title="Training label frequencies: pets.csv")
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["dog", "fox", "cat"]
    assert axes.get_title() == "Training label frequencies: pets.csv"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["3 classes"]
    many = rarekit.plot_frequencies(torch.arange(1, 200), tmp_path / "g.png", names=[str(i) for i in range(199)],
                                    unit="classes")
    assert many.axes[0].get_xlabel() == "rank of the classes" and (tmp_path / "g.png").exists()


def test_no_progress_bars_off_a_terminal(tmp_path, capsys):
    data = write_csv(tmp_path / "reviews.csv", {"weather": 30, "sports": 12, "music": 8})
    assert cli.main(["demo", "--epochs", "2", "--data", str(data), "--text-col", "text", "--label-col", "label",
                     "--out", str(tmp_path / "out")]) == 0
    error = capsys.readouterr().err
    assert "it/s" not in error and "%|" not in error


def test_over_budget_methods_are_skipped_with_the_reason_and_the_report_is_written(tmp_path, monkeypatch):
    from rarekit.study import demo

    monkeypatch.setattr(demo, "check_feasible", lambda *args: None)
    monkeypatch.setattr(demo, "CALIBRATION_STEPS", 1)
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [60, 20, 8])
    np.savez(tmp_path / "arrays.npz", X=rng.normal(size=(len(y), 4)), y=y)
    out = tmp_path / "out"
    assert run_demo("--data", tmp_path / "arrays.npz", "--out", out, "--time-budget", "1e-9") == 0
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    assert study["results"] == {} and len(study["skipped"]) == len(demo.methods(text=False)) == 6
    assert all("over the --time-budget of 1e-09 s" in reason for reason in study["skipped"].values())
    assert "| plain CE | skipped: " in (out / "report.md").read_text()


def many_classes_npz(path, classes, rows_per_class=4, seed=4):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), rows_per_class)
    np.savez(path, X=rng.normal(size=(len(y), 8)) + y[:, None] % 5, y=y)
    return path


def test_too_many_classes_for_the_budget_are_refused_up_front_with_an_estimate(tmp_path, capsys):
    data = many_classes_npz(tmp_path / "wide.npz", 300)
    assert run_demo("--data", data, "--out", tmp_path / "out", "--time-budget", "0.001") == 1
    error = capsys.readouterr().err
    assert "300 classes" in error and "would train ~" in error and "--force" in error
    assert not (tmp_path / "out" / "results.json").exists()


def test_many_classes_with_force_keep_plots_bounded_and_write_the_report(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    data = many_classes_npz(tmp_path / "wide.npz", 300)
    out = tmp_path / "out"
    assert run_demo("--data", data, "--out", out, "--time-budget", "0.001", "--force", "--epochs", "1") == 0
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    assert len(study["results"]["plain CE"]["per_class_recall"]) == 300
    recall = image.imread(next(out.glob("recall-*.png")))
    assert recall.shape[1] <= 20 * 110  # 60 classes drawn at most: 18 inches at 110 dpi
    report = (out / "report.md").read_text()
    assert "... 240 classes ..." in report  # the per-class table is cut too
    assert report.count("\n| ") < 120


def test_outputs_in_the_folder_come_from_one_run(tmp_path):
    out = tmp_path / "out"
    (out / "corpus-count").mkdir(parents=True)
    for stale in ("corpus-count/vocab.json", "corpus-count/counts.npy", "recall-old-data.png",
                  "label-frequencies-old-data.png"):
        (out / stale).write_text("from an earlier run")
    (out / "notes.txt").write_text("the user's")
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], [40, 12, 4])
    np.savez(tmp_path / "arrays.npz", X=rng.normal(size=(len(y), 5)) + y[:, None], y=y)
    assert run_demo("--data", tmp_path / "arrays.npz", "--out", out) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "label-frequencies-arrays-npz.png", "notes.txt", "recall-arrays-npz.png", "report.md", "results.json"]


def test_ddp_without_torchrun_fails_before_counting(tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["demo", "--ddp", "--out", str(tmp_path / "out")]) == 1
    assert "--ddp needs torchrun" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def long_tailed_texts(path, classes=50, documents=20_000, imbalance=2000.0, seed=0):
    """A 50-class text set with an exponential long tail (n_c ∝ imbalance^(-c/(K-1))): Zipf-drawn
    shared words plus a few words of each class."""
    rng = np.random.default_rng(seed)
    profile = imbalance ** -(np.arange(classes) / (classes - 1))
    sizes = np.maximum(2, np.round(profile / profile.sum() * documents)).astype(int)
    labels = np.repeat(np.arange(classes), sizes)
    shared = (rng.zipf(1.3, (len(labels), 40)) - 1) % 30_000
    own = rng.integers(0, 20, (len(labels), 4))
    rows = ["text,label"] + [" ".join([f"w{i}" for i in shared[d]] + [f"t{labels[d]}x{j}" for j in own[d]])
                             + f",topic{labels[d]:02d}" for d in range(len(labels))]
    path.write_text("\n".join(rows) + "\n")
    return sizes


SCALE_CHILD = """
import resource, sys
import torch, scipy.sparse, sklearn.feature_extraction.text, rarekit.study.demo  # the libraries' own mappings first
status = open("/proc/self/status").read()
baseline = int(status.split("VmSize:")[1].split()[0]) * 1024
limit = baseline + {limit}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from rarekit.cli import main
code = main(sys.argv[1:])
print("baseline_vm", baseline, "peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(code)
"""


def test_text_data_at_scale_within_4_gib(tmp_path):
    """50 classes, 20k documents, over 1000:1: every method, the report, under an address-space limit.

    A plain ``import torch`` of a CUDA build maps ~3.5 GiB of address space (libraries, reserved
    regions) while using ~0.9 GB of memory, so RLIMIT_AS = 4 GiB would leave the run ~0.5 GiB. The
    limit is therefore set after the imports, to what is mapped then plus 4 GiB: every allocation of
    the run must fit in 4 GiB. The peak resident memory of the whole process is checked against
    4 GiB too. One epoch keeps the test short."""
    sizes = long_tailed_texts(tmp_path / "topics.csv")
    assert len(sizes) == 50 and sizes.sum() >= 19_900 and sizes.max() / sizes.min() >= 1000
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", SCALE_CHILD.format(limit=4 << 30), "demo", "--data", str(tmp_path / "topics.csv"),
         "--text-col", "text", "--label-col", "label", "--out", str(out), "--epochs", "1", "--augment-max", "3000"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = result.stdout.split()
    peak_rss = int(figures[figures.index("peak_rss") + 1])
    assert peak_rss < 4 << 30
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    assert study["data"]["classes"] == 50 and len(study["results"]) == 7 and not study["skipped"]
    assert 0 < sum(study["generated_per_class"]) <= 3000
    assert (out / "report.md").exists() and "it/s" not in result.stderr
