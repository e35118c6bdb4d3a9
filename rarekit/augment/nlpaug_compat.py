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
  the vocabulary, so a local folder needs none; an unknown hub name gives nlpaug's ValueError. Its
  ``substitute`` and ``insert`` edit the text itself (:mod:`rarekit.augment.contextual`) with nlpaug's
  counts, stopwords and generators, instead of re-decoding it (which turned unknown words into ``[UNK]``).
- :func:`sort_spelling_dictionary` makes nlpaug's ``SpellingAug`` reproducible across processes.
- :func:`import_optional` names the ``rarekit[augment]`` extra when nlpaug or transformers is missing.

Nothing here patches nlpaug or transformers globally, and no error is silenced.
"""
from __future__ import annotations

import functools
import os

from rarekit.augment.contextual import SPECIAL_TOKENS, Edit, apply_plans, edit_options, head_words, literal_spans
from rarekit.augment.masked_lm import MaskedLM, import_optional
from rarekit.augment.protection import protection_for

# nlpaug's model types (its use_custom_api=True path) and the vocabulary each stands for: WordPiece ("bert",
# "##" continuations) or byte-level BPE ("roberta", "Ġ" word starts), the two nlpaug's augmenter handles.
NLPAUG_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "roberta"}
VOCABULARIES = {"bert": "WordPiece", "roberta": "byte-level BPE"}
NLPAUG_NAME_HINTS = (("longformer", "roberta"), ("roberta", "roberta"), ("bert", "bert"))  # nlpaug reads names so
UNEXPECTED_MODEL_TYPE = "Model type value is unexpected."  # nlpaug's ValueError, which callers may match on


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

        def substitute(self, data):
            return self._edited(data)

        def insert(self, data):
            return self._edited(data)

        def _edited(self, data):
            """nlpaug's ``substitute`` / ``insert`` of one text or a list, on the text itself
            (:func:`rarekit.augment.contextual.apply_plans`), drawing from nlpaug's generators (``random``
            for the places, torch's for the words)."""
            texts = data if isinstance(data, list) else [data]
            outputs = apply_plans(self._masked_lm, texts, [self._plan(text) for text in texts], None)
            return outputs if isinstance(data, list) else outputs[0]

        def _plan(self, text: str) -> list[Edit]:
            """nlpaug's choice of places: ``generate_aug_cnt(words)`` (``aug_p``, ``aug_min``, ``aug_max``)
            among the words of the text's first ``max_num_token`` tokens, never a stopword (as nlpaug
            matches them: the phrase itself, or a word whose lower case is one; ``stopwords_regex``) or a
            special token written in the text."""
            lm = self._masked_lm
            words = head_words(lm, text, self.max_num_token)
            blocked = literal_spans(text, SPECIAL_TOKENS + lm.special_tokens)
            if self.stopwords:
                lowered = set(self.stopwords)
                blocked += protection_for(frozenset(self.stopwords)).spans(text)
                blocked += [match.span() for match in words if match.group().lower() in lowered]
            if self.stopwords_regex is not None:
                blocked += [match.span() for match in words if self._regex_stopword(match.group())]
            options = edit_options(words, blocked, self.action)
            return sorted(self.sample(options, min(self.generate_aug_cnt(len(words)), len(options))))

        def _regex_stopword(self, word: str) -> bool:
            """nlpaug's test of a token against ``stopwords_regex`` (WordAugmenter.pre_skip_aug)."""
            return any(self.stopwords_regex.match(form) for form in (word, f" {word} ", f" {word}", f"{word} "))

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

    Unlike nlpaug's, which re-decodes the whole text through the tokenizer (words the vocabulary lacks
    came back as the unknown token, stopwords included), only the chosen words change: the rest of the
    text (unknown words, emoji, case, spacing) is kept as it is, no special token or word piece is ever
    written, and ``aug_p`` counts words, not word pieces. Substitutes and insertions are whole
    words of the vocabulary, as in ``RareAugmenter("contextual")``; the places are drawn with nlpaug's
    ``random`` and the words with torch's global generator, so ``random.seed`` and ``torch.manual_seed``
    fix the output."""
    return _contextual_augmenter_class()(model_path, model_type, action, top_k, device=device,
                                         batch_size=batch_size, **kwargs)


def sort_spelling_dictionary(augmenter) -> None:
    """nlpaug's ``Spelling`` model builds each word's misspellings with ``list(set(...))``, whose order
    depends on ``PYTHONHASHSEED``, so a seed would give different variants in each process. Sorting the
    lists (in place, in nlpaug's shared model) fixes the order."""
    for misspellings in augmenter.model.dict.values():
        misspellings.sort()
