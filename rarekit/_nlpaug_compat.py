"""The compatibility layer between rarekit's augmentation, nlpaug 1.1.11 and transformers 4.x / 5.x.

**The break.** nlpaug's masked-LM wrappers (``nlpaug.model.lang_models.Bert``, ``DistilBert``,
``Roberta``: the default ``use_custom_api=True`` path of ``ContextualWordEmbsAug``) look up token ids
with ``tokenizer.convert_tokens_to_ids`` only when the tokenizer's class name contains
``"TokenizerFast"``, and otherwise with the private ``tokenizer._convert_token_to_id``. transformers 5
names its fast tokenizers ``BertTokenizer``, ``RobertaTokenizer``, ... and has no such private method, so
building the augmenter raises ``AttributeError: BertTokenizer has no attribute _convert_token_to_id``.
The ``fill-mask`` pipeline path (``use_custom_api=False``) runs, but it is not batched, it lets special
tokens (``[SEP]``, ``<unk>``) through as substitutes, and it re-decodes the whole text, so any word the
model's vocabulary lacks (a rare word, a protected word) comes back as ``[UNK]``.
nlpaug also guesses the model type from the model's *name* (a local folder need not contain "bert"),
and its ``DistilBert``/``Roberta`` wrappers drop all but the last batch of their predictions.

**The layer** (tested on transformers 4.57 and 5.24 with bert, distilbert and roberta models).

- :class:`MaskedLM` loads a masked language model (a local folder or a hub name) with public
  transformers API only (``AutoTokenizer``, ``AutoModelForMaskedLM``, ``__call__``, ``batch_decode``,
  ``all_special_ids``), which is the same on 4.x and 5.x. It works out from the vocabulary itself which
  tokens are whole words (no special token, no ``##`` continuation, no punctuation) and predicts only
  those, in batches, for every mask token of every text. rarekit's ``"contextual"`` method
  (:class:`rarekit.augment.RareAugmenter`) runs on it directly.
- :func:`contextual_word_embs_aug` is nlpaug's own ``ContextualWordEmbsAug`` with :class:`MaskedLM` as
  its language model (it implements the interface nlpaug calls, and nlpaug's public ``get_device`` and
  ``to``), for code that wants the nlpaug augmenter itself on transformers 5. Its model type comes from
  the vocabulary, so a local folder needs none; an unknown hub name gives nlpaug's ValueError.
- :func:`sort_spelling_dictionary` makes nlpaug's ``SpellingAug`` reproducible across processes.
- :func:`import_optional` names the ``rarekit[augment]`` extra when nlpaug or transformers is missing.

Nothing here patches nlpaug or transformers globally, and no error is silenced.
"""
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
# nlpaug's model types (its use_custom_api=True path) and the vocabulary each stands for: WordPiece ("bert",
# "##" continuations) or byte-level BPE ("roberta", "Ġ" word starts), the two nlpaug's augmenter handles.
NLPAUG_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "roberta"}
VOCABULARIES = {"bert": "WordPiece", "roberta": "byte-level BPE"}
NLPAUG_NAME_HINTS = (("longformer", "roberta"), ("roberta", "roberta"), ("bert", "bert"))  # nlpaug reads names so
UNEXPECTED_MODEL_TYPE = "Model type value is unexpected."  # nlpaug's ValueError, which callers may match on
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


def nlpaug_model_type(model_path: str, model_type: str) -> str:
    """The vocabulary (``"bert"`` or ``"roberta"``) that nlpaug's ``model_type`` names, or, when it is ``""``,
    that nlpaug reads in a hub name (``""`` for a local folder: its vocabulary decides). Anything else
    raises nlpaug's ValueError before a model is loaded."""
    if not isinstance(model_type, str):
        raise TypeError(f"model_type must be a str, got {type(model_type).__name__}")
    if model_type:
        if model_type not in NLPAUG_MODEL_TYPES:
            raise ValueError(f"{UNEXPECTED_MODEL_TYPE} model_type must be one of {tuple(NLPAUG_MODEL_TYPES)} or '' "
                             f"(read from the model), got {model_type!r}")
        return NLPAUG_MODEL_TYPES[model_type]
    if os.path.isdir(model_path):
        return ""
    for hint, vocabulary in NLPAUG_NAME_HINTS:
        if hint in model_path.lower():
            return vocabulary
    raise ValueError(f"{UNEXPECTED_MODEL_TYPE} model_path {model_path!r} is not a local folder, and its name tells no "
                     f"model type (bert, distilbert, roberta); pass model_type= one of {tuple(NLPAUG_MODEL_TYPES)}")


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
        limits = [getattr(self.tokenizer, "model_max_length", None)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            limits.append(positions - 2)  # roberta's positions start after padding_idx + 1
        limits = [int(limit) for limit in limits if limit and limit < 1e6]
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


@functools.cache
def _contextual_augmenter_class():
    naw = import_optional("nlpaug.augmenter.word", "nlpaug's ContextualWordEmbsAug")

    # The name must stay "ContextualWordEmbsAug": nlpaug's Augmenter.augment batches a list of texts
    # only for augmenters of that class name.
    class ContextualWordEmbsAug(naw.ContextualWordEmbsAug):
        """nlpaug's ContextualWordEmbsAug with :class:`MaskedLM` as its language model."""

        def __init__(self, model_path: str = "bert-base-uncased", model_type: str = "", action: str = "substitute",
                     top_k: int | None = 100, *, device="cpu", batch_size: int = 32, **kwargs):
            model_path = os.fspath(model_path)
            declared = nlpaug_model_type(model_path, model_type)
            self._masked_lm = MaskedLM(model_path, device=device, top_k=top_k, batch_size=batch_size)
            vocabulary = self._masked_lm.nlpaug_model_type
            if model_type and declared != vocabulary:
                raise ValueError(f"model_type={model_type!r} stands for a {VOCABULARIES[declared]} vocabulary, but "
                                 f"{model_path!r} has a {VOCABULARIES[vocabulary]} one; pass model_type={vocabulary!r}")
            super().__init__(model_path=model_path, model_type=vocabulary, action=action, top_k=top_k,
                             device=self._masked_lm.device, batch_size=batch_size, **kwargs)

        def get_model(self, *args, **kwargs) -> MaskedLM:  # instead of nlpaug's cache keyed by folder name
            return self._masked_lm

    return ContextualWordEmbsAug


def contextual_word_embs_aug(model_path: str = "bert-base-uncased", model_type: str = "", action: str = "substitute",
                             top_k: int | None = 100, *, device="cpu", batch_size: int = 32, **kwargs):
    """nlpaug's ``ContextualWordEmbsAug`` (same arguments) that runs on transformers 4.x and 5.x with bert,
    distilbert and roberta models, hub names or local folders: its language model is a :class:`MaskedLM`.

    As in nlpaug, ``model_type`` (``"bert"``, ``"distilbert"``, ``"roberta"``) may be left out for a hub name
    that tells it; a name that tells none raises nlpaug's ValueError (``"Model type value is unexpected."``)
    before anything is loaded. A local folder needs none. What nlpaug is told is the model's vocabulary
    (WordPiece: ``"bert"``, byte-level BPE: ``"roberta"``); a ``model_type`` that contradicts it raises
    ValueError. ``device=None`` is the CPU, and ``augmenter.model.get_device()`` says where the model is.
    A hub name that is neither cached nor downloadable (offline) raises an OSError that says how to get it.
    ``kwargs`` go to nlpaug (``aug_p``, ``aug_min``, ``aug_max``, ``stopwords``, ...). Each augmenter loads
    its own model (nlpaug's shared cache is not used, so ``force_reload`` changes nothing, and neither
    does ``use_custom_api``: :class:`MaskedLM` replaces both of nlpaug's backends).

    Its output is nlpaug's: the text is re-decoded by the tokenizer, so words the vocabulary lacks come
    back as the unknown token; rarekit's ``RareAugmenter("contextual")`` keeps them."""
    return _contextual_augmenter_class()(model_path, model_type, action, top_k, device=device,
                                         batch_size=batch_size, **kwargs)


def sort_spelling_dictionary(augmenter) -> None:
    """nlpaug's ``Spelling`` model builds each word's misspellings with ``list(set(...))``, whose order
    depends on ``PYTHONHASHSEED``, so a seed would give different variants in each process. Sorting the
    lists (in place, in nlpaug's shared model) fixes the order."""
    for misspellings in augmenter.model.dict.values():
        misspellings.sort()
