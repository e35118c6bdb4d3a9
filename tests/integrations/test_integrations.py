"""rarekit.integrations.transformers: the causal-LM loss against a shift by hand and torch, and a
tiny randomly initialised model trained with it (nothing is downloaded)."""
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from rarekit.integrations.transformers import weighted_causal_lm_loss  # noqa: E402
from tiny_lms import FUSED_VOCAB, HIDDEN, lm_batch, tiny_causal_lm  # noqa: E402

VOCAB = 64


def by_hand(logits, labels, weight=None, num_items_in_batch=None, **kwargs):
    """Position t predicts labels[:, t + 1]; torch's cross-entropy on the flattened pairs."""
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    targets = labels[:, 1:].reshape(-1)
    if num_items_in_batch is None:
        return F.cross_entropy(predicted, targets, weight, ignore_index=-100, **kwargs)
    total = F.cross_entropy(predicted, targets, weight, ignore_index=-100, reduction="sum", **kwargs)
    return total / num_items_in_batch


def random_batch(gen, batch=3, length=11):
    logits = torch.randn(batch, length, VOCAB, generator=gen)
    labels = torch.randint(0, VOCAB, (batch, length), generator=gen)
    labels[torch.rand(batch, length, generator=gen) < 0.25] = -100
    labels[0, :4] = -100  # a "prompt"
    return logits, labels


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_a_shift_by_hand(gen, weighted, label_smoothing):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    logits, labels = random_batch(gen)
    weight = torch.rand(VOCAB, generator=gen) + 0.1 if weighted else None
    loss_fn = weighted_causal_lm_loss(weight, normalize="tokens", label_smoothing=label_smoothing)
    kept = int((labels[:, 1:] != -100).sum())
    for num_items in (None, kept, torch.tensor(kept + 5)):
        for wrap in (lambda x: CausalLMOutputWithPast(logits=x), lambda x: {"logits": x}, lambda x: (x,)):
            leaf = logits.clone().requires_grad_()
            ours = loss_fn(wrap(leaf), labels, num_items_in_batch=num_items)
            grad, = torch.autograd.grad(ours, leaf)
            expected_leaf = logits.clone().requires_grad_()
            expected = by_hand(expected_leaf, labels, weight, num_items, label_smoothing=label_smoothing)
            expected_grad, = torch.autograd.grad(expected, expected_leaf)
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
            assert grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_matches_transformers_own_loss_without_weights(gen):
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = random_batch(gen)
    loss_fn = weighted_causal_lm_loss()
    for num_items in (None, torch.tensor(17)):
        torch.testing.assert_close(loss_fn({"logits": logits}, labels, num_items_in_batch=num_items),
                                   ForCausalLMLoss(logits, labels, VOCAB, num_items_in_batch=num_items))


def test_half_logits_and_weights_on_the_logits_device(gen):
    logits, labels = random_batch(gen)
    weight = torch.rand(VOCAB, generator=gen, dtype=torch.float64) + 0.1
    ours = weighted_causal_lm_loss(weight)({"logits": logits.bfloat16()}, labels)
    assert ours.dtype == torch.float32  # upcast like transformers' own loss
    torch.testing.assert_close(ours, by_hand(logits.bfloat16().float(), labels, weight.float()), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(TypeError, match="reduction"):
        weighted_causal_lm_loss(reduction="sum")
    with pytest.raises(TypeError, match="floating-point"):
        weighted_causal_lm_loss(torch.ones(VOCAB, dtype=torch.int64))
    loss_fn = weighted_causal_lm_loss(torch.ones(VOCAB + 1))
    with pytest.raises(ValueError, match="classes"):
        loss_fn({"logits": torch.randn(2, 5, VOCAB)}, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        weighted_causal_lm_loss()({"logits": torch.randn(2, 5, VOCAB)}, None)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    from rarekit.integrations import transformers as integration

    with pytest.raises(ImportError, match=r"rarekit\[transformers\]"):
        weighted_causal_lm_loss()
    with pytest.raises(ImportError, match=r"rarekit\[transformers\]"):
        integration.fused_causal_lm_loss()
    for trainer in integration.TRAINERS:
        with pytest.raises(ImportError, match=r"rarekit\[transformers\]"):
            getattr(integration, trainer)


def tiny_llama(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def counting_sequences(gen, count, length=16):
    """Sequences start, start+1, ... (mod VOCAB): learnable in a few steps; the first 3 labels are a
    prompt (-100)."""
    starts = torch.randint(0, VOCAB, (count, 1), generator=gen)
    input_ids = (starts + torch.arange(length)) % VOCAB
    labels = input_ids.clone()
    labels[:, :3] = -100
    return input_ids, labels


def test_training_loop_lowers_the_weighted_loss(gen):
    model = tiny_llama(int(torch.randint(0, 2**31, (), generator=gen)))
    weight = torch.rand(VOCAB, generator=gen) + 0.5
    loss_fn = weighted_causal_lm_loss(weight, label_smoothing=0.05)
    input_ids, labels = counting_sequences(gen, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def evaluate():
        with torch.no_grad():
            return float(loss_fn(model(input_ids=input_ids), labels))

    before = evaluate()
    for step in range(40):
        rows = torch.randint(0, 64, (16,), generator=gen)
        batch_labels = labels[rows]
        loss = loss_fn(model(input_ids=input_ids[rows]), batch_labels,
                       num_items_in_batch=(batch_labels[:, 1:] != -100).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.5 * before, (before, after)


def test_trainer_uses_the_loss_and_lowers_it(gen, tmp_path):
    pytest.importorskip("accelerate")  # transformers.Trainer needs it
    from transformers import Trainer, TrainingArguments

    model = tiny_llama(int(torch.randint(0, 2**31, (), generator=gen)))
    loss_fn = weighted_causal_lm_loss(torch.rand(VOCAB, generator=gen) + 0.5, normalize="tokens")
    calls = []

    def spy(outputs, labels, num_items_in_batch=None):
        calls.append((labels.clone(), num_items_in_batch))
        return loss_fn(outputs, labels, num_items_in_batch=num_items_in_batch)

    input_ids, labels = counting_sequences(gen, 64)
    data = [{"input_ids": i, "labels": l} for i, l in zip(input_ids, labels)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                             per_device_train_batch_size=16, gradient_accumulation_steps=2, max_steps=12,
                             learning_rate=1e-2, logging_steps=1, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, compute_loss_func=spy)
    trainer.train()
    assert len(calls) == 24
    for _, num_items in calls:
        assert num_items is not None
    # transformers counts the kept shifted labels of both micro-batches of a step
    first_step = sum(int((batch_labels[:, 1:] != -100).sum()) for batch_labels, _ in calls[:2])
    assert int(calls[0][1]) == first_step
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


# --- fused_causal_lm_loss: the logits are never materialized ---------------------------------------------

def loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == theirs[1].keys()
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], rtol=1e-4, atol=1e-6, msg=name)


FAMILIES = ["llama", "gpt2", "qwen3", "gemma2"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_fused_loss_equals_the_models_own_loss(gen, kind):
    from rarekit.integrations.transformers import fused_causal_lm_loss

    model = tiny_causal_lm(kind, 1)
    if kind in ("gpt2", "gemma2"):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    input_ids, labels = lm_batch(gen)
    fused = fused_causal_lm_loss(chunk_size=5)
    for num_items in (None, torch.tensor(23)):
        extra = {} if num_items is None else {"num_items_in_batch": num_items}
        ours = loss_and_grads(model, lambda: fused(model, {"input_ids": input_ids, "labels": labels},
                                                   num_items_in_batch=num_items)[0])
        theirs = loss_and_grads(model, lambda: model(input_ids=input_ids, labels=labels, **extra).loss)
        assert_same(ours, theirs)


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_fused_loss_of_a_bf16_model_is_the_models_own_to_bf16_rounding(gen, kind):
    from rarekit.integrations.transformers import fused_causal_lm_loss

    model = tiny_causal_lm(kind, 7).to(torch.bfloat16)
    input_ids, labels = lm_batch(gen)
    with torch.no_grad():
        ours = fused_causal_lm_loss()(model, {"input_ids": input_ids, "labels": labels})[0]
        theirs = model(input_ids=input_ids, labels=labels).loss
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=2**-8, atol=0)


@pytest.mark.parametrize("kind", FAMILIES)
def test_fused_loss_with_class_weights_equals_the_weighted_loss_on_logits(gen, kind):
    from rarekit.integrations.transformers import fused_causal_lm_loss

    model = tiny_causal_lm(kind, 2)
    input_ids, labels = lm_batch(gen)
    weight = torch.rand(FUSED_VOCAB, generator=gen) + 0.2
    options = dict(label_smoothing=0.1, smoothing_mode="target_weighted", normalize="tokens")
    fused = fused_causal_lm_loss(weight, **options)
    materialized = weighted_causal_lm_loss(weight, **options)
    for num_items in (None, 17):
        ours = loss_and_grads(model, lambda: fused(model, {"input_ids": input_ids, "labels": labels},
                                                   num_items_in_batch=num_items)[0])
        theirs = loss_and_grads(model, lambda: materialized(model(input_ids=input_ids), labels,
                                                            num_items_in_batch=num_items))
        assert_same(ours, theirs)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    from_shift_labels = fused(model, {"input_ids": input_ids, "shift_labels": shifted})[0]
    torch.testing.assert_close(from_shift_labels, materialized(model(input_ids=input_ids), labels))


def test_fused_loss_never_materializes_the_logits(gen):
    """Every CPU allocation counted (torch's profiler): the fused loss step peaks below the size of the
    logits, the model's own loss step above it."""
    from rarekit.integrations.transformers import fused_causal_lm_loss
    from rarekit.study.lm import peak_cpu_memory

    vocab = 16384  # the logits (16 MiB) outweigh the model's activations and weight gradients (5 MiB)
    model = tiny_causal_lm("gemma2", 3, vocab=vocab)
    input_ids, labels = lm_batch(gen, batch=4, length=64, vocab=vocab)
    logits_bytes = input_ids.numel() * vocab * 4
    fused = fused_causal_lm_loss(torch.rand(vocab, generator=gen) + 0.5, chunk_size=8)
    fused_peak = peak_cpu_memory(lambda: fused(model, {"input_ids": input_ids, "labels": labels})[0].backward())
    own_peak = peak_cpu_memory(lambda: model(input_ids=input_ids, labels=labels).loss.backward())
    assert fused_peak < 0.6 * logits_bytes < logits_bytes < own_peak, (fused_peak, logits_bytes, own_peak)


def test_fused_loss_refuses_heads_it_cannot_reproduce(gen):
    from rarekit.integrations.transformers import fused_causal_lm_loss

    input_ids, labels = lm_batch(gen)
    batch = {"input_ids": input_ids, "labels": labels}
    cohere = tiny_causal_lm("cohere", 4)  # scales its logits after the head
    with pytest.raises(ValueError, match="CohereForCausalLM transforms the output of its LM head"):
        fused_causal_lm_loss()(cohere, batch)

    class ScaledLinear(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = tiny_causal_lm("llama", 5)
    head = model.lm_head
    model.lm_head = ScaledLinear(HIDDEN, FUSED_VOCAB, bias=False)
    with pytest.raises(TypeError, match="plain torch.nn.Linear.*ScaledLinear"):
        fused_causal_lm_loss()(model, batch)
    model.lm_head = head
    handle = head.register_forward_hook(lambda module, args, output: output * 2)
    with pytest.raises(TypeError, match="with hooks"):
        fused_causal_lm_loss()(model, batch)
    handle.remove()
    with pytest.raises(ValueError, match="labels"):
        fused_causal_lm_loss()(model, {"input_ids": input_ids})
    with pytest.raises(TypeError, match="'softcap' is set by the loss"):
        fused_causal_lm_loss(softcap=3.0)
    with pytest.raises(TypeError, match="unexpected keywords"):
        fused_causal_lm_loss(inplace_backward=True)
    with pytest.raises(ValueError, match="classes"):
        fused_causal_lm_loss(torch.ones(FUSED_VOCAB + 1))(model, batch)
    assert model.lm_head is head  # restored after the failed calls too


def test_fused_trainer_trains_as_the_trainer_with_the_models_own_loss(gen, tmp_path):
    """3 optimizer steps with 2 accumulated micro-batches each: the same losses, weights and evaluation
    loss as the plain Trainer with the model's own labels= loss (Gemma 2: tied head, soft-capping)."""
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from rarekit.integrations.transformers import FusedCausalLMTrainer, fused_causal_lm_loss

    input_ids, labels = lm_batch(gen, batch=24, length=12)
    data = [{"input_ids": i, "labels": l} for i, l in zip(input_ids, labels)]
    finished = {}
    for name, make in (("fused", lambda model, args: FusedCausalLMTrainer(
                            model=model, args=args, train_dataset=data, eval_dataset=data[:8],
                            fused_loss=fused_causal_lm_loss(chunk_size=7))),
                       ("own", lambda model, args: Trainer(model=model, args=args, train_dataset=data,
                                                           eval_dataset=data[:8]))):
        args = TrainingArguments(output_dir=str(tmp_path / name), use_cpu=True, report_to=[], save_strategy="no",
                                 per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                                 optim="sgd", learning_rate=0.5, logging_steps=1, disable_tqdm=True, seed=0)
        trainer = make(tiny_causal_lm("gemma2", 6), args)  # SGD: Adam's m/√v would blow float noise up near 0
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        losses.append(trainer.evaluate()["eval_loss"])
        finished[name] = losses, {key: value.clone() for key, value in trainer.model.state_dict().items()}
    assert len(finished["fused"][0]) == 3 + 1
    torch.testing.assert_close(finished["fused"][0], finished["own"][0], rtol=1e-4, atol=1e-5)
    for key, value in finished["own"][1].items():
        torch.testing.assert_close(finished["fused"][1][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert finished["fused"][1]["model.embed_tokens.weight"].ne(tiny_causal_lm("gemma2", 6).model.embed_tokens.weight).any()
