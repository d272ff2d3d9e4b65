"""Masking units and static masked-LM predictions in numpy, a batch of instances at a time.

The rule (units, budget, choice, 80/10/10, span lengths, replacement set) is defined in
`pipeline/contract/masking.py`; `bert_keras/dynamic_masking.py` draws the same rule in
TensorFlow, and tests/test_masking_agreement.py compares the two.

Randomness is a keyed hash of (instance seed, stream, position) (`uniform`), not a generator
that advances: an instance's masks depend on its own seed only, not on which other instances
share its batch, so any number of workers and any batching give the same records, and a batch
needs no Python loop per instance (the per-instance loop was the job's largest cost: 13 of 26 s).

`[CLS]`, `[SEP]` and padding are never in a unit, so they are never masked. The same units
give the `word_ids` of dynamic records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pipeline.contract.masking import MASK_PROB, MODES, RANDOM_PROB, MaskingSpec, budget, span_cdf

__all__ = ["MODES", "MaskingSpec", "Masked", "unit_ids", "mask_batch", "uniform", "hashed_bits", "mix64", "GOLDEN"]

# Streams of `uniform`, one per kind of draw.
_PRIORITY, _KIND, _SPAN = 1, 2, 4


GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's step


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values, element-wise: a keyed hash whose outputs pass as independent uniform bits."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, np.uint64) + GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hashed_bits(seeds: np.ndarray, stream: int, width: int) -> np.ndarray:
    """(n, width) uint64 hashed from (seed, stream, column): independent uniform bits per row."""
    with np.errstate(over="ignore"):
        key = mix64(np.asarray(seeds, np.uint64) ^ np.uint64(stream * 0xD1B54A32D192ED03 % (1 << 64)))
        return mix64(key[:, None] + np.arange(width, dtype=np.uint64)[None, :] * GOLDEN)


def uniform(seeds: np.ndarray, stream: int, width: int) -> np.ndarray:
    """(n, width) floats in [0, 1) from (seed, stream, column): 53 hashed bits each."""
    return (hashed_bits(seeds, stream, width) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _ids_from_starts(starts: np.ndarray, maskable: np.ndarray) -> np.ndarray:
    """(n, seq) unit index per token (0, 1, ... per row) from a unit-start mask; -1 where not maskable."""
    ids = np.cumsum(starts, axis=1) - 1
    return np.where(maskable, ids, -1)


def word_starts(tokens: np.ndarray, maskable: np.ndarray, is_suffix: np.ndarray) -> np.ndarray:
    """(n, seq) bool: a word starts at a non-`##` piece or right after a special token,
    so a word never spans segment A and B."""
    prev = np.zeros_like(maskable)
    prev[:, 1:] = maskable[:, :-1]
    return maskable & (~is_suffix[tokens] | ~prev)


def unit_ids(tokens: np.ndarray, maskable: np.ndarray, spec: MaskingSpec, is_suffix: np.ndarray,
             lexicon: dict | None = None) -> np.ndarray:  # fmt: skip
    """(n, seq) unit index of every token, -1 outside units: pieces (token), words (whole_word,
    span: the spans are drawn at masking time from these words) or words with lexicon phrases
    merged (entity). These are the `word_ids` of dynamic records."""
    if spec.mode == "token":
        return _ids_from_starts(maskable, maskable)
    starts = word_starts(tokens, maskable, is_suffix)
    if spec.mode == "entity" and lexicon:
        candidates = starts & np.isin(tokens, np.fromiter(lexicon, np.int64, len(lexicon)))
        for r in np.flatnonzero(candidates.any(axis=1)).tolist():  # matching is per row, only where a phrase may start
            for s, e in lexicon_units(tokens[r], np.flatnonzero(candidates[r]), starts[r], maskable[r], lexicon):
                starts[r, s + 1 : e] = False
    return _ids_from_starts(starts, maskable)


def span_units(words: np.ndarray, max_ngram: int, u: np.ndarray) -> np.ndarray:
    """(n, seq) unit ids: the words of each row cut into spans of 1..max_ngram words (lengths
    from the uniforms `u` (n, seq) through `span_cdf`), a span cut where a gap ([SEP]) interrupts it."""
    n, seq = words.shape
    lengths = 1 + np.searchsorted(span_cdf(max_ngram), u, side="right")  # (n, seq) span lengths in words
    ends = np.cumsum(lengths, axis=1)  # (n, seq): word index where span j ends (exclusive)
    # Span of each word w: searchsorted(ends[r], w, 'right'), for all rows at once by offsetting rows apart.
    offset = (np.arange(n) * (seq * max_ngram + 1))[:, None]
    span_of_word = np.searchsorted((ends + offset).ravel(), (np.arange(seq)[None, :] + offset).ravel(), "right")
    span_of_word = span_of_word.reshape(n, seq) - (np.arange(n) * seq)[:, None]
    maskable = words >= 0
    span = np.take_along_axis(span_of_word, np.maximum(words, 0), axis=1)
    prev_span = np.full_like(span, -1)
    prev_span[:, 1:] = np.where(maskable[:, :-1], span[:, :-1], -1)
    return _ids_from_starts(maskable & (span != prev_span), maskable)


def select_units(units: np.ndarray, k: np.ndarray, priority: np.ndarray, single_tokens: bool = False) -> np.ndarray:
    """(n, seq) bool: the tokens of the units taken in `priority` order while they fit `k` (n,).

    `single_tokens`: every unit is one token (token masking: a row's units are 0..count-1), so
    the units taken are the `k` first in priority order, without counting unit lengths (their
    bincount and running sum were half of choosing)."""
    n, seq = units.shape
    if single_tokens:
        # The k lowest priorities of a row's units: below its k-th smallest, found with a sort of the
        # values (SIMD, 15x a stable argsort's time). Priorities are 53-bit uniforms: a tie is ~1e-12.
        exists = np.arange(seq)[None, :] < (units >= 0).sum(axis=1)[:, None]  # (n, units)
        keyed = np.where(exists, priority, 2.0)
        kth = np.sort(keyed, axis=1)[np.arange(n), np.clip(k - 1, 0, seq - 1)]
        taken = exists & (keyed <= kth[:, None]) & (k > 0)[:, None]
        return np.take_along_axis(taken, np.maximum(units, 0), axis=1) & (units >= 0)
    flat = np.where(units >= 0, units, seq) + (seq + 1) * np.arange(n)[:, None]
    lengths = np.bincount(flat.ravel(), minlength=n * (seq + 1)).reshape(n, seq + 1)[:, :seq]  # (n, units)
    order = np.argsort(np.where(lengths > 0, priority, 2.0), axis=1, kind="stable")  # (n, units), empty last
    fits = np.cumsum(np.take_along_axis(lengths, order, axis=1), axis=1) <= k[:, None]
    taken = np.zeros((n, seq), bool)
    np.put_along_axis(taken, order, fits, axis=1)
    return np.take_along_axis(taken, np.maximum(units, 0), axis=1) & (units >= 0)


@dataclasses.dataclass(frozen=True)
class Masked:
    tokens: np.ndarray  # (n, seq): the input with masks applied
    positions: np.ndarray  # (n, pred): masked positions ascending, then 0
    labels: np.ndarray  # (n, pred): original ids there, then 0
    count: np.ndarray  # (n,): masked tokens per row
    kinds: np.ndarray  # (n, seq) int8: -1 not masked, 0 [MASK], 1 random, 2 kept


def mask_batch(tokens: np.ndarray, units: np.ndarray, spec: MaskingSpec, seeds: np.ndarray, mask_id: int,
               replace_ids: np.ndarray) -> Masked:  # fmt: skip
    """Mask `spec.masked_lm_prob` of each row's tokens (`tokens`, `units` (n, seq) from `unit_ids`),
    whole units at a time, and apply 80/10/10; `seeds` (n,) key each row's draws."""
    n, seq = tokens.shape
    seeds = np.asarray(seeds, np.uint64)
    if spec.mode == "span":
        units = span_units(units, spec.max_ngram, uniform(seeds, _SPAN, seq))
    k = budget((units >= 0).sum(axis=1), spec.masked_lm_prob, spec.max_predictions)
    chosen = select_units(units, k, uniform(seeds, _PRIORITY, seq), single_tokens=spec.mode == "token")
    rows, cols = np.nonzero(chosen)  # row-major: each row's positions ascending
    # One hash per chosen token: its high 32 bits pick the kind, its low 32 bits the replacement.
    with np.errstate(over="ignore"):
        h = mix64(mix64(seeds ^ np.uint64(_KIND))[rows] + cols.astype(np.uint64) * GOLDEN)
    r = (h >> np.uint64(32)).astype(np.float64) * (1.0 / (1 << 32))
    kind = np.where(r < MASK_PROB, 0, np.where(r < MASK_PROB + RANDOM_PROB, 1, 2)).astype(np.int8)
    pick = ((h & np.uint64(0xFFFFFFFF)) * np.uint64(len(replace_ids))) >> np.uint64(32)
    kinds = np.full((n, seq), -1, np.int8)
    kinds[rows, cols] = kind
    out = tokens.copy()
    out[rows, cols] = np.where(kind == 0, mask_id, np.where(kind == 1, replace_ids[pick.astype(np.int64)], tokens[rows, cols]))
    count = chosen.sum(axis=1)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)  # rank of each position in its row
    positions = np.zeros((n, spec.max_predictions), np.int64)
    labels = np.zeros((n, spec.max_predictions), np.int64)
    positions[rows, slot] = cols
    labels[rows, slot] = tokens[rows, cols]
    return Masked(out, positions, labels, count, kinds)


# ---- entity units: lexicon phrases on word boundaries ---------------------------------------


def lexicon_index(phrases: Sequence[tuple[int, ...]]) -> dict[int, tuple[tuple[int, ...], ...]]:
    """Phrases keyed by their first wordpiece id, longest first."""
    index: dict[int, list[tuple[int, ...]]] = {}
    for phrase in phrases:
        if phrase:
            index.setdefault(phrase[0], []).append(tuple(phrase))
    return {k: tuple(sorted(set(v), key=len, reverse=True)) for k, v in index.items()}


def lexicon_units(tokens: np.ndarray, candidates: np.ndarray, starts: np.ndarray, maskable: np.ndarray,
                  index) -> list[tuple[int, int]]:  # fmt: skip
    """Greedy, left to right, longest-first lexicon matches of one row (`tokens`, `starts`,
    `maskable` (seq,)) that start at a `candidates` position and end where a word ends, inside
    one segment: [start, end) token ranges, never overlapping."""
    found, next_free, n = [], -1, len(tokens)
    for s in candidates.tolist():
        if s < next_free:
            continue
        for phrase in index.get(int(tokens[s]), ()):
            e = s + len(phrase)
            # It must end where a word ends (a word start, a special token or the row's end)
            # and cover maskable tokens only (never a [SEP]).
            if e <= n and (e == n or starts[e] or not maskable[e]) and maskable[s:e].all() \
                    and tuple(tokens[s:e].tolist()) == phrase:  # fmt: skip
                found.append((s, e))
                next_free = e
                break  # longest first
    return found
