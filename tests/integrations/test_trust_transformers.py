"""Issue 20 on rarekit.integrations.transformers: TrainingArguments.label_smoothing_factor, inplace_backward
that never overwrites the caller's logits, torch's weighted mean over the accumulated batch in the
Trainer, and install hint / static names. Each is checked against transformers' Trainer or torch."""
import ast
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import rarekit.integrations.transformers as integration  # noqa: E402
from rarekit.integrations.transformers import fused_causal_lm_loss, weighted_causal_lm_loss  # noqa: E402
from tiny_lms import FUSED_VOCAB, lm_batch, tiny_causal_lm  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def training_args(tmp_path, name, **overrides):
    from transformers import TrainingArguments

    options = dict(output_dir=str(tmp_path / name), use_cpu=True, report_to=[], save_strategy="no",
                   per_device_train_batch_size=4, per_device_eval_batch_size=8, gradient_accumulation_steps=2,
                   optim="sgd", learning_rate=0.5, logging_steps=1, disable_tqdm=True, seed=0)
    return TrainingArguments(**{**options, **overrides})


def as_dataset(input_ids, labels):
    return [{"input_ids": i, "labels": l} for i, l in zip(input_ids, labels)]


def make_trainer(kind, model, args, data, loss=None, **extra):
    """The plain Trainer ("own": the model's labels= loss or its LabelSmoother), or rarekit's."""
    from transformers import Trainer

    if kind == "own":
        return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, **extra)
    if kind == "fused":
        return integration.FusedCausalLMTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                                                fused_loss=loss or fused_causal_lm_loss(chunk_size=7), **extra)
    return integration.WeightedCausalLMTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                                               compute_loss_func=loss or weighted_causal_lm_loss(), **extra)


# --- item 1: TrainingArguments.label_smoothing_factor -----------------------------------------------------

def test_rarekit_trainers_smooth_labels_as_the_trainer(gen, tmp_path):
    """label_smoothing_factor=0.3: the loss and weights of an SGD step over 2 accumulated micro-batches,
    and the evaluation loss, equal the plain Trainer's (its LabelSmoother, which is torch's smoothing)."""
    pytest.importorskip("accelerate")
    input_ids, labels = lm_batch(gen, batch=8, length=10)
    data = as_dataset(input_ids, labels)
    finished = {}
    for kind in ("own", "fused", "weighted"):
        trainer = make_trainer(kind, tiny_causal_lm("llama", 11), training_args(
            tmp_path, kind, label_smoothing_factor=0.3, max_steps=1, learning_rate=2.0), data)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        losses.append(trainer.evaluate()["eval_loss"])
        finished[kind] = torch.tensor(losses), {key: value.clone() for key, value in trainer.model.state_dict().items()}
    with torch.no_grad():  # the plain Trainer's evaluation loss is torch's smoothed cross-entropy
        logits = trainer.model(input_ids=input_ids).logits[:, :-1].reshape(-1, FUSED_VOCAB)
    smoothed, plain = (F.cross_entropy(logits, labels[:, 1:].reshape(-1), label_smoothing=smoothing)
                       for smoothing in (0.3, 0.0))
    torch.testing.assert_close(finished["own"][0][-1], smoothed, rtol=1e-5, atol=1e-6)
    assert abs(smoothed - plain) > 1e-3
    for kind in ("fused", "weighted"):
        torch.testing.assert_close(finished[kind][0], finished["own"][0], rtol=1e-4, atol=1e-5)
        for key, value in finished["own"][1].items():
            torch.testing.assert_close(finished[kind][1][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_label_smoothing_of_the_loss_and_of_the_arguments_must_agree(gen, tmp_path):
    pytest.importorskip("accelerate")
    data = as_dataset(*lm_batch(gen, batch=4))
    args = training_args(tmp_path, "conflict", label_smoothing_factor=0.3, max_steps=1)
    model = tiny_causal_lm("llama", 12)
    with pytest.raises(ValueError, match="label_smoothing_factor = 0.3 and the loss's label_smoothing = 0.1"):
        make_trainer("fused", model, args, data, fused_causal_lm_loss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="label_smoothing_factor = 0.3 and the loss's label_smoothing = 0.1"):
        make_trainer("weighted", model, args, data, weighted_causal_lm_loss(label_smoothing=0.1))
    same = fused_causal_lm_loss(label_smoothing=0.3)
    trainer = make_trainer("fused", model, args, data, same)
    assert trainer.fused_loss.keywords["label_smoothing"] == 0.3
    assert "label_smoothing" not in fused_causal_lm_loss().keywords  # the caller's loss is not changed


# --- item 2: inplace_backward never overwrites the caller's logits -----------------------------------------

def logits_from_a_graph(gen, dtype, batch=3, length=7):
    """(base, logits, labels): logits computed from a leaf, so they are not a leaf themselves."""
    base = torch.randn(batch, length, FUSED_VOCAB, generator=gen).requires_grad_()
    labels = torch.randint(0, FUSED_VOCAB, (batch, length), generator=gen)
    labels[0, :2] = -100
    return base, (base * 1.5).to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_keeps_the_models_logits_and_the_gradient(gen, monkeypatch, dtype):
    """float32 logits are the caller's and stay as they are; the float32 upcast of bf16 logits is the
    loss's own, and there the gradient is still written in place. The gradient is torch's either way."""
    from rarekit import ops

    weight = torch.rand(FUSED_VOCAB, generator=gen) + 0.5
    calls = []
    inplace = ops.cross_entropy_inplace
    monkeypatch.setattr(ops, "cross_entropy_inplace",
                        lambda *args, **kwargs: calls.append(1) or inplace(*args, **kwargs))
    base, logits, labels = logits_from_a_graph(gen, dtype)
    seen = logits.detach().clone()
    loss = weighted_causal_lm_loss(weight, inplace_backward=True)({"logits": logits}, labels)
    grad, = torch.autograd.grad(loss, base)
    assert torch.equal(logits.detach(), seen)
    assert len(calls) == (dtype != torch.float32)
    expected_base = base.detach().clone().requires_grad_()
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    expected = F.cross_entropy((expected_base * 1.5).to(dtype).float().reshape(-1, FUSED_VOCAB), shifted, weight)
    expected_grad, = torch.autograd.grad(expected, expected_base)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_does_nothing_in_place_without_a_backward(gen, dtype):
    base, logits, labels = logits_from_a_graph(gen, dtype)
    loss_fn = weighted_causal_lm_loss(inplace_backward=True)
    with torch.no_grad():
        seen = logits.clone()
        loss = loss_fn({"logits": logits}, labels)
        assert torch.equal(logits, seen)
        torch.testing.assert_close(loss, weighted_causal_lm_loss()({"logits": logits}, labels))
    detached = logits.detach()  # grad mode on, logits that require no grad
    torch.testing.assert_close(loss_fn({"logits": detached}, labels), loss)
    assert torch.equal(detached, seen)


def test_trainer_evaluate_hands_compute_metrics_the_models_logits(gen, tmp_path):
    pytest.importorskip("accelerate")
    input_ids, labels = lm_batch(gen, batch=6, length=8)
    data = as_dataset(input_ids, labels)
    model = tiny_causal_lm("llama", 13)
    with torch.no_grad():
        expected_logits = model(input_ids=input_ids).logits
    received = []

    def compute_metrics(prediction):
        received.append(torch.as_tensor(prediction.predictions))
        return {"received": 1.0}

    from transformers import Trainer

    args = training_args(tmp_path, "evaluate", per_device_eval_batch_size=3)
    trainer = Trainer(model=model, args=args, eval_dataset=data, compute_metrics=compute_metrics,
                      compute_loss_func=weighted_causal_lm_loss(torch.rand(FUSED_VOCAB, generator=gen) + 0.5,
                                                                inplace_backward=True))
    metrics = trainer.evaluate()
    assert metrics["eval_received"] == 1.0
    torch.testing.assert_close(received[0], expected_logits, rtol=1e-5, atol=1e-6)


# --- item 16: torch's weighted mean over the accumulated batch ---------------------------------------------

def gradient_of(model, loss_of_logits, input_ids):
    model.zero_grad(set_to_none=True)
    loss = loss_of_logits(model(input_ids=input_ids).logits)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,normalize", [("weighted", "weights"), ("fused", "weights"), ("fused", "tokens")])
def test_trainer_gradient_with_class_weights_and_accumulation(gen, tmp_path, kind, normalize):
    """One SGD step (lr 1, no clipping) over 2 accumulated micro-batches of 4 rows: the step is the
    gradient of torch's weighted mean cross-entropy over the 8 rows (normalize="weights") or of
    Σ w·loss / number of kept targets ("tokens"); the evaluation loss on the 8 rows, before the step,
    is that loss."""
    pytest.importorskip("accelerate")
    input_ids, labels = lm_batch(gen, batch=8, length=9)
    weight = torch.rand(FUSED_VOCAB, generator=gen) * 4 + 0.1
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)

    def torch_loss(logits):
        flat = logits.float().reshape(-1, FUSED_VOCAB)
        if normalize == "weights":
            return F.cross_entropy(flat, shifted, weight)
        return F.cross_entropy(flat, shifted, weight, reduction="sum") / (shifted != -100).sum()

    before = tiny_causal_lm("gemma2" if kind == "fused" else "llama", 14).train()
    expected_loss, expected = gradient_of(before, torch_loss, input_ids)
    option = {} if normalize == "weights" else {"normalize": normalize}  # "weights" is the default
    loss = (fused_causal_lm_loss(weight, chunk_size=5, **option) if kind == "fused"
            else weighted_causal_lm_loss(weight, **option))
    trainer = make_trainer(kind, tiny_causal_lm("gemma2" if kind == "fused" else "llama", 14),
                           training_args(tmp_path, kind, learning_rate=1.0, max_grad_norm=0.0, max_steps=1),
                           as_dataset(input_ids, labels), loss)
    torch.testing.assert_close(torch.tensor(trainer.evaluate()["eval_loss"]), expected_loss, rtol=1e-5, atol=1e-6)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name, gradient in expected.items():
        step = before.get_parameter(name).detach() - after[name].detach()
        torch.testing.assert_close(step, gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_plain_trainer_with_accumulation_refuses_the_weighted_mean(gen, tmp_path):
    """A plain Trainer counts tokens, not Σ w_y: with accumulation the loss raises, naming the fix."""
    pytest.importorskip("accelerate")
    from transformers import Trainer

    input_ids, labels = lm_batch(gen, batch=8, length=9)
    trainer = Trainer(model=tiny_causal_lm("llama", 15), args=training_args(tmp_path, "plain", max_steps=1),
                      train_dataset=as_dataset(input_ids, labels),
                      compute_loss_func=weighted_causal_lm_loss(torch.rand(FUSED_VOCAB, generator=gen) + 0.5))
    with pytest.raises(ValueError, match="WeightedCausalLMTrainer.*normalize='tokens'"):
        trainer.train()


def test_a_whole_batch_count_gives_torchs_weighted_mean(gen):
    """num_items_in_batch equal to this batch's kept targets (no accumulation): torch's weighted mean."""
    logits = torch.randn(3, 8, FUSED_VOCAB, generator=gen)
    labels = torch.randint(0, FUSED_VOCAB, (3, 8), generator=gen)
    labels[1, 3:] = -100
    weight = torch.rand(FUSED_VOCAB, generator=gen) + 0.1
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    expected = F.cross_entropy(logits.reshape(-1, FUSED_VOCAB), shifted, weight)
    for count in ((shifted != -100).sum(), int((shifted != -100).sum()), (shifted != -100).sum().float()):
        ours = weighted_causal_lm_loss(weight)({"logits": logits}, labels, num_items_in_batch=count)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_weight_sum_is_gathered_across_processes_as_the_trainer_gathers_tokens(gen, tmp_path, monkeypatch):
    """average_tokens_across_devices on 2 processes (gather simulated): Σ w_y of both processes' batches."""
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    weight = torch.rand(FUSED_VOCAB, generator=gen) + 0.1
    own = [lm_batch(gen, batch=2)[1] for _ in range(2)]
    other = [lm_batch(gen, batch=2)[1] for _ in range(2)]
    args = training_args(tmp_path, "gather", average_tokens_across_devices=True, max_steps=1)
    trainer = make_trainer("fused", tiny_causal_lm("llama", 16), args, as_dataset(*lm_batch(gen, batch=4)),
                           fused_causal_lm_loss(weight))

    def kept(labels):
        return labels[:, 1:][labels[:, 1:] != -100]

    other_tokens = sum(len(kept(labels)) for labels in other)
    other_weights = sum(weight.double()[kept(labels)].sum() for labels in other)
    gathered = {1: torch.tensor([other_tokens]), 2: torch.stack([torch.tensor(float(other_tokens)), other_weights])}
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    monkeypatch.setattr(trainer.accelerator, "gather",
                        lambda tensor: torch.cat([tensor.reshape(-1), gathered[tensor.numel()].to(tensor.dtype)]))
    count = trainer._get_num_items_in_batch([{"labels": labels} for labels in own], torch.device("cpu"))
    expected = sum(weight.double()[kept(labels)].sum() for labels in own + other)
    torch.testing.assert_close(count, expected.float(), rtol=1e-6, atol=0)


def test_normalize_is_checked():
    with pytest.raises(ValueError, match="normalize must be one of"):
        weighted_causal_lm_loss(normalize="mean")
    with pytest.raises(ValueError, match="normalize must be one of"):
        fused_causal_lm_loss(normalize="tokens ")


# --- item 20: install hint and static names ----------------------------------------------------------------

def test_install_hint_names_the_extra_that_installs_the_trainer():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = re.findall(r"rarekit\[(\w+)\]", integration.INSTALL_HINT)
    assert named, integration.INSTALL_HINT
    for extra in named:
        packages = {re.split(r"[<>=!~ ;\[]", requirement)[0] for requirement in extras[extra]}
        assert {"transformers", "accelerate"} <= packages, (extra, extras[extra])


def test_trainers_are_static_names_and_importing_the_module_leaves_transformers_out():
    """mypy and IDEs read `if TYPE_CHECKING:` imports and class statements; at run time the module
    imports transformers only when a Trainer is used."""
    tree = ast.parse((ROOT / "rarekit/integrations/transformers.py").read_text())
    checked = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    imported = {alias.name for node in checked for statement in node.body if isinstance(statement, ast.ImportFrom)
                and statement.module == "rarekit.integrations._trainers" for alias in statement.names}
    assert set(integration.TRAINERS) <= imported <= set(integration.__all__)
    classes = {node.name for node in ast.parse((ROOT / "rarekit/integrations/_trainers.py").read_text()).body
               if isinstance(node, ast.ClassDef)}
    assert set(integration.TRAINERS) <= classes
    code = "import sys, rarekit.integrations.transformers\nprint('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"], result.stderr
    from transformers import Trainer

    for name in integration.TRAINERS:
        assert issubclass(getattr(integration, name), Trainer) and name in dir(integration)
