"""The demo's LDAM-DRW method (issue 21 section 4): LDAM margins from the training counts, class-balanced
weights from a step threshold (the switch is tested directly on the training loop), and the margins and
the switch step in results.json and report.md."""
import inspect
import json
import math

import numpy as np
import pytest
import torch

import rarekit
from rarekit import cli
from rarekit.study import demo, report as demo_report
from rarekit.study.datasets import Split

pytest.importorskip("sklearn")

needs_target_margin = pytest.mark.skipif(
    "target_margin" not in inspect.signature(rarekit.cross_entropy).parameters,
    reason="LDAMLoss runs on cross_entropy(target_margin=), which the margin branch adds")


def ldam_drw():
    (method,) = [method for method in demo.methods(text=False) if method.name == "LDAM-DRW"]
    return method


def test_ldam_drw_is_a_demo_method_with_margins_from_the_counts_and_late_class_balanced_weights():
    counts = torch.tensor([300, 120, 40, 9, 2])
    method = ldam_drw()
    assert "LDAM-DRW" in [m.name for m in demo.methods(text=True)]
    loss = method.make_loss(counts)
    assert isinstance(loss, rarekit.LDAMLoss) and loss.weight is None
    margins = counts.double() ** -0.25
    torch.testing.assert_close(loss.margins, (0.5 * margins / margins.max()).float())
    beta = 0.9999  # Cao et al.'s DRW: effective-number weights, normalized to mean 1
    raw = (1 - beta) / (1 - beta ** counts.double())
    torch.testing.assert_close(method.make_late_weight(counts), (raw / raw.mean()).float())
    assert 0.75 <= method.reweight_from <= 0.8  # the last 20-25 % of the steps
    assert method.reweight_step(210) == math.ceil(method.reweight_from * 210)


class RecordingLoss(rarekit.CrossEntropyLoss):
    """Plain CE that records the class weights each step trains with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, input, target):
        self.seen.append(None if self.weight is None else self.weight.clone())
        return super().forward(input, target)


def test_deferred_reweighting_switches_the_weights_at_the_threshold_step():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [20, 8, 4])
    x = rng.normal(size=(len(y), 3)).astype(np.float32)
    late = torch.tensor([0.5, 1.0, 1.5])
    recording = RecordingLoss()
    method = demo.Method("probe", lambda counts: recording, reweight_from=0.75,
                         make_late_weight=lambda counts: late)
    settings = demo.Settings(epochs=2, seed=0, device=torch.device("cpu"), progress=False, batch_size=8)
    assert settings.total_steps(len(y)) == 8
    model, loss_fn, seconds = demo.train(method, x, y, 3, settings)
    assert loss_fn is recording and seconds > 0 and len(recording.seen) == 8
    assert recording.seen[:6] == [None] * 6  # steps 0-5: unweighted
    assert all(torch.equal(weight, late) for weight in recording.seen[6:])  # from step ceil(0.75 * 8) = 6 on
    unchanged = demo.Method("plain", lambda counts: RecordingLoss())
    assert unchanged.reweight_step(8) is None
    _, plain, _ = demo.train(unchanged, x, y, 3, settings)
    assert plain.seen == [None] * 8


def test_report_lists_the_margins_per_class_and_the_switch_step():
    split = Split("toy", None, np.repeat([0, 1, 2], [30, 6, 2]), None, np.array([0, 1, 2]), ["a", "b", "c"])
    recall = [1.0, 0.5, 0.0]
    base = {"per_class_recall": recall, "macro_f1": 0.5, "balanced_accuracy": 0.5, "rare_third_accuracy": 0.0,
            "rare_third_test_samples": 1, "train_seconds": 0.1}
    margins = rarekit.ldam_margins(torch.tensor([30, 6, 2])).tolist()
    study = demo.Study(split, False, results={"plain CE": base, "LDAM-DRW": {
        **base, "margins": margins, "reweighted_from_step": 80}}, steps=100)
    rows = demo_report.per_class_table(study)
    assert rows[0] == "| class | n train | n test | plain CE | LDAM-DRW | margin (LDAM-DRW) |"
    assert rows[2] == f"| a | 30 | 1 | 1.00 | 1.00 | {margins[0]:.3f} |"
    assert rows[4] == "| c | 2 | 1 | 0.00 | 0.00 | 0.500 |"
    (note, blank) = demo_report.method_notes(study)
    assert note.startswith(f"LDAM-DRW: LDAM margins m_c ∝ n_c^(-1/4) from {min(margins):.3f} (the most frequent "
                           "class) to 0.500 (the rarest") and note.endswith("class weights from step 80 of 100.")
    assert blank == "" and demo_report.method_notes(demo.Study(split, False, results={"plain CE": base})) == []


@needs_target_margin
def test_demo_run_reports_ldam_drw_with_its_margins(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_report, "KERNEL_REPEATS", 3)
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2, 3], [80, 30, 12, 8])
    np.savez(tmp_path / "arrays.npz", X=rng.normal(size=(len(y), 6)) + y[:, None], y=y)
    out = tmp_path / "out"
    assert cli.main(["demo", "--epochs", "2", "--no-progress", "--data", str(tmp_path / "arrays.npz"),
                     "--out", str(out)]) == 0
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    ldam = study["results"]["LDAM-DRW"]
    train_counts = torch.tensor(list(study["data"]["train_counts"].values()), dtype=torch.float64)
    expected = train_counts ** -0.25
    np.testing.assert_allclose(ldam["margins"], 0.5 * expected / expected.max(), rtol=1e-6)
    assert ldam["reweighted_from_step"] == math.ceil(0.8 * study["steps"])
    assert 0 <= ldam["macro_f1"] <= 1 and len(ldam["per_class_recall"]) == 4
    report = (out / "report.md").read_text()
    assert "| LDAM-DRW | " in report and "margin (LDAM-DRW)" in report and "- LDAM-DRW " in report
