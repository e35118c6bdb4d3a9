"""rarekit.integrations.transformers: the causal-LM loss against a shift by hand and torch, and a
tiny randomly initialised model trained with it (nothing is downloaded)."""
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from rarekit.integrations.transformers import weighted_causal_lm_loss  # noqa: E402

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
    loss_fn = weighted_causal_lm_loss(weight, label_smoothing=label_smoothing)
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
    with pytest.raises(ImportError, match=r"rarekit\[augment\]"):
        weighted_causal_lm_loss()


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
    loss_fn = weighted_causal_lm_loss(torch.rand(VOCAB, generator=gen) + 0.5)
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
