"""`rarekit demo` regressions of issue 20: options it ignored, rows it dropped silently, outputs a failed
run destroyed, errors that did not say what is wrong with the data, its augmentation budget, and its plots."""
import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rarekit import cli
from rarekit.study import lm as lm_study


class StudyStarted(Exception):
    """Raised by a stand-in for a study: the run got past its checks."""


@pytest.fixture
def lm_calls(monkeypatch):
    """The keywords ``rarekit demo --lm`` hands the LM study (which then stops)."""
    calls = []

    def record(**keywords):
        calls.append(keywords)
        raise StudyStarted

    monkeypatch.setattr(lm_study, "run_lm_study", record)
    return calls


@pytest.mark.parametrize("options", [
    ["--data", "x.csv"], ["--text-col", "text"], ["--label-col", "label"], ["--time-budget", "5"], ["--force"],
    ["--batch-size", "8"], ["--augmenter", "random_swap"], ["--augment-max", "10"], ["--max-features", "10"],
    ["--mlm", "model"], ["--data", "x.csv", "--text-col", "text", "--label-col", "label"]])
def test_lm_refuses_the_options_of_the_classification_study(tmp_path, capsys, lm_calls, options):
    assert cli.main(["demo", "--lm", "--no-progress", "--out", str(tmp_path / "out"), *options]) == 1
    error = capsys.readouterr().err
    flags = [option for option in options if option.startswith("--")]
    assert error.startswith("rarekit demo: error: " + ", ".join(flags)) and "not apply to --lm" in error
    assert lm_calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, epochs, threads", [([], lm_study.DEFAULT_EPOCHS, 1),
                                                   (["--epochs", "2", "--train-threads", "3"], 2, 3)])
def test_lm_takes_epochs_and_threads(tmp_path, lm_calls, argv, epochs, threads):
    with pytest.raises(StudyStarted):
        cli.main(["demo", "--lm", "--no-progress", "--seed", "5", "--out", str(tmp_path), *argv])
    (keywords,) = lm_calls
    assert (keywords["epochs"], keywords["threads"], keywords["seed"], keywords["progress"]) == (epochs, threads, 5,
                                                                                                 False)


@pytest.fixture
def fewer_kernel_timings(monkeypatch):
    from rarekit.study import report

    monkeypatch.setattr(report, "KERNEL_REPEATS", 1)


WORDS = {"weather": "rain sun cloud wind storm snow", "sports": "goal match team score ball coach"}


def csv_rows(sizes, seed=0):
    """``(text, label)`` rows: six words of each label's vocabulary."""
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(WORDS[label].split(), 6)), label) for label, size in sizes.items()
            for _ in range(size)]


def test_rows_without_text_or_label_are_counted_and_reported(tmp_path, capsys, fewer_kernel_timings):
    pytest.importorskip("sklearn")
    pd = pytest.importorskip("pandas")
    rows = csv_rows({"weather": 40, "sports": 20})
    no_text, no_label, neither = {3, 7, 11, 30, 45}, {4, 8, 50}, {9, 55}
    table = pd.DataFrame(rows, columns=["text", "label"])
    table.loc[sorted(no_text | neither), "text"] = None
    table.loc[sorted(no_label | neither), "label"] = None
    table.to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "out"
    assert cli.main(["demo", "--epochs", "1", "--no-progress", "--data", str(tmp_path / "data.csv"), "--text-col",
                     "text", "--label-col", "label", "--out", str(out)]) == 0
    kept = 60 - len(no_text | no_label | neither)
    note = (f"data.csv: {60 - kept} of 60 rows left out ({len(no_text | neither)} without a text in column 'text'; "
            f"{len(no_label | neither)} without a label in column 'label'); the study uses the other {kept}")
    assert note in capsys.readouterr().out
    assert note in (out / "report.md").read_text()
    (study,) = json.loads((out / "results.json").read_text())["studies"]
    assert study["data"]["train"] + study["data"]["test"] == kept and study["data"]["notes"] == [note]


def test_a_file_without_a_complete_row_is_refused(tmp_path, capsys):
    pytest.importorskip("pandas")
    (tmp_path / "data.csv").write_text("text,label\nrain sun,\n,sports\n")
    assert cli.main(["demo", "--data", str(tmp_path / "data.csv"), "--text-col", "text", "--label-col", "label",
                     "--out", str(tmp_path / "out")]) == 1
    assert ("no row of data.csv has both a text and a label (1 without a text in column 'text'; 1 without a label "
            "in column 'label')") in capsys.readouterr().err


def snapshot(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("data, argv", [
    ("", ["--text-col", "text", "--label-col", "label"]),  # an empty file
    ("text,label\nrain sun,weather\n", ["--text-col", "body", "--label-col", "label"]),  # a wrong column
    (None, ["--time-budget", "1e-6"]),  # the built-in data, refused as over the budget after the corpus count
])
def test_a_failed_demo_leaves_the_earlier_outputs_as_they_were(tmp_path, capsys, data, argv):
    pytest.importorskip("sklearn")
    pytest.importorskip("pandas")
    out = tmp_path / "out"
    (out / "corpus-count").mkdir(parents=True)
    for name in ("corpus-count/counts.npy", "corpus-count/vocab.json", "corpus-count/zipf.png", "report.md",
                 "results.json", "recall-old.png"):
        (out / name).write_text(f"{name} of an earlier run")
    before = snapshot(out)
    if data is not None:
        (tmp_path / "data.csv").write_text(data)
        argv = ["--data", str(tmp_path / "data.csv"), *argv]
    assert cli.main(["demo", "--no-progress", "--out", str(out), *argv]) == 1
    assert capsys.readouterr().err.startswith("rarekit demo: error: ")
    assert snapshot(out) == before


@pytest.mark.parametrize("argv, hidden, package", [
    ([], "sklearn", "scikit-learn"), ([], "chatterbot_corpus", "chatterbot-corpus"),
    (["--data", "x.npz"], "sklearn", "scikit-learn"),
    (["--data", "x.csv", "--text-col", "t", "--label-col", "l"], "pandas", "pandas"),
    (["--lm"], "chatterbot_corpus", "chatterbot-corpus"), (["--lm"], "matplotlib", "matplotlib")])
def test_a_missing_extra_is_named_before_any_work(tmp_path, monkeypatch, capsys, argv, hidden, package):
    monkeypatch.setitem(sys.modules, hidden, None)  # as if not installed
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--no-progress", "--out", "out", *argv]) == 1
    assert capsys.readouterr().err == (f"rarekit demo: error: this demo needs {package}, not installed: "
                                       "pip install rarekit[demo]\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", [None, "x.npz"])
def test_column_options_without_a_text_file_are_refused(tmp_path, capsys, data):
    argv = [] if data is None else ["--data", str(tmp_path / data)]
    assert cli.main(["demo", "--out", str(tmp_path / "out"), "--text-col", "text", *argv]) == 1
    assert "--text-col and --label-col name the columns of a --data text file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("text,label\nrain sun,weather\ngoal match,sports\nsong drum,music\n",
     "data.csv: each of its 3 classes has a single row, so none can be tested: a class needs two rows or more"),
    ("text,label\na b c,x\nb c d,x\nc d e,y\nd e f,y\ne f g,y\n",
     "data.csv: no training text holds a word of two or more letters or digits"),
])
def test_data_the_study_cannot_use_is_refused_with_the_reason(tmp_path, capsys, content, message):
    pytest.importorskip("sklearn")
    pytest.importorskip("pandas")
    (tmp_path / "data.csv").write_text(content)
    assert cli.main(["demo", "--no-progress", "--data", str(tmp_path / "data.csv"), "--text-col", "text",
                     "--label-col", "label", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith(f"rarekit demo: error: {message}")
    assert not (tmp_path / "out").exists()


def test_arrays_with_one_row_per_class_are_refused_with_the_reason(tmp_path, capsys):
    np.savez(tmp_path / "data.npz", X=np.eye(4), y=np.arange(4))
    assert cli.main(["demo", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("rarekit demo: error: --data: data.npz: each of its 4 classes has a "
                                              "single row, so none can be tested")


class ClockedAugmenter:
    """Takes 1 ms of a fake clock per character of each variant it makes, and records the texts' lengths;
    ``max_chars`` as RareAugmenter's (it changes only a text's head of that many characters)."""

    def __init__(self, max_chars=10**9):
        self.now, self.lengths, self.max_chars = 0.0, [], max_chars

    def perf_counter(self):
        return self.now

    def augment(self, texts, n=1):
        self.lengths += [len(text) for text in texts]
        self.now += 1e-3 * n * sum(len(text) for text in texts)
        return [[text] * n for text in texts]


def long_text_split(long_characters):
    """Class 0: 40 texts of 50 characters; class 1: 4 texts, the first ``long_characters`` long."""
    from rarekit.study.datasets import Split

    texts = ["x" * long_characters] + ["y" * 50] * 3 + ["z" * 50] * 40
    y = np.array([1] * 4 + [0] * 40)
    return Split("long.csv", texts, y, texts[:2], y[:2], ["short", "long"])


def test_augmentation_timing_is_bounded_and_counts_a_long_text_at_its_length(monkeypatch):
    from rarekit.study import text

    augmenter = ClockedAugmenter()
    monkeypatch.setattr(text.time, "perf_counter", augmenter.perf_counter)
    budget = text.AugmentationBudget(per_text=4, total=1000, seconds=5.0)
    characters = 16 * (6_000_000 + 3 * 50) / 4  # 16 variants of class 1's texts, of their mean length
    with pytest.raises(text.OverBudget, match=f"generating 16 texts from {characters:,.0f} characters would take "
                                              f"~{1e-3 * characters:.0f} s"):
        text.augment_within_budget(long_text_split(6_000_000), augmenter, budget, seed=0, progress=False)
    assert max(augmenter.lengths) <= text.SAMPLE_CHARS  # the 6 MB text was never handed over whole
    assert augmenter.now <= text.SAMPLE_SHARE * 5.0 + 1e-3 * text.SAMPLE_CHARS * text.SAMPLE_BATCH


def test_projected_augmentation_time_follows_the_characters_of_each_class(monkeypatch):
    from rarekit.study import text

    augmenter = ClockedAugmenter()
    monkeypatch.setattr(text.time, "perf_counter", augmenter.perf_counter)
    split = long_text_split(1_000)
    gains = np.array([0, 16])
    seconds, characters, timed = text.projected_seconds(split, gains, augmenter, float("inf"), seed=0)
    class_one = [len(t) for t, label in zip(split.x_train, split.y_train) if label == 1]
    assert characters == pytest.approx(16 * np.mean(class_one)) and timed == 4
    assert seconds == pytest.approx(1e-3 * characters)  # the fake clock's rate, 1 ms a character


def test_projected_augmentation_time_counts_what_the_augmenter_changes(monkeypatch):
    from rarekit.study import text

    augmenter = ClockedAugmenter(max_chars=10_000)  # RareAugmenter changes the head of a long text only
    monkeypatch.setattr(text.time, "perf_counter", augmenter.perf_counter)
    seconds, characters, _ = text.projected_seconds(long_text_split(6_000_000), np.array([0, 16]), augmenter,
                                                    float("inf"), seed=0)
    assert characters == pytest.approx(16 * (10_000 + 3 * 50) / 4) and seconds == pytest.approx(1e-3 * characters)


def test_the_example_text_is_cut_at_a_word_before_it_is_augmented():
    from rarekit.study import text

    augmenter = ClockedAugmenter()
    words = [f"word{i}" for i in range(100_000)]  # 0.7 MB
    split = text.Split("long.csv", [" ".join(words)] + ["short text"] * 9, np.array([1] + [0] * 9),
                       ["a", "b"], np.array([0, 1]), ["many", "few"])
    example = text.augmentation_example(split, augmenter)
    original = example["original"]
    assert len(original) <= text.EXAMPLE_CHARS and max(augmenter.lengths) <= text.EXAMPLE_CHARS
    assert original.split() == words[:len(original.split())]  # whole words, from the start
    assert example["original_characters"] == len(split.x_train[0])


def test_examples_shown_are_cut_at_a_word_with_an_ellipsis(capsys):
    from types import SimpleNamespace

    from rarekit.study import report

    words = [f"w{i:03d}" for i in range(200)]
    original = " ".join(words)
    variant = " ".join(words[:1] + ["**" + words[2] + "**", "**" + words[1] + "**"] + words[3:])
    example = {"class": "few", "training_samples": 3, "test_samples": 1, "original": original,
               "original_characters": 5000, "marked_variants": [variant, variant]}
    study = SimpleNamespace(split=SimpleNamespace(name="long.csv", notes=[]), results={}, skipped={},
                            augmentation_example=example, generated_per_class=None)
    report.print_summary([study], {}, Path("out"), "")
    printed = capsys.readouterr().out
    shown = printed.split("augmented class 'few': ")[1].split("\n")[0]
    for part in shown.split(" -> "):
        text = ast.literal_eval(part)  # each shown string is printed as its repr
        assert text.endswith(" …") and len(text) <= 82
        assert set(text[:-2].replace("**", "").split()) <= set(words)  # whole words only
    settings = SimpleNamespace(augmentation=SimpleNamespace(per_text=4, total=100))
    lines = report.augmentation_lines(study, settings)
    shown = [line for line in lines if line.startswith("- ")]
    assert shown[0].startswith(f"- original (the first {len(original):,} of its 5,000 characters): w000 w001")
    for line in shown:
        assert line.endswith(" …") and all(word.strip("*") in words for word in line.split(": ", 1)[1][:-2].split())


METHODS = ["plain CE", "weighted CE (effective number)", "balanced sampler", "logit adjustment (tau=1)",
           "focal (gamma=2)", "augment_minority + CE"]


@pytest.mark.parametrize("names, counts", [
    ([str(digit) for digit in range(10)], [139, 80, 45, 26, 15, 9, 5, 3, 3, 2]),  # the default digits demo
    (["a", "b", "c"], [5, 3, 1]),
    (["customer complaint about billing", "shipping delay", "refund request", "other"], [300, 40, 12, 0]),
    ([f"topic{i}" for i in range(12)], list(range(1200, 0, -100))),
    ([f"a rather long topic name number {i}" for i in range(30)], list(range(300, 0, -10))),
])
def test_recall_plot_labels_do_not_overlap(tmp_path, names, counts):
    pytest.importorskip("matplotlib")
    from rarekit.study.plots import plot_class_recall

    rng = np.random.default_rng(0)
    recalls = {method: [None if count == 0 else float(value) for value, count in zip(rng.random(len(names)), counts)]
               for method in METHODS}
    figure = plot_class_recall(recalls, counts, names, tmp_path / "recall.png", title="data.csv")
    figure.draw_without_rendering()  # the layout of the saved image
    boxes = sorted((label.get_window_extent() for label in figure.axes[0].get_xticklabels()), key=lambda box: box.x0)
    assert len(boxes) == len(names)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, (left, right)
    for box in boxes:
        assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and figure.bbox.y0 <= box.y0


@pytest.mark.parametrize("options", [["--augmenter", "random_swap"], ["--augment-max", "10"],
                                     ["--augment-per-text", "2", "--max-features", "100"], ["--mlm", "model"]])
def test_text_options_with_array_data_are_refused(tmp_path, capsys, options):
    np.savez(tmp_path / "data.npz", X=np.eye(6), y=np.arange(6) % 2)
    assert cli.main(["demo", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out"), *options]) == 1
    flags = ", ".join(option for option in options if option.startswith("--"))
    assert capsys.readouterr().err.startswith(f"rarekit demo: error: {flags} do")
    assert not (tmp_path / "out").exists()


def test_a_masked_lm_without_the_contextual_augmenter_is_refused(tmp_path, capsys):
    assert cli.main(["demo", "--mlm", "model", "--augmenter", "random_swap", "--out", str(tmp_path / "out")]) == 1
    assert "--mlm is the model of --augmenter contextual" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
