"""A masked language model that fills whole words: rarekit's batched ``"contextual"`` augmentation on
transformers 4.x or 5.x (:class:`MaskedLM`), and the option checks shared with the nlpaug factory."""
from __future__ import annotations

import functools
import importlib
import math
import os
import re

import torch

from rarekit.counting import is_integer


EXTRA = "pip install rarekit[augment]"
WORD_RE = re.compile(r"\w+(?:['’]\w+)*")  # a word: letters/digits, apostrophes inside ("don't")
DEFAULT_MAX_TOKENS = 512
ANCHOR_TEXT = "a"  # decoded in front of every vocabulary token to tell word starts from continuations
HUB_DOWNLOAD = "hf download {name} --local-dir FOLDER"


def import_optional(module: str, purpose: str):
    """``importlib.import_module(module)``; if it (or what it imports) is missing, an ImportError that
    names the ``rarekit[augment]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}, which could not be imported ({error}); "
                          f"install it with `{EXTRA}`") from error


def check_model_options(top_k, batch_size) -> None:
    """ValueError unless ``top_k`` is a positive integer or None and ``batch_size`` a positive integer."""
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def as_device(device) -> torch.device:
    """``device`` (a str, torch.device or CUDA index) as a torch.device; ``None`` is the CPU, as in nlpaug's
    language models."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device must be a str, a torch.device, an int or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1', ...), got {device!r}") from error


def _load_masked_lm(transformers, model_path: str):
    """``(tokenizer, model)`` from a local folder (nothing is downloaded) or a hub name (the cache, else a
    download). A hub name that can be neither gives an OSError that says how to get the model."""
    if os.path.isdir(model_path):
        return (transformers.AutoTokenizer.from_pretrained(model_path, local_files_only=True),
                transformers.AutoModelForMaskedLM.from_pretrained(model_path, local_files_only=True))
    if os.path.isabs(model_path) or model_path.startswith((".", "~")) or model_path.count("/") > 1 \
            or os.path.exists(model_path):
        raise FileNotFoundError(f"model_path {model_path!r} is not a folder (a hub name is 'name' or 'org/name')")
    try:
        return (transformers.AutoTokenizer.from_pretrained(model_path),
                transformers.AutoModelForMaskedLM.from_pretrained(model_path))
    except OSError as error:
        raise OSError(f"model_path {model_path!r} is not a local folder, and the hub model of that name is neither "
                      f"in the Hugging Face cache nor downloadable here (offline: no network or HF_HUB_OFFLINE=1). "
                      f"Download it once where there is network (`{HUB_DOWNLOAD.format(name=model_path)}`) and pass "
                      f"the folder. transformers said: {error}") from error


class MaskedLM:
    """A masked language model that fills mask tokens with whole words only, batched.

    Args:
        model_path: a local folder (loaded with ``local_files_only=True``: nothing is downloaded) or a
            model name on the Hugging Face hub (an OSError saying how to get it when it can be neither
            found in the cache nor downloaded).
        device: where the model runs (``"cpu"``, ``"cuda"``, ...; ``None``: the CPU, as in nlpaug).
        top_k: words are drawn from the ``top_k`` most likely allowed ones (``None``: all of them).
        batch_size: texts per forward pass.

    ``words[i]`` is the word that token ``i`` stands for when it starts a word, or ``None`` for special
    tokens, word-piece continuations (``##s``, or a BPE token without its leading ``Ġ``), punctuation and
    anything else that is not a word (:data:`WORD_RE` with at least one letter).
    """

    def __init__(self, model_path: str, *, device="cpu", top_k: int | None = 100, batch_size: int = 32):
        check_model_options(top_k, batch_size)
        device = as_device(device)
        transformers = import_optional("transformers", "contextual augmentation")
        model_path = os.fspath(model_path)
        self.model_path = model_path
        self.tokenizer, self.model = _load_masked_lm(transformers, model_path)
        self.model.to(device).eval()
        self.device = str(device)
        self.top_k = top_k
        self.batch_size = batch_size
        if self.tokenizer.mask_token is None:
            raise ValueError(f"{model_path}: the tokenizer has no mask token; contextual augmentation needs a "
                             "masked language model (bert, distilbert, roberta, ...)")
        self.mask_token = self.tokenizer.mask_token
        self.mask_id = self.tokenizer.mask_token_id
        self.special_tokens = tuple(self.tokenizer.all_special_tokens)
        self.max_tokens = self._max_tokens()
        self.words = self._whole_words()
        allowed = torch.tensor([word is not None for word in self.words])
        if not bool(allowed.any()):
            raise ValueError(f"{model_path}: no token of the vocabulary is a whole word")
        self.bias = torch.where(allowed, 0.0, -math.inf).to(self.device)  # added to the logits
        self._ids_of_word: dict[str, list[int]] | None = None

    def __repr__(self) -> str:
        return f"MaskedLM({self.model_path!r}, device={self.device!r}, top_k={self.top_k})"

    def _max_tokens(self) -> int:
        """Tokens per text the model takes, special tokens included."""
        candidates = [getattr(self.tokenizer, "model_max_length", None)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            candidates.append(positions - 2)  # roberta's positions start after padding_idx + 1
        limits = [int(limit) for limit in candidates if limit and limit < 1e6]
        return min(limits) if limits else DEFAULT_MAX_TOKENS

    def _whole_words(self) -> list[str | None]:
        """Decodes ``anchor + token`` for every token: a token starts a word when a space separates it
        from the anchor. This holds for WordPiece (``##s`` joins the anchor), byte-level BPE (``Ġcat``
        brings its space) and SentencePiece (``▁cat``) alike, and uses no tokenizer internals."""
        vocab_size = self.model.config.vocab_size  # the logits' width; may exceed the tokenizer's
        anchor = self.tokenizer.encode(ANCHOR_TEXT, add_special_tokens=False)
        prefix = self.tokenizer.decode(anchor, clean_up_tokenization_spaces=False) + " "
        ids = range(min(len(self.tokenizer), vocab_size))
        decoded = self.tokenizer.batch_decode([anchor + [i] for i in ids], clean_up_tokenization_spaces=False)
        special = set(self.tokenizer.all_special_ids)
        words: list[str | None] = [None] * vocab_size
        for i, text in zip(ids, decoded):
            word = text[len(prefix):] if text.startswith(prefix) else ""
            if i not in special and WORD_RE.fullmatch(word) and any(c.isalpha() for c in word):
                words[i] = word
        return words

    def ids_of_word(self, word: str) -> list[int]:
        """The ids of the tokens that stand for ``word`` (case-insensitive)."""
        if self._ids_of_word is None:
            self._ids_of_word = {}
            for i, candidate in enumerate(self.words):
                if candidate is not None:
                    self._ids_of_word.setdefault(candidate.lower(), []).append(i)
        return self._ids_of_word.get(word.lower(), [])

    @torch.inference_mode()
    def sample(self, masked_texts: list[str], exclude: list[list[list[int]]] | None = None, num_samples: int = 1,
               generator: torch.Generator | None = None) -> list[list[list[int]]]:
        """Draws whole-word tokens for the mask tokens of ``masked_texts``.

        Returns, for each text and each of its mask tokens left to right, up to ``num_samples`` distinct
        token ids drawn without replacement in proportion to the model's probabilities among the
        ``top_k`` most likely allowed words (the Gumbel top-k trick). Mask tokens past the model's
        length are not in the result. ``exclude[t][m]`` lists ids never drawn for mask ``m`` of text
        ``t`` (e.g. the word being replaced). ``generator`` (a CPU generator) makes the draws
        reproducible; ``None`` uses torch's global generator.
        """
        order = sorted(range(len(masked_texts)), key=lambda t: len(masked_texts[t]))  # less padding
        results: list = [None] * len(masked_texts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            encoded = self.tokenizer([masked_texts[t] for t in rows], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt").to(self.device)
            logits = self.model(**encoded).logits
            batch_rows, positions = (encoded["input_ids"] == self.mask_id).nonzero(as_tuple=True)
            scores = logits[batch_rows, positions].float() + self.bias
            per_row = torch.bincount(batch_rows, minlength=len(rows)).tolist()
            if exclude is not None:
                self._exclude(scores, [exclude[t] for t in rows], per_row)
            drawn = self._draw(scores, num_samples, generator)
            for row, text_index in enumerate(rows):
                results[text_index], drawn = drawn[:per_row[row]], drawn[per_row[row]:]
        return results

    @staticmethod
    def _exclude(scores: torch.Tensor, exclude: list[list[list[int]]], per_row: list[int]) -> None:
        mask_rows, ids = [], []
        mask_index = 0
        for masks, found in zip(exclude, per_row):
            for excluded in masks[:found]:
                mask_rows += [mask_index] * len(excluded)
                ids += excluded
                mask_index += 1
            mask_index += max(0, found - len(masks))
        if ids:
            scores[torch.tensor(mask_rows, device=scores.device), torch.tensor(ids, device=scores.device)] = -math.inf

    def _draw(self, scores: torch.Tensor, num_samples: int, generator) -> list[list[int]]:
        if scores.shape[0] == 0:
            return []
        k = scores.shape[1] if self.top_k is None else min(self.top_k, scores.shape[1])
        values, ids = scores.topk(k, dim=1)
        values, ids = values.cpu(), ids.cpu()
        uniform = torch.rand(values.shape, generator=generator).clamp_(min=1e-20, max=1 - 1e-7)
        keys = values - torch.log(-torch.log(uniform))  # Gumbel noise: top-n keys = n draws without replacement
        picked = keys.topk(min(num_samples, k), dim=1).indices
        valid = values.gather(1, picked) > -math.inf
        chosen = ids.gather(1, picked)
        return [row[keep].tolist() for row, keep in zip(chosen, valid)]

    # The interface nlpaug's ContextualWordEmbsAug calls (see nlpaug.model.lang_models.LanguageModels).

    @functools.cached_property
    def nlpaug_model_type(self) -> str:
        """``"bert"`` for ``##`` word pieces, ``"roberta"`` for ``Ġ`` word starts (nlpaug knows only these)."""
        tokens = self.tokenizer.convert_ids_to_tokens([i for i, word in enumerate(self.words[:len(self.tokenizer)])
                                                       if word is not None][:1000])
        if any(token.startswith("Ġ") for token in tokens):
            return "roberta"
        if not any(token.startswith("▁") for token in tokens):
            return "bert"
        raise ValueError(f"{self.model_path}: nlpaug's ContextualWordEmbsAug supports WordPiece (bert) and "
                         "byte-level BPE (roberta) vocabularies, not SentencePiece; use "
                         "rarekit.augment.RareAugmenter('contextual')")

    UNKNOWN_TOKEN = "[UNK]"

    def get_unknown_token(self) -> str | None:
        return self.tokenizer.unk_token

    def get_mask_token(self) -> str:
        return self.mask_token

    def get_subword_prefix(self) -> str:
        return "##" if self.nlpaug_model_type == "bert" else "Ġ"

    def get_tokenizer(self):
        return self.tokenizer

    def get_model(self):
        return self.model

    def get_device(self) -> str:
        """Where the model's weights are, as nlpaug's language models say it (``"cpu"``, ``"cuda:0"``)."""
        return str(self.model.device)

    def to(self, device) -> MaskedLM:
        """Moves the model (and the logit bias) to ``device``, as nlpaug's ``LanguageModels.to``."""
        device = as_device(device)
        self.model.to(device)
        self.bias = self.bias.to(device)
        self.device = str(device)
        return self

    def get_max_num_token(self) -> int:
        return self.max_tokens - 8  # nlpaug keeps room for special tokens and inserted masks

    def predict(self, texts: list[str], target_words: list[str] | None = None, n: int = 1) -> list[list[str]]:
        """nlpaug's call: for each text (one mask token each), up to ``n`` candidate tokens, never a
        special token, a word piece or the target word itself. Draws from torch's global generator."""
        exclude = None
        if target_words is not None:
            exclude = [[self.ids_of_word(self.tokenizer.convert_tokens_to_string([target]).strip())]
                       for target in target_words]
        drawn = self.sample(texts, exclude, num_samples=n)
        return [self.tokenizer.convert_ids_to_tokens(masks[0]) if masks else [] for masks in drawn]


