"""NSP random B from the whole corpus: requests and donor runs joined in random buckets.

BERT draws the random B of an NSP pair from a random document of the corpus
it holds in memory. Here `instances.plan_instances` turns each such draw into a
`Request` (segment A, target length of B) and each document copy also offers
as many donor runs (runs of its sentences, `instances.donor_runs`) as it has
requests. Requests and runs are keyed into buckets by hashes of their seeds,
grouped with a GroupByKey, and matched inside each bucket (`match`):

- B comes from another document: a run of the request's own document is passed over;
- donors are used evenly: requests take the bucket's runs in a random order,
  round robin, so with about as many runs as requests each run serves one or
  two (`donor_run_uses` in the manifest: its max is `donor_max_reuse`);
- memory is bounded: `num_buckets` grows with the corpus (from file sizes,
  known before the job starts), so a bucket holds the requests and runs of about
  `BUCKET_BYTES` of text whatever the corpus size; payloads are packed bytes;
- the same instances for any number of workers: bucket keys and the order inside
  a bucket come from content seeds, never from arrival order.

Every run is drawn uniformly over the corpus's text (a run per request, each
document offering runs in proportion to its requests), where BERT draws a
document first: a short document is as likely as a long one there.
"""

from __future__ import annotations

import collections
import math
import random
import struct
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from beam_jobs import instances
from beam_jobs.instances import Request, Run

BUCKET_BYTES = 32 << 20  # corpus text (x dupe_factor) per bucket: ~10 MB of packed requests and runs
BATCH = 512  # completed instances per output element (one serialize_batch call downstream)

_HEAD = struct.Struct("<BQII")  # wide ids, document hash, requests, runs


def num_buckets(text_bytes: int) -> int:
    return max(1, math.ceil(text_bytes / BUCKET_BYTES))


def pack(doc: int, requests: list[tuple[int, Request]], runs: list[tuple[int, Run]], wide: bool) -> bytes:
    """One document's requests (seed, Request) and runs (key, Run) of one bucket as one payload,
    column by column: one Beam element and a few numpy calls per document, where an element
    per request and per run cost ~15 us each in Beam and in unpacking (most of the join's time)."""
    columns = (
        np.array([seed for seed, _ in requests], np.uint64),
        np.array([r.target_b for _, r in requests], np.uint32),
        np.array([len(r.tokens_a) for _, r in requests], np.uint32),
        np.array([key for key, _ in runs], np.uint64),
        np.array([len(run.ends) for _, run in runs], np.uint32),
    )
    ends = [run.ends for _, run in runs]
    ids = [r.tokens_a for _, r in requests] + [run.ids for _, run in runs]
    parts = (*columns, np.concatenate(ends).astype(np.uint32) if ends else np.zeros(0, np.uint32),
             np.concatenate(ids).astype(np.int32 if wide else np.uint16) if ids else np.zeros(0, np.uint16))
    return _HEAD.pack(wide, doc, len(requests), len(runs)) + b"".join(a.tobytes() for a in parts)


def unpack(payload: bytes) -> tuple[list[tuple[int, int, Request]], list[tuple[int, int, Run]]]:
    """The (seed, document hash, Request) and (key, document hash, Run) of a packed payload; the
    arrays are views into the payload, not copies (a bucket is held whole while it is matched)."""
    wide, doc, n_req, n_run = _HEAD.unpack_from(payload)
    offset = _HEAD.size

    def take(dtype, count):
        nonlocal offset
        array = np.frombuffer(payload, dtype, count, offset)
        offset += array.nbytes
        return array

    seeds, target_b, len_a = take(np.uint64, n_req), take(np.uint32, n_req), take(np.uint32, n_req)
    keys, sentences = take(np.uint64, n_run), take(np.uint32, n_run)
    ends = take(np.uint32, int(sentences.sum())).astype(np.int64)
    ids = take(np.int32 if wide else np.uint16, (len(payload) - offset) // (4 if wide else 2))
    a_end = np.cumsum(len_a, dtype=np.int64).tolist()
    requests = [(seed, doc, Request(ids[a - n : a], target))
                for seed, target, n, a in zip(seeds.tolist(), target_b.tolist(), len_a.tolist(), a_end, strict=True)]
    # Run r: sentences [first[r], last[r]) of `ends` (counted from the run's start), its ids after the requests'.
    last = np.cumsum(sentences, dtype=np.int64)
    first = last - sentences
    size = ends[last - 1]  # every run has a sentence
    start = np.cumsum(size) - size + (a_end[-1] if a_end else 0)
    runs = [(key, doc, Run(ids[s : s + n], ends[a:b])) for key, a, b, s, n in
            zip(keys.tolist(), first.tolist(), last.tolist(), start.tolist(), size.tolist(), strict=True)]
    return requests, runs


def match(request_docs: list[int], run_docs: list[int]) -> list[int | None]:
    """For each request (in order), the index of its run, or None if the bucket holds no
    run of another document. The runs wait in a queue (in their given order): a
    request takes the first one not of its own document, which goes to the back, so
    a run passed over serves the next request and uses differ by about one at most."""
    out: list[int | None] = []
    queue = collections.deque(range(len(run_docs)))
    for doc in request_docs:
        for step, j in enumerate(queue):
            if run_docs[j] != doc:
                del queue[step]
                queue.append(j)
                out.append(j)
                break
        else:
            out.append(None)
    return out


class MatchDonorsFn(beam.DoFn):
    """((split, bucket), packed requests and runs) -> [(seed, Instance), ...] batches, as the
    tagged output `outputs[split]`; use counts go to the metrics namespace `namespaces[split]`."""

    def __init__(self, max_seq_length: int, cls_id: int, sep_id: int, outputs: tuple[str, ...],
                 namespaces: tuple[str, ...], skipped_namespace: str):  # fmt: skip
        self._seq, self._cls, self._sep = max_seq_length, cls_id, sep_id
        self._outputs, self._namespaces, self._skipped = outputs, namespaces, skipped_namespace

    def process(self, item: tuple[tuple[int, int], Iterable[bytes]]):
        (split, _), payloads = item
        requests, runs = [], []
        for payload in payloads:
            more_requests, more_runs = unpack(payload)
            requests += more_requests
            runs += more_runs
        # A GroupByKey's values arrive in any order: sort by seed (a random order, and
        # the same on every runner). Equal seeds come from identical documents, so the
        # items that tie are equal and their order does not matter.
        requests.sort(key=lambda r: (r[0], r[1]))
        runs.sort(key=lambda r: (r[0], r[1]))
        picks = match([doc for _, doc, _ in requests], [doc for _, doc, _ in runs])
        uses = np.zeros(len(runs), np.int64)
        batch, unmatched = [], 0
        for (seed, _, request), j in zip(requests, picks, strict=True):
            if j is None:
                unmatched += 1
                continue
            uses[j] += 1
            rng = random.Random(instances.stable_int(seed, "random_next"))
            batch.append((seed, instances.complete(request, runs[j][2], self._seq, self._cls, self._sep, rng)))
            if len(batch) == BATCH:
                yield TaggedOutput(self._outputs[split], batch)
                batch = []
        if batch:
            yield TaggedOutput(self._outputs[split], batch)
        if unmatched:
            Metrics.counter(self._skipped, "no_other_document_for_random_next").inc(unmatched)
        uses_metric = Metrics.distribution(self._namespaces[split], "donor_run_uses")
        for u in uses.tolist():
            uses_metric.update(u)
