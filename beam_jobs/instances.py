"""Pretraining instances as BERT builds them (pure functions, injected rng).

Follows google-research/bert `create_instances_from_document`: fill a chunk of
sentences up to a target length (shorter with `short_seq_prob`), cut it at a
sentence boundary into A and B, and half of the time replace B with text from a
different document. The one change is where that random text comes from: BERT
picks a random document from the whole corpus held in memory; here a Beam job
holds no corpus, so B comes from a *donor pool*: a corpus-wide sample of runs of
sentences (the `pool_size` runs with the smallest content hash, chosen by a Beam
`Top` combine and broadcast to every worker as a side input). Every worker draws
from the same pool, so the draw is across the whole corpus, not one bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence

import numpy as np

Sentences = list[np.ndarray]  # one int32 array of wordpiece ids per sentence


@dataclasses.dataclass(frozen=True)
class DonorPool:
    """Runs of consecutive sentences (candidate random segments B), in flat arrays.

    Flat because the pool is a side input pickled to every worker: a few arrays
    pickle in milliseconds where ~100k small per-sentence arrays took seconds.
    Runs start at every sampled sentence, so they overlap: each distinct sentence
    is stored once and runs list sentence indices (about half the ids of storing
    every run whole on sotu), and ids are uint16 when the vocab fits.
    """

    docs: np.ndarray  # uint64, (k,): hash of each run's document, to refuse the instance's own
    first: np.ndarray  # int64, (k+1,): index in `runs` of each run's first sentence
    runs: np.ndarray  # int32, (r,): the sentences of every run, as indices into `bounds`
    bounds: np.ndarray  # int64, (s+1,): offset in `ids` of each distinct sentence
    ids: np.ndarray  # uint16 or int32, (t,): the wordpiece ids of the distinct sentences

    def __len__(self) -> int:
        return len(self.docs)

    def sentences(self, i: int) -> Sentences:
        b = self.bounds
        return [self.ids[b[j] : b[j + 1]] for j in self.runs[self.first[i] : self.first[i + 1]].tolist()]


def make_pool(runs: Sequence[tuple[int, Sentences]]) -> DonorPool:
    """DonorPool from (document hash, [sentence ids, ...]) pairs (empty runs dropped).

    A sentence array passed in several runs (the same object) is stored once.
    """
    runs = [(doc, sents) for doc, sents in runs if sents]
    index: dict[int, int] = {}  # id(array) -> its row among the distinct sentences
    distinct: list[np.ndarray] = []
    order = []
    for _, sents in runs:
        for a in sents:
            j = index.get(id(a))
            if j is None:
                j = index[id(a)] = len(distinct)
                distinct.append(a)
            order.append(j)
    ids = np.concatenate(distinct) if distinct else np.zeros(0, np.int32)
    small = ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < 2**16)
    return DonorPool(
        docs=np.asarray([doc for doc, _ in runs], dtype=np.uint64),
        first=np.concatenate(([0], np.cumsum([len(sents) for _, sents in runs]))).astype(np.int64),
        runs=np.asarray(order, dtype=np.int32),
        bounds=np.concatenate(([0], np.cumsum([len(a) for a in distinct]))).astype(np.int64),
        ids=ids.astype(np.uint16 if small else np.int32),
    )


@dataclasses.dataclass(frozen=True)
class Instance:
    tokens: np.ndarray  # int32, (n,): [CLS] A [SEP] B [SEP], n <= max_seq_length
    len_a: int  # tokens of segment A
    is_random_next: bool  # NSP label 1: B was drawn from another document


def stable_int(*parts: bytes | int | str) -> int:
    """64-bit hash of the parts; seeds come from content, never from arrival order."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = part.to_bytes(16, "little", signed=True)  # seeds and 64-bit hashes
        elif isinstance(part, str):
            part = part.encode("utf-8")
        digest.update(part)
        digest.update(b"\x1f")
    return int.from_bytes(digest.digest(), "little")


def donor_candidates(doc_key: bytes, sentences: Sequence[str], max_chars: int) -> list[tuple[int, int, tuple[str, ...]]]:
    """(sort key, document hash, sentences) for a run starting at every sentence.

    The Beam job keeps the `pool_size` candidates with the smallest sort key over
    the whole corpus: a deterministic, uniform-over-sentences sample.
    """
    doc = stable_int(doc_key)
    out = []
    for i in range(len(sentences)):
        run, size = [], 0
        for sentence in sentences[i:]:
            run.append(sentence)
            size += len(sentence)
            if size >= max_chars:
                break
        out.append((stable_int(doc_key, i), doc, tuple(run)))
    return out


def _draw_donor(donors: DonorPool, doc: int, rng: random.Random) -> Sentences | None:
    # As BERT: a few tries to find another document (a one-document corpus has none).
    for _ in range(10 if len(donors) else 0):
        i = rng.randrange(len(donors))
        if int(donors.docs[i]) != doc:
            return donors.sentences(i)
    return None


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


def create_instances(
    doc: Sentences,
    doc_hash: int,
    donors: DonorPool,
    max_seq_length: int,
    short_seq_prob: float,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
) -> tuple[list[Instance], int]:
    """Instances of one tokenized document; also returns how many chunks had no random B
    available (a corpus of one document) and were dropped."""
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    # Usually fill the sequence; sometimes a shorter one so the model sees short inputs.
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    instances: list[Instance] = []
    dropped = 0
    chunk: Sentences = []
    length, i = 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = np.concatenate(chunk[:a_end])
            is_random = len(chunk) == 1 or rng.random() < 0.5
            donor = _draw_donor(donors, doc_hash, rng) if is_random else None
            if is_random and donor is None:
                if len(chunk) == 1:
                    dropped += 1
                    chunk, length, i = [], 0, i + 1
                    continue
                is_random = False
            if is_random:
                target_b = max(1, target - len(tokens_a))
                picked, size = [], 0
                for sentence in donor:
                    picked.append(sentence)
                    size += len(sentence)
                    if size >= target_b:
                        break
                tokens_b = np.concatenate(picked)
                # The unused sentences of this chunk go back for the next instance.
                i -= len(chunk) - a_end
            else:
                tokens_b = np.concatenate(chunk[a_end:])
            a_lo, a_hi, b_lo, b_hi = truncate_pair(len(tokens_a), len(tokens_b), max_num_tokens, rng)
            a, b = tokens_a[a_lo:a_hi], tokens_b[b_lo:b_hi]
            tokens = np.concatenate(([cls_id], a, [sep_id], b, [sep_id])).astype(np.int32)
            instances.append(Instance(tokens, len(a), is_random))
            chunk, length = [], 0
        i += 1
    return instances, dropped


def maskable_positions(instance: Instance) -> np.ndarray:
    """(n,) bool: every token but [CLS] and the two [SEP]s."""
    keep = np.ones(len(instance.tokens), dtype=bool)
    keep[[0, instance.len_a + 1, len(instance.tokens) - 1]] = False
    return keep


def segment_ids(instance: Instance, seq_length: int) -> np.ndarray:
    """(seq,) 0 for [CLS] A [SEP] and padding, 1 for B [SEP]."""
    out = np.zeros(seq_length, dtype=np.int64)
    out[instance.len_a + 2 : len(instance.tokens)] = 1
    return out


def pad(values: np.ndarray | Sequence[int], length: int, fill: int = 0) -> np.ndarray:
    out = np.full(length, fill, dtype=np.int64)
    out[: len(values)] = values
    return out
