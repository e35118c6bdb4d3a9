"""Tiny randomly initialised causal LMs of several families and batches for them, built from a config
(nothing is downloaded); shared by the integration tests."""
import torch

FUSED_VOCAB, HIDDEN = 96, 32  # HIDDEN != FUSED_VOCAB: a (..., FUSED_VOCAB) tensor can only be logits


def tiny_causal_lm(kind, seed, vocab=FUSED_VOCAB):
    """A randomly initialised 2-layer decoder of each family, without dropout, in eval mode."""
    import transformers

    small = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    configs = {
        "llama": lambda: transformers.LlamaConfig(**small),
        "qwen2": lambda: transformers.Qwen2Config(**small),
        "qwen3": lambda: transformers.Qwen3Config(**small, head_dim=8),
        "gemma2": lambda: transformers.Gemma2Config(**small, head_dim=8, final_logit_softcapping=2.0),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64,
                                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                bos_token_id=0, eos_token_id=0),
        "cohere": lambda: transformers.CohereConfig(**small, logit_scale=0.5),
    }
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(configs[kind]())
    return model.eval()


def lm_batch(gen, batch=2, length=9, vocab=FUSED_VOCAB):
    input_ids = torch.randint(0, vocab, (batch, length), generator=gen)
    labels = input_ids.clone()
    labels[torch.rand(batch, length, generator=gen) < 0.2] = -100
    labels[0, :3] = -100
    return input_ids, labels
