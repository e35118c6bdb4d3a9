"""Augmentation as resampling: :func:`augment_minority` (imbalanced-learn's counts, new variants instead of
duplicates) and :func:`augment_rare_tokens` (new contexts for rare words)."""
from __future__ import annotations

import itertools
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from rarekit.augment.augmenter import RareAugmenter, as_texts, as_words
from rarekit.augment.masked_lm import WORD_RE
from rarekit.sampling.indices import check_resample_fits
from rarekit.sampling.strategy import encode_labels, resolve_sampling_strategy, strategy_input

__all__ = ["augment_minority", "augment_rare_tokens"]
AUGMENT_CHUNK = 256  # texts per RareAugmenter.augment call in augment_minority (the progress bar's step)
STR_BYTES = 8 + 49  # a list's reference and a Python str's header


def _as_augmenter(augmenter, seed: int | None) -> RareAugmenter:
    if augmenter is None:
        return RareAugmenter(seed=seed)
    if isinstance(augmenter, RareAugmenter):
        return augmenter if seed is None else augmenter._reseeded(seed)
    return RareAugmenter(augmenter, seed=seed)  # a method name or an nlpaug augmenter


def augment_minority(texts, labels, sampling_strategy="auto", augmenter=None, *, seed: int | None = None,
                     progress: bool = True):
    """Over-samples ``texts`` with augmented variants: each class targeted by ``sampling_strategy`` gains
    exactly the samples ``RandomOverSampler(sampling_strategy)`` would add (``"auto"``: up to the
    majority count; every form of :mod:`rarekit.sampling.strategy`), but as variants of its own texts instead
    of duplicates.

    Args:
        texts: a sequence of strings.
        labels: one label per text (list, numpy array, tensor; ints, strings, ...).
        sampling_strategy: as imbalanced-learn's (``"auto"``, ``"minority"``, ``"not majority"``,
            ``"all"``, a float for binary labels, a dict ``{class: count}``, a callable).
        augmenter: a :class:`RareAugmenter`, a method name, or an nlpaug augmenter; ``None`` is
            ``RareAugmenter()`` (``"contextual"`` with ``bert-base-uncased``).
        seed: seeds the augmenter (a given RareAugmenter is copied, not changed) and the choice of texts.
        progress: show a tqdm progress bar when stderr is a terminal (never in a log file or a pipe).

    Returns:
        ``(texts_res, labels_res)``: the original texts and labels first, in order, then the variants
        class by class (sorted), each after its source text's other variants. A class of ``m`` texts
        gaining ``k`` gets ``k // m`` variants of each text and one more of ``k % m`` texts drawn at
        random. ``labels_res`` has the type of ``labels`` (a list for other sequences).
    """
    texts = as_texts(texts)
    if len(labels) != len(texts):
        raise ValueError(f"texts and labels must have the same length, got {len(texts)} and {len(labels)}")
    codes, classes = encode_labels(labels, "labels")
    values, counts = torch.unique(codes.cpu(), return_counts=True)
    class_labels = values.tolist() if classes is None else classes[values.numpy()].tolist()
    class_counts = dict(zip(class_labels, counts.tolist()))
    targets = resolve_sampling_strategy(sampling_strategy, class_counts, "over", y=strategy_input(labels))
    text_bytes = STR_BYTES + sum(map(len, texts)) // max(len(texts), 1)  # a variant is about as long as its text
    check_resample_fits(targets, class_counts, "over", len(texts) + sum(targets.values()), text_bytes)
    augmenter = _as_augmenter(augmenter, seed)
    chooser = random.Random(augmenter._rng.getrandbits(63))
    new_texts, sources = [], []
    # disable=None: a bar on a terminal only
    with tqdm(total=sum(targets.values()), desc="augmenting", unit="text", disable=None if progress else True) as bar:
        for label, value in zip(class_labels, values.tolist()):
            gain = targets.get(label, 0)
            if gain == 0:
                continue
            members = (codes.cpu() == value).nonzero().flatten().tolist()
            per_text, extra = divmod(gain, len(members))
            lucky = set(chooser.sample(range(len(members)), extra))
            made: dict[int, list[str]] = {}
            for n in (per_text + 1, per_text):
                group = [index for position, index in enumerate(members) if (position in lucky) == (n > per_text)]
                for start in range(0, len(group) if n else 0, AUGMENT_CHUNK):
                    chunk = group[start:start + AUGMENT_CHUNK]
                    for index, variants in zip(chunk, augmenter.augment([texts[i] for i in chunk], n=n)):
                        made[index] = variants
                    bar.update(n * len(chunk))
            for index in members:
                new_texts += made.get(index, [])
                sources += [index] * len(made.get(index, []))
    return texts + new_texts, _append_labels(labels, sources)


def _append_labels(labels, sources: list[int]):
    """``labels`` followed by ``labels[sources]``, in the type of ``labels``."""
    if isinstance(labels, torch.Tensor):
        return torch.cat([labels, labels[torch.tensor(sources, dtype=torch.long, device=labels.device)]])
    if isinstance(labels, np.ndarray):
        return np.concatenate([labels, labels[np.asarray(sources, dtype=np.int64)]])
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(labels, pandas.Series):
        return pandas.concat([labels, labels.iloc[sources]], ignore_index=True)
    labels = list(labels)
    return labels + [labels[index] for index in sources]


def augment_rare_tokens(texts, rare_tokens, n: int = 1, augmenter=None, *, seed: int | None = None) -> list[str]:
    """Variants of the texts that contain rare tokens, with every rare token kept intact and its context
    changed: ``n`` variants of each such text, in the order of ``texts`` (the texts themselves are not
    included; texts without a rare token give none).

    ``rare_tokens`` are words, e.g. from word-level counts::

        counter = rarekit.TokenCounter(len(vocab)).update(word_ids)
        rare = [vocab[i] for i in rarekit.rare_ids(counter.counts, min_count=1, max_count=5).tolist()]
        extra = augment_rare_tokens(texts, rare, n=2, augmenter=RareAugmenter("contextual", model_path=...))

    A rare token matches, case-insensitively, a word of the text (``\\w+`` with inner apostrophes) or a
    whitespace-separated token (as ``rarekit count`` splits text); the tokens found are ``protect`` ed.
    ``augmenter`` is as in :func:`augment_minority`.
    """
    texts = as_texts(texts)
    rare = _as_rare_tokens(rare_tokens)
    augmenter = _as_augmenter(augmenter, seed)
    selected, protect = [], set()
    for text in texts:
        found = {token for token in itertools.chain(WORD_RE.findall(text), text.split()) if token.lower() in rare}
        if found:
            selected.append(text)
            protect |= found
    variants = []
    for start in range(0, len(selected), AUGMENT_CHUNK):
        for text_variants in augmenter.augment(selected[start:start + AUGMENT_CHUNK], n=n, protect=protect):
            variants += text_variants
    return variants


def _as_rare_tokens(rare_tokens) -> set[str]:
    if isinstance(rare_tokens, (torch.Tensor, np.ndarray)) and not (
            isinstance(rare_tokens, np.ndarray) and rare_tokens.dtype.kind in "UO"):
        raise TypeError("rare_tokens must be words, got an array of ids; map them to words first, e.g. "
                        "[vocab[i] for i in rarekit.rare_ids(counts, max_count=5).tolist()]")
    return {token.lower() for token in as_words(rare_tokens, "rare_tokens")}
