"""Protected words and phrases of :class:`rarekit.RareAugmenter`: whole-word matches that every variant must keep."""
from __future__ import annotations

import functools
import re
from collections import Counter

from rarekit.augment.masked_lm import WORD_RE

NLPAUG_TOKEN_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # nlpaug's tokens, but "don't" stays one word
TOKEN_RE = re.compile(r"\w+|[^\w\s]")  # what "the same text" compares: words and punctuation, not spacing
PROTECTION_CACHE = 64  # protections kept, one per protect set


class Protection:
    """The protected words and phrases of one ``augment`` call: single words (``WORD_RE``) match whole
    words; other phrases match as substrings not inside a longer word."""

    def __init__(self, phrases: frozenset):
        self.phrases = phrases
        self.words = {phrase for phrase in phrases if WORD_RE.fullmatch(phrase)}
        others = sorted(phrases - self.words, key=lambda phrase: (-len(phrase), phrase))
        self.pattern = re.compile("|".join(_bounded(phrase) for phrase in others)) if others else None

    def matches(self, text: str) -> list[re.Match]:
        found = [match for match in WORD_RE.finditer(text) if match.group() in self.words] if self.words else []
        return found + (list(self.pattern.finditer(text)) if self.pattern is not None else [])

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in self.matches(text)]

    def counts(self, text: str) -> Counter:
        return Counter(match.group() for match in self.matches(text))


@functools.lru_cache(maxsize=PROTECTION_CACHE)
def protection_for(phrases: frozenset) -> Protection:
    return Protection(phrases)


def _bounded(phrase: str) -> str:
    left = r"(?<!\w)" if re.match(r"\w", phrase[0]) else ""
    right = r"(?!\w)" if re.match(r"\w", phrase[-1]) else ""
    return left + re.escape(phrase) + right


def stopwords_for(protect: frozenset) -> set | None:
    """nlpaug's stopwords for ``protect``: the tokens of each phrase, split as the built-in methods split
    text (:data:`NLPAUG_TOKEN_RE`)."""
    return {token for phrase in protect for token in NLPAUG_TOKEN_RE.findall(phrase)} or None


def match_case(original: str, word: str) -> str:
    if len(original) > 1 and original.isupper():
        return word.upper()
    if original[0].isupper():
        return word[0].upper() + word[1:]
    return word


def comparison_key(text: str) -> tuple:
    return tuple(TOKEN_RE.findall(text))


