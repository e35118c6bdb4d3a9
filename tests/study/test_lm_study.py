"""rarekit.study.lm: the corpus, the evaluation against a computation by hand, the memory probe on a
known allocation, and a shortened study run through ``rarekit demo --lm``."""
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("chatterbot_corpus")
pytest.importorskip("matplotlib")

from rarekit.study import lm as lm_study  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    return lm_study.load_corpus(seed=0)


def test_corpus_counts_and_vocabulary(corpus):
    vocab = len(corpus.vocab)
    assert corpus.vocab[:2] == [lm_study.UNK, lm_study.EOS] and len(set(corpus.vocab)) == vocab
    torch.testing.assert_close(corpus.counts, torch.bincount(corpus.train, minlength=vocab))
    assert (corpus.counts[2:] >= 2).all()  # words seen once in training are <unk>
    assert corpus.counts[0] > 0 and corpus.heldout.max() < vocab
    assert corpus.train.numel() > 20_000 and corpus.heldout.numel() > 5_000


def test_evaluation_matches_a_computation_by_hand(corpus):
    torch.manual_seed(0)
    model = lm_study.GRULanguageModel(len(corpus.vocab), embedding=16, hidden=16)
    metrics = lm_study.evaluate_lm(model, corpus, rows=64)
    streams = lm_study.batchify(corpus.heldout, 64)
    with torch.no_grad():
        logits = model.head(model.features(streams[:, :-1])[0]).reshape(-1, len(corpus.vocab))
    targets = streams[:, 1:].reshape(-1)
    assert metrics["perplexity"] == pytest.approx(math.exp(F.cross_entropy(logits, targets)), rel=1e-4)
    correct = logits.argmax(-1) == targets
    assert metrics["accuracy"] == pytest.approx(float(correct.float().mean()), abs=1e-6)
    rarest = torch.argsort(corpus.counts, stable=True)[: len(corpus.vocab) // 3]
    rare_rows = torch.isin(targets, rarest)
    assert metrics["rare_third_targets"] == int(rare_rows.sum())
    assert metrics["rare_third_recall"] == pytest.approx(float(correct[rare_rows].float().mean()), abs=1e-6)


def test_peak_memory_counts_a_known_allocation():
    elements = 1_000_000
    peak = lm_study.peak_cpu_memory(lambda: torch.ones(elements).sum())
    assert 4 * elements <= peak < 4 * elements + 65536


def test_shortened_study_through_the_cli(tmp_path, monkeypatch, capsys):
    from rarekit.cli import main

    shortened = functools.partial(lm_study.run_lm_study, epochs=1, max_steps=8, memory_shapes=())
    monkeypatch.setattr(lm_study, "run_lm_study", shortened)
    assert main(["demo", "--lm", "--no-progress", "--out", str(tmp_path)]) == 0
    out = tmp_path / "lm-study"
    study = json.loads((out / "results.json").read_text())
    results = study["results"]
    assert list(results) == ["plain CE", "rare-token weights (inverse sqrt)", "logit adjustment (tau=1)",
                             "weights + target-weighted smoothing (eps=0.1)"]
    vocab = study["corpus"]["vocab"]
    for metrics in results.values():
        assert 1 < metrics["perplexity"] < vocab  # better than a uniform guess after 8 steps
        assert 0 < metrics["accuracy"] < 1 and 0 <= metrics["rare_third_recall"] <= 1
        assert set(metrics["bucket_accuracy"]) <= set(lm_study.frequency_buckets(torch.tensor([1, 4 ** 8]))[1])
        assert sum(metrics["bucket_targets"].values()) == metrics["known_targets"]
    (memory,) = study["loss_step_memory"]  # the study's own shape
    assert memory["vocab"] == vocab and memory["peak_bytes"]["materialized"] >= memory["logits_bytes"]
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in results) and "rarest third" in report
    assert (out / "bucket-accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report:" in capsys.readouterr().out


def metrics(perplexity, recall, precision):
    return {"perplexity": perplexity, "rare_third_recall": recall, "rare_third_precision": precision,
            "rare_third_targets": 100}


def test_verdict_follows_the_numbers():
    results = {"plain CE": metrics(10.0, 0.0, None), "weights": metrics(12.0, 0.05, 0.2),
               "adjusted": metrics(20.0, 0.10, 0.01), "smoothing": metrics(10.5, 0.01, 0.3)}
    lines = lm_study.lm_verdict({"results": results})
    assert "one of them moves the rare-third recall by 0.0100" in lines[0]
    assert lines[1].startswith("- weights recalls more rare tokens than plain CE") and "+5 tokens" in lines[1]
    assert lines[3].startswith("- smoothing is no better on rare tokens than plain CE")  # +1 token: noise
    assert "adjusted recalls the most" in lines[-1] and "weights costs the least" in lines[-1]
    assert "+20% to +100%" in lines[-1] and "predicted by adjusted are mostly wrong" in lines[-1]
    free = lm_study.lm_verdict({"results": {**results, "weights": metrics(9.0, 0.05, 0.2)}})
    assert "weights helps at no perplexity cost" in free[-1]
    none = lm_study.lm_verdict({"results": {"plain CE": metrics(10.0, 0.02, 0.5), "weights": metrics(11.0, 0.03, 0.5)}})
    assert none[-1] == "In short: no method recalls measurably more rare tokens than plain CE here."
