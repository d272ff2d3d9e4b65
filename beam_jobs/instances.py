"""Pretraining instances as BERT builds them (pure functions, injected rng and seeds).

Two layouts, chosen by `prepare.objective`:

- `mlm_nsp`, sentence pairs, following google-research/bert
  `create_instances_from_document`: fill a chunk of sentences up to a target
  length (shorter with `short_seq_prob`), cut it at a sentence boundary into A
  and B, and half of the time replace B with text from a different document.
  BERT holds the whole corpus in memory to draw that random B; a Beam job holds
  one document, so the work is split in two. `plan_instances` makes every
  instance whose B is the true continuation and, for each one that needs a
  random B, a request (A and the length B should have), plus as many
  donor runs (`donor_runs`) of this document for other documents' requests; `donors.py`
  joins requests and runs across the whole corpus and `complete` builds the
  instances from the pairs. The plan never depends on which B it will get, so
  the instances are the same whichever worker sees which document.
- `mlm`, single segments: `mlm_windows` cuts a document's token stream into
  `[CLS] tokens [SEP]` windows that fill `max_seq_length` (MosaicBERT,
  Cramming, ModernBERT pretrain MLM-only on contiguous text), cut at word starts.

Instances travel as `Instances`, a batch in columns (the segments' ids back to back and
their lengths), never as one Python object per instance: A and B are ranges of one
document's (or one donor bucket's) token array, so a batch is a few numpy gathers, and
per-instance Python in building, truncating and laying out instances was most of the
job's time past tokenizing. Truncation draws its coins from each instance's seed
(`truncate_pairs`), so it needs no generator that advances either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence

import numpy as np

from beam_jobs.masking import GOLDEN, hashed_bits, mix64

Sentences = list[np.ndarray]  # one int32 array of wordpiece ids per sentence

ITEMS, RUNS = 0x1, 0x2  # streams of `seeds`: a document copy's instances and its donor runs
# Streams of the truncation coins, apart from masking's (`masking.uniform`: 1, 2, 4).
_TRIM_A, _TRIM_B, _TRIM_REQUEST = 0x11, 0x12, 0x13


@dataclasses.dataclass(frozen=True)
class Instances:
    """A batch of instances in columns: instance i is `[CLS] A_i [SEP] B_i [SEP]` (`pair`) or
    `[CLS] A_i [SEP]`, its A the next `len_a[i]` ids of `ids` and its B the `len_b[i]` after them."""

    ids: np.ndarray  # int32, (sum(len_a + len_b),): A_0 B_0 A_1 B_1 ...
    len_a: np.ndarray  # int64, (n,)
    len_b: np.ndarray  # int64, (n,): 0 for single segments
    is_random_next: np.ndarray  # bool, (n,): NSP label 1, B was drawn from another document
    seeds: np.ndarray  # uint64, (n,): the key of the instance's masks and of its shard
    pair: bool  # two segments (NSP pairs) or one (MLM windows)

    def __len__(self) -> int:
        return len(self.len_a)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) tokens of each instance, special tokens included."""
        return self.len_a + self.len_b + (3 if self.pair else 2)

    def layout(self, seq_length: int, cls_id: int, sep_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, real, maskable), each (n, seq_length): ids padded with 0, which positions hold a
        token, which hold a token of A or B (every one but [CLS] and the [SEP]s)."""
        n, lengths = len(self), self.lengths
        col = np.arange(seq_length)[None, :]
        real = col < lengths[:, None]
        sep_a = self.len_a[:, None] + 1
        maskable = real & (col != 0) & (col != sep_a) & (col != lengths[:, None] - 1)
        tokens = np.zeros((n, seq_length), np.int64)
        tokens[maskable] = self.ids  # row-major: each row's A, then its B
        rows = np.arange(n)
        tokens[:, 0] = cls_id
        tokens[rows, sep_a[:, 0]] = sep_id
        tokens[rows, lengths - 1] = sep_id
        return tokens, real, maskable

    def segment_ids(self, seq_length: int) -> np.ndarray:
        """(n, seq) 0 for [CLS] A [SEP] and padding, 1 for B [SEP] (none in a single segment)."""
        col = np.arange(seq_length)[None, :]
        return ((col >= self.len_a[:, None] + 2) & (col < self.lengths[:, None])).astype(np.int64)



def concat_columns(parts: Sequence):
    """Batches of one column dataclass (`Instances`, `Plan`, `donors.Requests`, ...) joined array
    field by array field; a field that is not an array must be the same in every batch."""
    if len(parts) == 1:
        return parts[0]
    cls, values = type(parts[0]), {}
    for field in dataclasses.fields(cls):
        got = [getattr(p, field.name) for p in parts]
        if isinstance(got[0], np.ndarray):
            values[field.name] = np.concatenate(got)
        elif len(set(got)) == 1:
            values[field.name] = got[0]
        else:
            raise ValueError(f"cannot join {cls.__name__} batches that differ in {field.name}: {sorted(set(got))}")
    return cls(**values)


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


def seeds(count: int, base: int, stream: int) -> np.ndarray:
    """(count,) uint64 seeds of a document copy's items (`stream`: ITEMS or RUNS) from its seed
    `base` (a `stable_int`): splitmix64 steps, distinct for every item, one numpy call for all."""
    with np.errstate(over="ignore"):
        key = mix64(np.asarray([base], np.uint64) ^ np.uint64(stream))
        return mix64(key + np.arange(count, dtype=np.uint64) * GOLDEN)


def gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """flat[starts[0]:starts[0] + lengths[0]], flat[starts[1]:...], ... back to back, in one gather."""
    lengths = np.asarray(lengths, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return flat[np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets - np.asarray(starts, np.int64), lengths)]


def coin_heads(seeds_: np.ndarray, stream: int, flips: np.ndarray) -> np.ndarray:
    """(n,) heads among `flips[i]` fair coins, the coins hashed from (seed, stream): Binomial(flips, 1/2)."""
    flips = np.asarray(flips, np.int64)
    words = max(1, -(-int(flips.max(initial=0)) // 64))
    bits = hashed_bits(seeds_, stream, words)  # (n, words)
    left = np.clip(flips[:, None] - 64 * np.arange(words)[None, :], 0, 64).astype(np.uint64)  # coins in each word
    keep = np.where(left >= 64, np.uint64(2**64 - 1), (np.uint64(1) << np.minimum(left, 63)) - np.uint64(1))
    return np.bitwise_count(bits & keep).sum(axis=1).astype(np.int64)


def truncate_pairs(len_a: np.ndarray, len_b: np.ndarray, max_num_tokens: int, seeds_: np.ndarray,
                   streams: tuple[int, int] = (_TRIM_A, _TRIM_B)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """BERT's `truncate_seq_pair` for a batch, on lengths: trim the longer side one token at a
    time (B on a tie), from the front or the back at random. Returns (front_a, kept_a, front_b,
    kept_b): tokens cut from each side's front and the tokens it keeps.

    In closed form, with the same distribution: how many tokens each side loses follows from
    the lengths alone (the longer side down to the other's length, then both in turn, B first),
    and of a side's k cuts, Binomial(k, 1/2) come off the front (one coin each, as BERT), the
    coins hashed from the instance's seed.
    """
    len_a, len_b = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    excess = np.maximum(len_a + len_b - max_num_tokens, 0)
    cut_a = np.minimum(excess, np.maximum(0, len_a - len_b))
    cut_b = np.minimum(excess - cut_a, np.maximum(0, len_b - len_a))
    rest = excess - cut_a - cut_b
    cut_a, cut_b = cut_a + rest // 2, cut_b + (rest + 1) // 2
    return coin_heads(seeds_, streams[0], cut_a), len_a - cut_a, coin_heads(seeds_, streams[1], cut_b), len_b - cut_b


def pairs(flat: np.ndarray, a_start: np.ndarray, len_a: np.ndarray, b_start: np.ndarray, len_b: np.ndarray,
          is_random: bool, max_num_tokens: int, seeds_: np.ndarray) -> Instances:
    """Sentence pairs with A = flat[a_start:a_start + len_a] and B likewise, truncated to
    `max_num_tokens` as BERT does."""
    front_a, kept_a, front_b, kept_b = truncate_pairs(len_a, len_b, max_num_tokens, seeds_)
    starts = np.stack([np.asarray(a_start) + front_a, np.asarray(b_start) + front_b], axis=1).ravel()
    ids = gather(flat, starts, np.stack([kept_a, kept_b], axis=1).ravel())
    return Instances(ids.astype(np.int32, copy=False), kept_a, kept_b, np.full(len(kept_a), is_random),
                     np.asarray(seeds_, np.uint64), True)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Plan:
    """A document copy's instances in order, as ranges of its tokens (`np.concatenate(doc)`).
    Item i is A = [a_start[i], a_end[i]) and either its true next B = [a_end[i], b_end[i])
    (`target_b[i] == 0`) or a request for a random B of `target_b[i]` tokens."""

    a_start: np.ndarray
    a_end: np.ndarray
    b_end: np.ndarray
    target_b: np.ndarray

    def __len__(self) -> int:
        return len(self.a_start)

    @property
    def requests(self) -> np.ndarray:
        return self.target_b > 0


def plan_instances(lengths: Sequence[int], max_seq_length: int, short_seq_prob: float, rng: random.Random) -> Plan:
    """The sentence-pair instances of one tokenized document (`lengths`: its sentences' token
    counts), in order; a request stands where BERT would draw a random B. A request's A may be
    longer than the sequence holds: `trim_requests` cuts it as truncation would."""
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    # Usually fill the sequence; sometimes a shorter one so the model sees short inputs.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    out: list[tuple[int, int, int, int]] = []
    first, length, i, count = 0, 0, 0, len(lengths)  # the chunk: sentences [first, i]
    while i < count:
        length += lengths[i]
        if i == count - 1 or length >= target:
            size = i - first + 1
            a_end = first + (rng.randint(1, size - 1) if size >= 2 else 1)
            if size == 1 or rng.random() < 0.5:
                a_tokens = bounds[a_end] - bounds[first]
                out.append((bounds[first], bounds[a_end], bounds[a_end], max(1, target - min(a_tokens, max_num_tokens - 1))))
                i = a_end - 1  # the unused sentences of this chunk go back for the next instance
            else:
                out.append((bounds[first], bounds[a_end], bounds[i + 1], 0))
            first, length = i + 1, 0
        i += 1
    columns = np.array(out, np.int64).reshape(-1, 4)
    return Plan(*(np.ascontiguousarray(columns[:, k]) for k in range(4)))


def trim_requests(a_start: np.ndarray, a_end: np.ndarray, max_num_tokens: int,
                  seeds_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Requests' A cut to `max_num_tokens - 1` (B takes >= 1 token), as truncation would: (start, length)."""
    front, kept, _, _ = truncate_pairs(a_end - a_start, np.zeros_like(a_start), max_num_tokens - 1, seeds_,
                                       (_TRIM_REQUEST, _TRIM_REQUEST))  # fmt: skip
    return a_start + front, kept


def donor_runs(bounds: np.ndarray, starts: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each start (a sentence index), the document's sentences from there on, at most
    `max_tokens` tokens in all (the last one cut): enough for any B, since B never exceeds
    `max_seq_length - 3`. `bounds`: (sentences + 1,) token offsets of the sentences.

    Returns (token start (runs,), sentences per run (runs,), sentence ends counted from each run's
    start, back to back (sum of sentences,))."""
    starts = np.asarray(starts, np.int64)
    lo = bounds[starts]
    hi = np.minimum(lo + max_tokens, bounds[-1])
    last = np.searchsorted(bounds, hi)  # the run's last sentence (cut at hi) ends at bounds[last] >= hi
    counts = last - starts
    sentence = gather(np.arange(len(bounds), dtype=np.int64), starts + 1, counts)  # each run's sentence ends' indices
    ends = np.minimum(bounds[sentence], np.repeat(hi, counts)) - np.repeat(lo, counts)
    return lo, counts, ends


def donor_starts(num_sentences: int, k: int, rng: random.Random) -> list[int]:
    """`k` sentence indices to start donor runs at: distinct while the document has enough."""
    if num_sentences == 0:
        return []
    picks = []
    while len(picks) < k:
        picks += rng.sample(range(num_sentences), min(num_sentences, k - len(picks)))
    return picks


def b_lengths(target_b: np.ndarray, run: np.ndarray, run_count: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """B's length for each request (`target_b`) given its run (`run`, an index into the runs): as
    BERT, whole sentences of the run until B reaches its target length (the first sentence end at
    or past it; the whole run if none is). Run r's sentence ends, counted from its start, are the
    next `run_count[r]` of `ends`."""
    first = np.cumsum(run_count) - run_count
    # One searchsorted for every request: each run's ends lifted into a band of their own, so
    # the whole array is sorted and a request's search stays inside its run's band.
    band = np.int64(1) << np.int64(40)
    lifted = np.asarray(ends, np.int64) + np.repeat(np.arange(len(run_count), dtype=np.int64) * band, run_count)
    run = np.asarray(run, np.int64)
    pos = np.searchsorted(lifted, run * band + np.asarray(target_b, np.int64))
    return ends[np.minimum(pos, first[run] + run_count[run] - 1)]


def complete(flat: np.ndarray, a_start: np.ndarray, len_a: np.ndarray, target_b: np.ndarray, run: np.ndarray,
             run_start: np.ndarray, run_count: np.ndarray, ends: np.ndarray, max_seq_length: int,
             seeds_: np.ndarray) -> Instances:
    """The random-next instances of requests (A = flat[a_start:a_start + len_a], `target_b`) with B
    from the start of their runs (`run`: an index into the runs; run r starts at flat[run_start[r]],
    its sentence ends as in `b_lengths`)."""
    len_b = b_lengths(target_b, run, run_count, ends)
    return pairs(flat, a_start, len_a, np.asarray(run_start)[run], len_b, True, max_seq_length - 3, seeds_)


def mlm_windows(doc: Sentences, max_seq_length: int, short_seq_prob: float, is_suffix: np.ndarray,
                rng: random.Random, seeds_base: int) -> Instances:
    """Single-segment instances `[CLS] tokens [SEP]` over the document's tokens in order.

    Each window takes `max_seq_length - 2` tokens (a random shorter target with
    `short_seq_prob`, as the pairs), moved back to start the next window on a
    word (not a `##` piece) so whole-word masking sees whole words.
    """
    tokens = np.concatenate(doc) if doc else np.zeros(0, np.int32)
    limit = max_seq_length - 2
    sizes, start = [], 0
    while start < len(tokens):
        target = rng.randint(1, limit) if rng.random() < short_seq_prob else limit
        end = min(start + target, len(tokens))
        if end < len(tokens):
            cut = end
            while cut > start + 1 and is_suffix[tokens[cut]]:  # (the window's first piece stays)
                cut -= 1
            end = cut if cut > start + 1 else end
        sizes.append(end - start)
        start = end
    n = len(sizes)
    return Instances(tokens.astype(np.int32, copy=False), np.array(sizes, np.int64), np.zeros(n, np.int64),
                     np.zeros(n, bool), seeds(n, seeds_base, ITEMS), False)  # fmt: skip
