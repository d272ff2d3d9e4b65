"""NSP random B from the whole corpus: requests and donor runs joined in random buckets.

BERT draws the random B of an NSP pair from a random document of the corpus
it holds in memory. Here `instances.plan_instances` turns each such draw into a
request (segment A, target length of B: `Requests`) and each document copy also offers
as many donor runs (runs of its sentences, `instances.donor_runs`) as it has
requests. Requests and runs are keyed into buckets by hashes of their seeds,
grouped with a GroupByKey, and matched inside each bucket (`match`):

- B comes from another document: a run of the request's own document is passed over;
- donors are used evenly: requests take the bucket's runs in a random order,
  round robin, so with about as many runs as requests each run serves one or
  two (`donor_run_uses` in the manifest: its max is `donor_max_reuse`);
- memory is bounded: `num_buckets` grows with the corpus (from file sizes,
  known before the job starts), so a bucket holds the requests and runs of about
  `BUCKET_BYTES` of text whatever the corpus size; payloads are packed bytes,
  written to part files (`DonorParts`, a file per bundle), and only (file, offset,
  length) ranges go through the GroupByKey: Beam's local runner holds a GroupByKey's whole input in memory (about
  three times over while it hands it on), so payloads through it made the
  launcher's memory grow with the corpus;
- the same instances for any number of workers: bucket keys and the order inside
  a bucket come from content seeds, never from arrival order.

Every run is drawn uniformly over the corpus's text (a run per request, each
document offering runs in proportion to its requests), where BERT draws a
document first: a short document is as likely as a long one there.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import struct
import uuid
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import instances

BUCKET_BYTES = 16 << 20  # corpus text (x dupe_factor) per bucket: ~6 MB of packed requests and runs
BATCH = 2048  # completed instances per output element (one encode_instances call downstream)

_HEAD = struct.Struct("<BQII")  # wide ids, document hash, requests, runs
_SIZE = struct.Struct("<Q")  # a payload's length in a part file
BUFFER_BYTES = 8 << 20  # payloads a bundle holds before it writes them to its part file


def num_buckets(text_bytes: int) -> int:
    return max(1, math.ceil(text_bytes / BUCKET_BYTES))


def _segments(ids: np.ndarray, lengths: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The ids of the kept items of `ids` (items of `lengths` tokens back to back)."""
    return instances.gather(ids, (np.cumsum(lengths) - lengths)[keep], lengths[keep])


@dataclasses.dataclass(frozen=True)
class Requests:
    """Instances waiting for a random B, in columns: segment A and the length B should reach."""

    seeds: np.ndarray  # uint64, (n,): the instance's seed (its bucket, order and masks)
    target_b: np.ndarray  # (n,): BERT's target_b_length: take sentences until B has this many tokens
    len_a: np.ndarray  # (n,), each <= max_seq_length - 4
    ids: np.ndarray  # every A's ids, back to back

    def select(self, keep: np.ndarray) -> Requests:
        return Requests(self.seeds[keep], self.target_b[keep], self.len_a[keep], _segments(self.ids, self.len_a, keep))


@dataclasses.dataclass(frozen=True)
class Runs:
    """Donor runs in columns: runs of a document's sentences, and where each sentence ends."""

    keys: np.ndarray  # uint64, (r,): the run's seed (its bucket and order)
    counts: np.ndarray  # (r,): sentences of each run
    ends: np.ndarray  # (sum(counts),): each run's sentence ends, counted from the run's start
    ids: np.ndarray  # every run's ids, back to back

    @property
    def lengths(self) -> np.ndarray:
        return self.ends[np.cumsum(self.counts) - 1] if len(self.counts) else np.zeros(0, np.int64)

    def select(self, keep: np.ndarray) -> Runs:
        return Runs(self.keys[keep], self.counts[keep], self.ends[np.repeat(keep, self.counts)],
                    _segments(self.ids, self.lengths, keep))  # fmt: skip


def pack(doc: int, requests: Requests, runs: Runs, wide: bool) -> bytes:
    """One document's requests and runs of one bucket as one payload, column by column: one Beam
    element and a few numpy calls per document, where an element per request and per run cost
    ~15 us each in Beam and in unpacking (most of the join's time)."""
    ids = np.concatenate([requests.ids, runs.ids]).astype(np.int32 if wide else np.uint16)
    parts = (requests.seeds.astype(np.uint64), requests.target_b.astype(np.uint32), requests.len_a.astype(np.uint32),
             runs.keys.astype(np.uint64), runs.counts.astype(np.uint32), runs.ends.astype(np.uint32), ids)  # fmt: skip
    return _HEAD.pack(wide, doc, len(requests.seeds), len(runs.keys)) + b"".join(a.tobytes() for a in parts)


def unpack(payload: bytes | memoryview) -> tuple[int, Requests, Runs]:
    """The document hash, requests and runs of a packed payload: counts as int64, the ids as packed
    (uint16 or int32) and views into the payload, not copies."""
    wide, doc, n_req, n_run = _HEAD.unpack_from(payload)
    offset = _HEAD.size

    def take(dtype, count):
        nonlocal offset
        array = np.frombuffer(payload, dtype, count, offset)
        offset += array.nbytes
        return array

    seeds, target_b, len_a = take(np.uint64, n_req), take(np.uint32, n_req), take(np.uint32, n_req)
    keys, counts = take(np.uint64, n_run), take(np.uint32, n_run)
    ends = take(np.uint32, int(counts.sum()))
    ids = take(np.int32 if wide else np.uint16, (len(payload) - offset) // (4 if wide else 2))  # as packed
    len_a, counts, ends = len_a.astype(np.int64), counts.astype(np.int64), ends.astype(np.int64)
    n_a = int(len_a.sum())
    return doc, Requests(seeds, target_b.astype(np.int64), len_a, ids[:n_a]), Runs(keys, counts, ends, ids[n_a:])


class DonorParts:
    """A bundle's payloads in one part file of `directory`: `add` them by bucket, then `close`
    gives (bucket, (path, offset, length)) ranges for the GroupByKey. Payloads wait in memory by
    bucket until `buffer_bytes` of them are waiting, then each bucket's go to the file as one
    contiguous range: a range per bucket and flush, a file per bundle. A failed bundle's file is
    never named downstream; the job removes the directory when it ends."""

    def __init__(self, directory: str, buffer_bytes: int = BUFFER_BYTES):
        self._dir, self._limit = directory, buffer_bytes
        self._path, self._fh, self._offset = None, None, 0
        self._waiting: dict = collections.defaultdict(list)
        self._waiting_bytes = 0
        self._ranges: list = []

    def add(self, bucket, payload: bytes) -> None:
        self._waiting[bucket] += (_SIZE.pack(len(payload)), payload)
        self._waiting_bytes += _SIZE.size + len(payload)
        if self._waiting_bytes >= self._limit:
            self._flush()

    def _flush(self) -> None:
        if self._fh is None:
            self._path = FileSystems.join(self._dir, f"{uuid.uuid4().hex}.donors")
            self._fh = FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        for bucket, parts in sorted(self._waiting.items()):
            data = b"".join(parts)
            self._fh.write(data)
            self._ranges.append((bucket, (self._path, self._offset, len(data))))
            self._offset += len(data)
        self._waiting.clear()
        self._waiting_bytes = 0

    def close(self) -> list[tuple[object, tuple[str, int, int]]]:
        if self._waiting:
            self._flush()
        if self._fh is not None:
            self._fh.close()
        out, self._ranges, self._fh, self._offset = self._ranges, [], None, 0
        return out

    def close_as(self, tag: str):
        """`close`, as the tagged, windowed outputs a DoFn's finish_bundle yields."""
        return [TaggedOutput(tag, WindowedValue(item, 0, [GlobalWindow()])) for item in self.close()]


def read_parts(ranges: Iterable[tuple[str, int, int]]) -> Iterable[memoryview]:
    """The payloads in (path, offset, length) ranges written by `DonorParts`."""
    for path, offset, length in sorted(ranges):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            fh.seek(offset)
            data = memoryview(fh.read(length))  # payloads are views of it, not copies
        at = 0
        while at < len(data):
            (size,) = _SIZE.unpack_from(data, at)
            yield data[at + _SIZE.size : at + _SIZE.size + size]
            at += _SIZE.size + size


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
    """((split, bucket), part-file ranges of packed requests and runs) -> `instances.Instances` batches,
    as the tagged output `outputs[split]`; use counts go to the metrics namespace `namespaces[split]`."""

    def __init__(self, max_seq_length: int, outputs: tuple[str, ...], namespaces: tuple[str, ...],
                 skipped_namespace: str):  # fmt: skip
        self._seq = max_seq_length
        self._outputs, self._namespaces, self._skipped = outputs, namespaces, skipped_namespace

    def process(self, item: tuple[tuple[int, int], Iterable[tuple[str, int, int]]]):
        (split, _), ranges = item
        docs, requests, runs = [], [], []
        for payload in read_parts(ranges):
            doc, more_requests, more_runs = unpack(payload)
            docs.append(doc)
            requests.append(more_requests)
            runs.append(more_runs)
        if not docs:
            return
        doc_ids = np.array(docs, np.uint64)
        req_doc = np.repeat(doc_ids, [len(r.seeds) for r in requests])
        run_doc = np.repeat(doc_ids, [len(r.keys) for r in runs])
        requests, runs = instances.concat_columns(requests), instances.concat_columns(runs)
        if not len(requests.seeds):
            return
        # A GroupByKey's values arrive in any order: sort by seed (a random order, and
        # the same on every runner). Equal seeds come from identical documents, so the
        # items that tie are equal and their order does not matter.
        req_order = np.lexsort((req_doc, requests.seeds))
        run_order = np.lexsort((run_doc, runs.keys))
        picks = np.array([-1 if j is None else j for j in match(req_doc[req_order].tolist(), run_doc[run_order].tolist())],
                         np.int64)  # fmt: skip
        found = picks >= 0
        if not found.all():
            Metrics.counter(self._skipped, "no_other_document_for_random_next").inc(int((~found).sum()))
        uses_metric = Metrics.distribution(self._namespaces[split], "donor_run_uses")
        for u in np.bincount(picks[found], minlength=len(run_order)).tolist():
            uses_metric.update(u)
        req, run = req_order[found], run_order[picks[found]]
        if not len(req):
            return
        flat = np.concatenate([requests.ids, runs.ids])
        a_start = np.cumsum(requests.len_a) - requests.len_a
        run_lengths = runs.lengths
        run_start = np.cumsum(run_lengths) - run_lengths + len(requests.ids)
        for lo in range(0, len(req), BATCH):  # a batch at a time: the arrays of a whole bucket would be ~10x its ids
            r, u = req[lo : lo + BATCH], run[lo : lo + BATCH]
            yield TaggedOutput(self._outputs[split], instances.complete(
                flat, a_start[r], requests.len_a[r], requests.target_b[r], u, run_start, runs.counts, runs.ends,
                self._seq, requests.seeds[r]))  # fmt: skip
