"""Masking units and static masked-LM predictions (pure functions, injected rng).

A *unit* is the set of token positions masked together:
- token: every wordpiece alone (original BERT);
- whole_word: a word = a piece plus its `##` continuations (BERT's whole-word masking);
- span: 1..max_ngram consecutive words, n drawn with p(n) ~ 1/n (as BERT's n-gram masking);
- entity: a lexicon phrase found in the text is one unit, other words are units
  (the knowledge-enhanced masking of ERNIE, which BERT lacks).

`[CLS]`, `[SEP]` and padding are never in a unit, so they are never masked.
The same units give the `word_ids` of dynamic mode, so the trainer masks the
same things per step that this module masks offline.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from pipeline.contract.config import MASKING_MODES

MODES = MASKING_MODES


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """Everything masking needs besides the tokens and the rng."""

    mode: str
    masked_lm_prob: float
    max_predictions: int
    mask_id: int
    is_suffix: np.ndarray  # bool, (vocab,): the token is a `##` continuation piece
    replace_ids: np.ndarray  # int, (n,): ids a token may be replaced with (no specials)
    max_ngram: int = 3
    lexicon: dict = dataclasses.field(default_factory=dict)  # `lexicon_index` of the phrases' ids


@dataclasses.dataclass(frozen=True)
class Masked:
    tokens: np.ndarray  # int32, (n,): the input with masks applied
    positions: list[int]  # masked positions, ascending
    labels: list[int]  # original ids at those positions
    kinds: list[int]  # 0 = [MASK], 1 = kept, 2 = random replacement


def word_spans(tokens: np.ndarray, maskable: np.ndarray, is_suffix: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each word: a non-`##` piece and the `##` pieces after it,
    never crossing a special token (so a word never spans segment A and B)."""
    pos = np.flatnonzero(maskable)
    if pos.size == 0:
        return []
    suffix = is_suffix[tokens[pos]]
    # A word starts at a non-suffix piece or right after a special token.
    gap = np.ones(pos.size, dtype=bool)
    gap[1:] = pos[1:] != pos[:-1] + 1
    starts = np.flatnonzero(~suffix | gap)
    ends = np.append(starts[1:], pos.size) - 1
    return list(zip(pos[starts].tolist(), (pos[ends] + 1).tolist(), strict=True))


def lexicon_index(phrases: Sequence[tuple[int, ...]]) -> dict[int, tuple[tuple[int, ...], ...]]:
    """Phrases keyed by their first wordpiece id, longest first (for `MaskingSpec.lexicon`)."""
    index: dict[int, list[tuple[int, ...]]] = {}
    for phrase in phrases:
        if phrase:
            index.setdefault(phrase[0], []).append(tuple(phrase))
    return {k: tuple(sorted(set(v), key=len, reverse=True)) for k, v in index.items()}


def lexicon_matches(tokens: np.ndarray, words: list[tuple[int, int]], index) -> list[tuple[int, int]]:
    """Greedy, left to right, longest-first lexicon matches that start and end on word
    boundaries: (first_word, last_word) pairs, never overlapping."""
    ends = {e: j for j, (_, e) in enumerate(words)}
    found, i = [], 0
    while i < len(words):
        s, best = words[i][0], -1
        for phrase in index.get(int(tokens[s]), ()):
            j = ends.get(s + len(phrase), -1)
            if j >= i and tuple(tokens[s : s + len(phrase)].tolist()) == phrase:
                best = j
                break  # longest first
        if best >= 0:
            found.append((i, best))
            i = best + 1
        else:
            i += 1
    return found


def masking_units(tokens: np.ndarray, maskable: np.ndarray, spec: MaskingSpec) -> list[tuple[int, int]]:
    """Units of `tokens` for `spec.mode` as [start, end) ranges: every unit is contiguous
    (span mode returns words; spans are drawn in `mask_tokens`)."""
    if spec.mode == "token":
        return [(p, p + 1) for p in np.flatnonzero(maskable).tolist()]
    words = word_spans(tokens, maskable, spec.is_suffix)
    if spec.mode != "entity":
        return words
    units: list[tuple[int, int]] = []
    taken = 0
    for first, last in lexicon_matches(tokens, words, spec.lexicon):
        units.extend(words[taken:first])
        units.append((words[first][0], words[last][1]))  # the whole phrase: one unit
        taken = last + 1
    units.extend(words[taken:])
    return units


def word_ids(length: int, units: list[tuple[int, int]]) -> np.ndarray:
    """(length,) unit index per token, -1 where the token is in no unit (specials, padding)."""
    out = np.full(length, -1, dtype=np.int64)
    for i, (s, e) in enumerate(units):
        out[s:e] = i
    return out


def _random_order(n: int, rng: random.Random):
    """Indices 0..n-1 in uniformly random order, produced lazily (a partial Fisher-Yates):
    masking stops after ~20 tokens, so shuffling all ~100 units first is wasted work."""
    order = list(range(n))
    random_ = rng.random
    for k in range(n):
        j = k + int(random_() * (n - k))
        order[k], order[j] = order[j], order[k]
        yield order[k]


def _span(words: list[tuple[int, int]], i: int, n: int) -> tuple[int, int]:
    """Words i..i+n-1 as one range, cut at the first gap ([SEP] between words)."""
    end = words[i][1]
    for k in range(i + 1, min(i + n, len(words))):
        if words[k][0] != end:
            break
        end = words[k][1]
    return words[i][0], end


def mask_tokens(tokens: np.ndarray, maskable: np.ndarray, spec: MaskingSpec, rng: random.Random) -> Masked:
    """Choose ~masked_lm_prob of the maskable tokens, whole units at a time, and apply 80/10/10."""
    budget = min(spec.max_predictions, max(1, int(round(int(maskable.sum()) * spec.masked_lm_prob))))
    units = masking_units(tokens, maskable, spec)
    ngrams = list(range(1, spec.max_ngram + 1))
    cum_weights = np.cumsum([1.0 / n for n in ngrams]).tolist()  # p(n) ~ 1/n, as BERT's n-gram masking
    chosen = bytearray(len(tokens))  # a bytearray: slicing it is far cheaper than numpy on ~3 items
    count = 0
    for i in _random_order(len(units), rng):
        if count >= budget:
            break
        if spec.mode == "span":
            s, e = _span(units, i, rng.choices(ngrams, cum_weights=cum_weights)[0])
        else:
            s, e = units[i]
        if count + e - s > budget or any(chosen[s:e]):
            continue  # as BERT: a unit that does not fit whole is not masked in part
        chosen[s:e] = b"\x01" * (e - s)
        count += e - s
    positions = [p for p, c in enumerate(chosen) if c]
    out = tokens.copy()
    labels = tokens[positions].tolist()
    kinds = []
    for p in positions:
        r = rng.random()
        if r < 0.8:
            out[p] = spec.mask_id
            kinds.append(0)
        elif r < 0.9:
            kinds.append(1)
        else:
            out[p] = spec.replace_ids[int(rng.random() * len(spec.replace_ids))]
            kinds.append(2)
    return Masked(out, positions, labels, kinds)
