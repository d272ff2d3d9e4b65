"""Pretraining instances as BERT builds them (pure functions, injected rng).

Two layouts, chosen by `prepare.objective`:

- `mlm_nsp`, sentence pairs, following google-research/bert
  `create_instances_from_document`: fill a chunk of sentences up to a target
  length (shorter with `short_seq_prob`), cut it at a sentence boundary into A
  and B, and half of the time replace B with text from a different document.
  BERT holds the whole corpus in memory to draw that random B; a Beam job holds
  one document, so the work is split in two. `plan_instances` makes every
  instance whose B is the true continuation and, for each one that needs a
  random B, a `Request` (A and the length B should have), plus as many
  donor runs (`donor_runs`) of this document for other documents' requests; `donors.py`
  joins requests and runs across the whole corpus and `complete` builds the
  instance from the pair. The plan never depends on which B it will get, so
  the instances are the same whichever worker sees which document.
- `mlm`, single segments: `mlm_windows` cuts a document's token stream into
  `[CLS] tokens [SEP]` windows that fill `max_seq_length` (MosaicBERT,
  Cramming, ModernBERT pretrain MLM-only on contiguous text), cut at word starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence

import numpy as np

Sentences = list[np.ndarray]  # one int32 array of wordpiece ids per sentence


@dataclasses.dataclass(frozen=True)
class Instance:
    tokens: np.ndarray  # int32, (n,): [CLS] A [SEP] B [SEP] (or [CLS] A [SEP]), n <= max_seq_length
    len_a: int  # tokens of segment A
    is_random_next: bool  # NSP label 1: B was drawn from another document


@dataclasses.dataclass(frozen=True)
class Request:
    """An instance waiting for its random B: segment A and the length B should reach."""

    tokens_a: np.ndarray  # int32, (n,), n <= max_seq_length - 3
    target_b: int  # BERT's target_b_length: take sentences until B has this many tokens


def _hashed(parts) -> hashlib.blake2b:
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = part.to_bytes(16, "little", signed=True)  # seeds and 64-bit hashes
        elif isinstance(part, str):
            part = part.encode("utf-8")
        digest.update(part + b"\x1f")
    return digest


def stable_int(*parts: bytes | int | str) -> int:
    """64-bit hash of the parts; seeds come from content, never from arrival order."""
    return int.from_bytes(_hashed(parts).digest(), "little")


def stable_ints(count: int, *parts: bytes | int | str) -> list[int]:
    """`stable_int(*parts, j)` for j in range(count), the common parts hashed once."""
    prefix = _hashed(parts)
    out = []
    for j in range(count):
        digest = prefix.copy()
        digest.update(j.to_bytes(16, "little", signed=True) + b"\x1f")
        out.append(int.from_bytes(digest.digest(), "little"))
    return out


def truncate_pair(len_a: int, len_b: int, max_num_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """BERT's `truncate_seq_pair` on index ranges: trim the longer side one token at a
    time (B on a tie), from the front or the back at random. Returns (a_lo, a_hi, b_lo, b_hi).

    In closed form, with the same distribution: how many tokens each side loses follows from
    the lengths alone (the longer side down to the other's length, then both in turn, B first),
    and of a side's k cuts, Binomial(k, 1/2) come off the front (one coin each, as BERT). One
    `getrandbits` per side instead of a `random()` per token (20,000 calls per sotu pass).
    """
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, len_a, 0, len_b
    cut_a = min(excess, max(0, len_a - len_b))
    cut_b = min(excess - cut_a, max(0, len_b - len_a))
    rest = excess - cut_a - cut_b
    cut_a, cut_b = cut_a + rest // 2, cut_b + (rest + 1) // 2
    front_a = rng.getrandbits(cut_a).bit_count() if cut_a else 0
    front_b = rng.getrandbits(cut_b).bit_count() if cut_b else 0
    return front_a, len_a - (cut_a - front_a), front_b, len_b - (cut_b - front_b)


def pair_instance(a: np.ndarray, b: np.ndarray, is_random: bool, max_num_tokens: int, cls_id: int, sep_id: int,
                  rng: random.Random) -> Instance:
    """[CLS] A [SEP] B [SEP], the pair truncated to `max_num_tokens` as BERT does."""
    a_lo, a_hi, b_lo, b_hi = truncate_pair(len(a), len(b), max_num_tokens, rng)
    len_a, len_b = a_hi - a_lo, b_hi - b_lo
    tokens = np.empty(len_a + len_b + 3, np.int32)  # slices written in place: half a concatenate's cost
    tokens[0], tokens[len_a + 1], tokens[-1] = cls_id, sep_id, sep_id
    tokens[1 : len_a + 1], tokens[len_a + 2 : -1] = a[a_lo:a_hi], b[b_lo:b_hi]
    return Instance(tokens, len_a, is_random)


def plan_instances(doc: Sentences, max_seq_length: int, short_seq_prob: float, cls_id: int, sep_id: int,
                   rng: random.Random) -> list[Instance | Request]:
    """The sentence-pair instances of one tokenized document, in order; a `Request` stands
    where BERT would draw a random B."""
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    # Usually fill the sequence; sometimes a shorter one so the model sees short inputs.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    out: list[Instance | Request] = []
    chunk: Sentences = []
    length, i = 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = np.concatenate(chunk[:a_end])
            if len(chunk) == 1 or rng.random() < 0.5:
                if len(tokens_a) > max_num_tokens:  # B takes >= 1 token: trim A now, as truncation would
                    lo, hi, _, _ = truncate_pair(len(tokens_a), 0, max_num_tokens - 1, rng)
                    tokens_a = tokens_a[lo:hi]
                out.append(Request(tokens_a, max(1, target - len(tokens_a))))
                # The unused sentences of this chunk go back for the next instance.
                i -= len(chunk) - a_end
            else:
                out.append(pair_instance(tokens_a, np.concatenate(chunk[a_end:]), False, max_num_tokens,
                                         cls_id, sep_id, rng))  # fmt: skip
            chunk, length = [], 0
        i += 1
    return out


@dataclasses.dataclass(frozen=True)
class Run:
    """A donor run: its sentences' ids back to back, and where each sentence ends in them."""

    ids: np.ndarray  # (n,) wordpiece ids
    ends: np.ndarray  # (sentences,) int64, cumulative: sentence i is ids[ends[i - 1]:ends[i]]


def donor_runs(doc: Sentences, starts: Sequence[int], max_tokens: int) -> list[Run]:
    """For each start, the document's sentences from there on, at most `max_tokens` tokens in all
    (the last one cut): enough for any B, since B never exceeds `max_seq_length - 3`. A run is
    a slice of the document's tokens, so all of a document's runs come from one concatenation."""
    if not starts:
        return []
    bounds = np.concatenate(([0], np.cumsum([len(s) for s in doc], dtype=np.int64)))  # sentence i: bounds[i:i + 2]
    flat = np.concatenate(doc)
    lo = bounds[np.asarray(starts)]
    hi = np.minimum(lo + max_tokens, bounds[-1])
    last = np.searchsorted(bounds, hi)  # the run's last sentence (cut at hi) ends at bounds[last] >= hi
    return [Run(flat[a:b], np.minimum(bounds[s + 1 : e + 1], b) - a)
            for s, e, a, b in zip(starts, last.tolist(), lo.tolist(), hi.tolist(), strict=True)]  # fmt: skip


def donor_starts(num_sentences: int, k: int, rng: random.Random) -> list[int]:
    """`k` sentence indices to start donor runs at: distinct while the document has enough."""
    if num_sentences == 0:
        return []
    picks = []
    while len(picks) < k:
        picks += rng.sample(range(num_sentences), min(num_sentences, k - len(picks)))
    return picks


def complete(request: Request, run: Run, max_seq_length: int, cls_id: int, sep_id: int,
             rng: random.Random) -> Instance:
    """The random-next instance of `request` with B taken from the start of `run`: as BERT,
    whole sentences until B reaches its target length (the first sentence end at or past it)."""
    last = min(int(np.searchsorted(run.ends, request.target_b)), len(run.ends) - 1)
    b = run.ids[: run.ends[last]]
    return pair_instance(request.tokens_a, b, True, max_seq_length - 3, cls_id, sep_id, rng)


def mlm_windows(doc: Sentences, max_seq_length: int, short_seq_prob: float, cls_id: int, sep_id: int,
                is_suffix: np.ndarray, rng: random.Random) -> list[Instance]:
    """Single-segment instances `[CLS] tokens [SEP]` over the document's tokens in order.

    Each window takes `max_seq_length - 2` tokens (a random shorter target with
    `short_seq_prob`, as the pairs), moved back to start the next window on a
    word (not a `##` piece) so whole-word masking sees whole words.
    """
    if not doc:
        return []
    tokens = np.concatenate(doc)
    limit = max_seq_length - 2
    out, start = [], 0
    while start < len(tokens):
        target = rng.randint(1, limit) if rng.random() < short_seq_prob else limit
        end = min(start + target, len(tokens))
        if end < len(tokens):
            cut = end
            while cut > start + 1 and is_suffix[tokens[cut]]:  # (the window's first piece stays)
                cut -= 1
            end = cut if cut > start + 1 else end
        window = tokens[start:end]
        out.append(Instance(np.concatenate(([cls_id], window, [sep_id])).astype(np.int32), len(window), False))
        start = end
    return out


def maskable_positions(instance: Instance) -> np.ndarray:
    """(n,) bool: every token but [CLS] and the [SEP]s."""
    keep = np.ones(len(instance.tokens), dtype=bool)
    keep[[0, instance.len_a + 1, len(instance.tokens) - 1]] = False
    return keep


def segment_ids(instance: Instance, seq_length: int) -> np.ndarray:
    """(seq,) 0 for [CLS] A [SEP] and padding, 1 for B [SEP] (none in a single segment)."""
    out = np.zeros(seq_length, dtype=np.int64)
    out[instance.len_a + 2 : len(instance.tokens)] = 1
    return out


def pad(values: np.ndarray | Sequence[int], length: int, fill: int = 0) -> np.ndarray:
    out = np.full(length, fill, dtype=np.int64)
    out[: len(values)] = values
    return out
