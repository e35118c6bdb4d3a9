"""`rarekit demo` on generated data: the report, its numbers, bad files, and the torchrun path."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from rarekit import cli, datasets

pytest.importorskip("sklearn")
pytest.importorskip("pandas")

WORDS = {"weather": "rain sun cloud wind storm snow", "sports": "goal match team score ball coach",
         "music": "song guitar drum melody band tune"}


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
            "focal (gamma=2)", "augment_minority + CE"} <= set(methods)
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

    from rarekit import demo

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
    assert "augment_minority + CE" not in study["results"] and len(study["results"]) == 5


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


def test_report_shows_augmented_rare_class_text(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", {"weather": 40, "sports": 16, "music": 8})
    assert run_demo("--data", data, "--text-col", "text", "--label-col", "label", "--out", tmp_path / "out") == 0
    (study,) = json.loads((tmp_path / "out" / "results.json").read_text())["studies"]
    example = study["augmentation_example"]
    assert example["class"] == "music" and len(example["variants"]) == 2
    assert all(variant != example["original"] for variant in example["variants"])
    assert set(" ".join(example["variants"]).split()) <= set(WORDS["music"].split())  # random_swap reorders words
    assert "augment_minority on the rarest class, 'music'" in (tmp_path / "out" / "report.md").read_text()
