"""A fixed number of TFRecord shards, written without holding records in memory.

Beam's `WriteToTFRecord(num_shards=N)` reshuffles every record through a
GroupByKey to reach exactly N files, and the DirectRunner keeps a GroupByKey's
whole input in memory: the job's memory would grow with the corpus. Here each
bundle streams its records into per-shard part files, only the part *names*
go through the GroupByKey, and one task per shard concatenates its parts into
the final file (TFRecord files concatenate record by record; GZIP is applied
while concatenating). Which shard a record lands in is a content hash given with
it (a record's shard is its key modulo the shard count), so the set of records per shard
does not depend on the number of workers.
Counts per shard reach the manifest through metrics counters.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Sequence

import apache_beam as beam
import google_crc32c
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

SHARDS = "bertpipe.shards"  # metrics namespace: records per final shard file
_COPY_BLOCK = 1 << 20


def _masked_crc32c(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked crc32c, element-wise on uint32 checksums."""
    crc = np.asarray(crc, np.uint32)
    with np.errstate(over="ignore"):
        return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)


def frame_records(records: Sequence[bytes]) -> bytes:
    """`records` in TFRecord framing, back to back: for each, its length (uint64 little-endian),
    the masked crc32c of those 8 bytes, the data, the masked crc32c of the data (what tf.data
    reads and Beam's WriteToTFRecord writes; tests/test_beam_prepare.py compares the bytes with
    Beam's writer). By hand because Beam frames one record per call, four Python calls each
    (6% of the job's profiled time at dupe 10); here the checksums are one C call per record and
    the batch one join: 0.6 us a record against Beam's 1.5 (2,048 records of ~600 bytes)."""
    n = len(records)
    if not n:
        return b""
    lengths = np.fromiter(map(len, records), np.int64, n)
    data_crc = _masked_crc32c(np.fromiter(map(google_crc32c.value, records), np.uint32, n))
    # A header's checksum depends on the length alone: one per distinct length.
    distinct, which = np.unique(lengths, return_inverse=True)
    head_crc = _masked_crc32c(np.fromiter((google_crc32c.value(int(v).to_bytes(8, "little")) for v in distinct.tolist()),
                                          np.uint32, len(distinct)))[which]  # fmt: skip
    heads = np.empty((n, 12), np.uint8)
    heads[:, :8] = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    heads[:, 8:] = head_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    head, tail = heads.tobytes(), data_crc.astype("<u4").tobytes()
    parts: list[bytes] = [b""] * (3 * n)  # one join of slices: 6x faster than placing the bytes with numpy
    parts[0::3] = [head[i : i + 12] for i in range(0, 12 * n, 12)]
    parts[1::3] = records
    parts[2::3] = [tail[i : i + 4] for i in range(0, 4 * n, 4)]
    return b"".join(parts)


def shard_name(index: int, num_shards: int, compression: str) -> str:
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return f"data-{index:05d}-of-{num_shards:05d}{suffix}"


class _WritePartsFn(beam.DoFn):
    """Stream batches of records into one part file per (bundle, shard); emit (shard, part path)."""

    def __init__(self, parts_dir: str, num_shards: int):
        self._dir, self._n = parts_dir, num_shards

    def start_bundle(self):
        self._files: dict[int, list] = {}  # shard -> [part path, file, records]

    def process(self, batch: tuple[Sequence[int], list[bytes]]):
        keys, records = batch
        shards = (np.asarray(keys, np.uint64) % np.uint64(self._n)).astype(np.int64)
        order = np.argsort(shards, kind="stable")
        counts = np.bincount(shards, minlength=self._n)
        bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
        for shard in np.flatnonzero(counts).tolist():  # each shard's records of the batch, framed in one join
            part = self._files.get(shard)
            if part is None:
                path = FileSystems.join(self._dir, f"{shard:05d}-{uuid.uuid4().hex}.part")
                part = self._files[shard] = [path, FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED), 0]
            part[1].write(frame_records([records[i] for i in order[bounds[shard] : bounds[shard + 1]].tolist()]))
            part[2] += int(counts[shard])

    def finish_bundle(self):
        for shard, (path, fh, count) in sorted(self._files.items()):
            fh.close()
            yield WindowedValue((shard, (path, count)), 0, [GlobalWindow()])
        self._files = {}


class _ConcatShardFn(beam.DoFn):
    def __init__(self, out_dir: str, num_shards: int, compression: str, namespace: str):
        self._dir, self._n, self._compression, self._namespace = out_dir, num_shards, compression, namespace

    def process(self, item):
        shard, parts = item
        parts = sorted(p for p in parts if p)  # (path, records); "" marks an empty shard
        name = shard_name(shard, self._n, self._compression)
        count = 0
        out = FileSystems.create(FileSystems.join(self._dir, name), compression_type=CompressionTypes.UNCOMPRESSED)
        sink = gzip.GzipFile(fileobj=out, mode="wb", mtime=0) if self._compression == "gzip" else out
        for part, records in parts:
            with FileSystems.open(part, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                while True:
                    block = fh.read(_COPY_BLOCK)
                    if not block:
                        break
                    sink.write(block)
            count += records
        if sink is not out:
            sink.close()
        out.close()
        if parts:
            FileSystems.delete([path for path, _ in parts])
        Metrics.counter(self._namespace, name).inc(count)
        yield name, count


class WriteShards(beam.PTransform):
    """PCollection[(content hashes, serialized records)], or a tuple of them, -> `num_shards`
    TFRecord files in `out_dir`; records per shard go to the counters of `namespace` (one per
    output directory). Each element is a batch: a sequence of uint64 content hashes and the
    list of records they key (one Beam element per record cost more than writing it).

    Each input gets its own part writer, fused with the step that makes its records:
    flattening the records first would make the DirectRunner hold every record of
    the job between the steps (a Flatten of two stages' outputs is materialized).
    """

    def __init__(self, out_dir: str, num_shards: int, compression: str = "none", namespace: str = SHARDS):
        super().__init__()
        self._dir, self._n, self._compression, self._namespace = out_dir, num_shards, compression, namespace

    def expand(self, records):
        inputs = records if isinstance(records, tuple) else (records,)
        parts_dir = FileSystems.join(self._dir, ".parts")
        parts = [pc | f"WriteParts{i or ''}" >> beam.ParDo(_WritePartsFn(parts_dir, self._n))
                 for i, pc in enumerate(inputs)]  # fmt: skip
        # Every shard gets a file, even one that no record hashed to.
        # (Not reshuffled: a few markers, and a Reshuffle adds six steps to the job's start-up.)
        every = inputs[0].pipeline | "EveryShard" >> beam.Create([(i, "") for i in range(self._n)], reshuffle=False)
        return (
            (*parts, every)
            | "AllParts" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "ConcatShards" >> beam.ParDo(_ConcatShardFn(self._dir, self._n, self._compression, self._namespace))
        )


def remove_parts_dir(out_dir: str) -> None:
    """Drop the (by then empty) part-file directory once the pipeline finished."""
    remove_tree(FileSystems.join(out_dir, ".parts"))


def remove_tree(path: str) -> None:
    """Delete a job's scratch directory (flat: files only) and its files, on any Beam filesystem
    (an object store has no directories: its files are the objects under the prefix)."""
    files = [m.path for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list]
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(path):
        FileSystems.delete([path])
