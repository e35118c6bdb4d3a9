"""Contextual edits of texts by a :class:`~rarekit.augment.masked_lm.MaskedLM`, shared by
``RareAugmenter("contextual")`` and the nlpaug factory :func:`~rarekit.augment.contextual_word_embs_aug`.

A plan is a list of :class:`Edit` s among the words of the head of a text that the model sees
(:func:`head_words`); :func:`apply_plans` masks the edits of every text, fills every mask of a batch in
one forward pass, and writes the drawn words into the original text. Nothing else of the text changes:
words the model's vocabulary lacks, emoji, spacing, case and special tokens written in the text stay as
they are, and no special token or word piece is ever drawn (the model fills whole words only).
"""
from __future__ import annotations

import bisect
import re
from typing import NamedTuple

import torch

from rarekit.augment.masked_lm import WORD_RE, MaskedLM
from rarekit.augment.protection import match_case

ACTIONS = ("substitute", "insert")
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
                  "<|endoftext|>")  # never drawn, and kept where a text has them


class Edit(NamedTuple):
    """One change of a contextual variant: ``original`` (``text[start:end]``) is substituted, or, when
    ``original`` is None, a word is inserted at ``start`` (before the word there if ``before_word``,
    else after the word that ends there)."""
    start: int
    end: int
    original: str | None
    before_word: bool = False


def head_words(lm: MaskedLM, text: str, max_tokens: int) -> list[re.Match]:
    """The words (:data:`WORD_RE`) of the head of ``text`` that fits ``max_tokens`` tokens of the model
    (all of them when the text is short)."""
    end = head_end(lm, text, max_tokens)
    words = list(WORD_RE.finditer(text, 0, end))
    whole_last = WORD_RE.match(text, words[-1].start()) if words else None
    if whole_last is not None and whole_last.end() > end:
        words.pop()  # a word that goes on past the head
    return words


def head_end(lm: MaskedLM, text: str, max_tokens: int) -> int:
    """Where the first ``max_tokens`` tokens of ``text`` end (``len(text)`` when it has no more)."""
    if 2 * len(text.encode("utf-8")) <= max_tokens:  # no tokenizer makes more tokens than that
        return len(text)
    try:
        encoded = lm.tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens,
                               return_offsets_mapping=True)
    except NotImplementedError:  # a Python ("slow") tokenizer, which gives no offsets
        return head_end_by_words(lm.tokenizer, text, max_tokens)
    if len(encoded["input_ids"]) < max_tokens:
        return len(text)
    return encoded["offset_mapping"][-1][1]


def head_end_by_words(tokenizer, text: str, max_tokens: int) -> int:
    """:func:`head_end` for a tokenizer without offset mappings: the end of the last word whose prefix of
    ``text`` takes at most ``max_tokens`` tokens (``len(text)`` when every word fits), found by bisection
    over the words (the token count of a prefix grows with it), O(log words) tokenizations."""
    ends = [match.end() for match in WORD_RE.finditer(text)]
    fitting = bisect.bisect_right(
        ends, max_tokens, key=lambda end: len(tokenizer(text[:end], add_special_tokens=False)["input_ids"]))
    if fitting == len(ends):
        return len(text)
    return ends[fitting - 1] if fitting else 0


def literal_spans(text: str, tokens) -> list[tuple[int, int]]:
    """Where each of ``tokens`` (special tokens) is written in ``text``."""
    return [match.span() for token in tokens if token in text for match in re.finditer(re.escape(token), text)]


def edit_options(words: list[re.Match], blocked: list[tuple[int, int]], action: str) -> list[Edit]:
    """The possible edits: substitute a word with a letter, or insert before a word or after the last
    one; never inside a ``blocked`` span (protected words, special tokens written in the text)."""
    if not words:
        return []
    if action == "substitute":
        return [Edit(match.start(), match.end(), match.group()) for match in words
                if any(c.isalpha() for c in match.group())
                and not any(start < match.end() and match.start() < end for start, end in blocked)]
    places = [Edit(match.start(), match.start(), None, True) for match in words]
    places.append(Edit(words[-1].end(), words[-1].end(), None, False))
    return [place for place in places if not any(start < place.start < end for start, end in blocked)]


def apply_plans(lm: MaskedLM, texts: list[str], plans: list[list[Edit]], generator: torch.Generator | None
                ) -> list[str]:
    """The texts with their sorted edits ``plans`` made: every mask of every text filled in batched passes
    (each mask independently, never with the word it replaces; ``generator`` as in
    :meth:`MaskedLM.sample`). A substitution the model cannot fill keeps its word, an insertion is dropped."""
    todo = [i for i, plan in enumerate(plans) if plan]
    masked = [render(lm, texts[i], plans[i], None) for i in todo]
    exclude = [[lm.ids_of_word(edit.original) if edit.original is not None else [] for edit in plans[i]]
               for i in todo]
    outputs = list(texts)
    for i, masks in zip(todo, lm.sample(masked, exclude, 1, generator)):
        fills = [lm.words[ids[0]] if ids else None for ids in masks]
        outputs[i] = render(lm, texts[i], plans[i], fills + [None] * (len(plans[i]) - len(fills)))
    return outputs


def render(lm: MaskedLM, text: str, plan: list[Edit], fills: list[str | None] | None) -> str:
    """``text`` with the edits of ``plan``: the model's input with mask tokens (``fills=None``; a mask
    token already in the text becomes the unknown token), or the variant with the drawn words (a
    substitution without a word keeps the original, an insertion without one is dropped)."""
    escape = (lambda part: part.replace(lm.mask_token, lm.tokenizer.unk_token or " ")) if fills is None else str
    pieces, position = [], 0
    for index, edit in enumerate(plan):
        pieces.append(escape(text[position:edit.start]))
        word = lm.mask_token if fills is None else fills[index]
        if edit.original is None:  # an insertion
            pieces.append("" if word is None else f"{word} " if edit.before_word else f" {word}")
        elif fills is None:  # a substitution, masked
            pieces.append(word)
        else:
            pieces.append(edit.original if word is None else match_case(edit.original, word))
        position = edit.end
    pieces.append(escape(text[position:]))
    rendered = "".join(pieces)
    # A mask stands for a whole word, leading space included (roberta's Ġ): no separate space token.
    return rendered.replace(" " + lm.mask_token, lm.mask_token) if fills is None else rendered
