"""Contextual augmentation throughput (texts/s): rarekit's batched RareAugmenter against nlpaug one text
at a time.

The masked LM is a tiny random-weight BERT (2 layers, hidden 128, a WordPiece vocabulary of the words
of rarekit's demo corpus) that this script writes into a temporary folder: nothing is downloaded.
The texts are the corpus's sentences. Contenders, each substituting (then inserting) ~15 % of the words
with top_k=100:

- rarekit.RareAugmenter("contextual"), batch_size 64, all texts in one call;
- nlpaug ContextualWordEmbsAug, stock, one text per call: its fill-mask pipeline path
  (use_custom_api=False), the path that works on transformers 5. Each pipeline call (one per changed
  word) starts a DataLoader worker process (nlpaug passes num_workers=1), so it takes ~0.1-1 s per
  text: it is timed on the first STOCK_TEXTS texts and its time scaled to all of them;
- nlpaug ContextualWordEmbsAug on rarekit's compatibility model (rarekit.augment.contextual_word_embs_aug),
  all texts in one call (nlpaug's own batching, one mask position per forward pass).
"""
import importlib.resources
import os
import re
import sys
import tempfile
import warnings

import torch

from common import median_seconds, parse_args, report

STOCK_TEXTS = 16


def build_tiny_bert(folder: str) -> list[str]:
    """Writes the model and tokenizer into ``folder``; returns the corpus sentences."""
    import transformers

    corpus = (importlib.resources.files("rarekit.study") / "data" / "corpus.txt").read_text(encoding="utf-8")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(corpus.split())) if len(s.split()) >= 5]
    words = sorted({word.lower() for word in re.findall(r"\w+", corpus)})
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,;:!?'\"-") + words + list(letters) + \
        ["##" + c for c in letters] + ["##s", "##ed", "##ing", "##ly"]
    with open(os.path.join(folder, "vocab.txt"), "w") as handle:
        handle.write("\n".join(dict.fromkeys(vocab)) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=256, max_position_embeddings=128)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    transformers.BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    return sentences


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    try:
        import nlpaug.augmenter.word as naw
        import transformers
    except ImportError as error:
        print(f"bench_augment: skipped, needs `pip install rarekit[augment]` ({error})")
        return
    from rarekit.augment import RareAugmenter, contextual_word_embs_aug

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    num_texts = (2048 if device.type == "cuda" else 256) // (4 if args.quick else 1)
    stock_texts = 2 if args.quick else STOCK_TEXTS  # ~0.1-1 s each: a smoke test times two
    cases = []
    with tempfile.TemporaryDirectory() as folder:
        sentences = build_tiny_bert(folder)
        texts = (sentences * (num_texts // len(sentences) + 1))[:num_texts]
        for action in ("substitute",) if args.quick else ("substitute", "insert"):  # a smoke test: one action
            ours = RareAugmenter("contextual", model_path=folder, action=action, aug_p=0.15, device=device.type,
                                 batch_size=64, top_k=100, seed=0)
            stock = naw.ContextualWordEmbsAug(model_path=folder, model_type="bert", action=action, aug_p=0.15,
                                              top_k=100, device=device.type, use_custom_api=False, force_reload=True)
            compat = contextual_word_embs_aug(folder, action=action, aug_p=0.15, top_k=100, device=device.type,
                                              batch_size=64)
            times = {
                "rarekit batched": median_seconds(lambda: ours.augment(texts), device, args.repeat),
                "nlpaug stock, one at a time": median_seconds(
                    lambda: [stock.augment(text) for text in texts[:stock_texts]], device, max(1, args.repeat // 2),
                    warmup=1) * num_texts / min(stock_texts, num_texts),
                "nlpaug + rarekit compat, batched": median_seconds(lambda: compat.augment(texts), device, args.repeat),
            }
            cases.append({
                "case": f"{action}, {num_texts} sentences of {sum(map(len, texts)) / len(texts):.0f} chars, tiny BERT",
                "median_ms": {name: seconds * 1e3 for name, seconds in times.items()},
                "ratios": {f"speed-up vs {name}": seconds / times["rarekit batched"]
                           for name, seconds in times.items() if name != "rarekit batched"},
                "texts_per_second": {name: num_texts / seconds for name, seconds in times.items()},
                "nlpaug stock timed on": f"the first {min(stock_texts, num_texts)} texts, scaled",
            })
    report("augment", device, cases, args.out)


if __name__ == "__main__":
    sys.exit(main())
