"""`rarekit demo` regressions of issue 20: options it ignored, rows it dropped silently, outputs a failed
run destroyed, errors that did not say what is wrong with the data, its augmentation budget, and its plots."""
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
