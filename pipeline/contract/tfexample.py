"""`tf.train.Example` wire encoding for a batch of fixed-shape records, in numpy.

Why by hand: the data jobs write tens of thousands of records a second, and
building each one as a protobuf message (a Python call per feature per record)
was the largest single cost of `bertpipe prepare` after TensorFlow's import
(~45 us a record). Every bertpipe record kind is a handful of fixed-length
int64/float features, so the bytes can be produced for a whole batch at once:
varints are computed column-wise over the (records, values) matrix and only the
few length headers are assembled per record. The output is byte-for-byte what
`Example.SerializeToString(deterministic=True)` gives (map keys in sorted
order); `tests/test_schema.py` checks that against protobuf itself.

Wire format (proto3, https://protobuf.dev/programming-guides/encoding/):
    Example  = 0x0A len Features
    Features = (0x0A len MapEntry)*          one per feature, keys sorted
    MapEntry = 0x0A len key  0x12 len Feature
    Feature  = 0x1A len Int64List | 0x12 len FloatList
    Int64List = 0x0A len packed varints     (int64 as two's complement: -1 is 10 bytes)
    FloatList = 0x0A len packed float32 little-endian
"""

from __future__ import annotations

import functools

import numpy as np

_INT_FEATURE, _FLOAT_FEATURE = b"\x1a", b"\x12"  # Feature.int64_list = 3, Feature.float_list = 2


@functools.lru_cache(maxsize=65536)
def varint(value: int) -> bytes:
    """One non-negative length as a protobuf varint (cached: lengths repeat)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed_varints(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(records, k) integers -> their packed varints as (records, k * width) bytes and which of
    them are real (None: all; a value takes 1..width bytes): a row's real bytes in order are its
    packed field."""
    if matrix.size and 0 <= matrix.min() and matrix.max() < 0x80:  # one byte each: the bytes are the values
        return np.ascontiguousarray(matrix, np.uint8), None
    records = matrix.shape[0]
    u = np.ascontiguousarray(matrix, dtype=np.int64).view(np.uint64).reshape(-1)
    if u.size and int(u.max()) < 1 << 32:  # ids and positions: 32-bit arithmetic, half the memory traffic
        u = u.astype(np.uint32)
    top = int(u.max()) if u.size else 0
    width = max(1, (top.bit_length() + 6) // 7)  # bytes of the largest value (a uint64 needs up to 10)
    lengths = np.ones(u.shape, dtype=np.int8)
    for k in range(1, width):
        lengths += u >= u.dtype.type(1 << (7 * k))
    # (values, width) bytes, continuation bit set on all but each value's last.
    groups = np.empty((u.size, width), np.uint8)
    for k in range(width):
        groups[:, k] = ((u >> u.dtype.type(7 * k)) & u.dtype.type(0x7F)).astype(np.uint8) | ((lengths > k + 1).astype(np.uint8) << 7)
    real = np.arange(width, dtype=np.int8)[None, :] < lengths[:, None]
    return groups.reshape(records, -1), real.reshape(records, -1)


def _varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) non-negative lengths -> ((n, width) varint bytes, (n,) byte count of each)."""
    u = values.astype(np.uint64)
    width = max(1, (int(u.max()).bit_length() + 6) // 7) if u.size else 1  # bytes of the largest
    lengths = np.ones(u.shape, np.int64)
    for k in range(1, width):
        lengths += u >= np.uint64(1 << (7 * k))
    out = np.zeros((u.size, width), np.uint8)
    for k in range(width):
        out[:, k] = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | ((lengths > k + 1).astype(np.uint8) << 7)
    return out, lengths


class _Segments:
    """Each record's bytes as a row of segments: a segment is (records, w) bytes and which of
    them are real (None: all). Every record's segments are appended in the same order, so
    joining them side by side and keeping the real bytes row-major is every record back to
    back (one boolean gather; writing each record's pieces at its own offset cost ~7 us a
    record in fancy indexing)."""

    def __init__(self, records: int):
        self.records, self.bytes, self.real = records, [], []

    def const(self, data: bytes) -> None:
        self.bytes.append(np.broadcast_to(np.frombuffer(data, np.uint8), (self.records, len(data))))
        self.real.append(None)

    def data(self, matrix: np.ndarray, real: np.ndarray | None) -> None:
        self.bytes.append(matrix)
        self.real.append(real)

    def varint(self, values: np.ndarray) -> None:
        matrix, lengths = _varint_matrix(values)
        self.data(matrix, np.arange(matrix.shape[1])[None, :] < lengths[:, None] if matrix.shape[1] > 1 else None)

    def join(self) -> list[bytes]:
        real = np.concatenate([np.ones(b.shape, bool) if r is None else r for b, r in zip(self.bytes, self.real, strict=True)],
                              axis=1)  # fmt: skip
        blob = np.concatenate(self.bytes, axis=1)[real].tobytes()
        ends = np.cumsum(real.sum(axis=1)).tolist()
        return [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _len(lengths: np.ndarray) -> np.ndarray:
    """Bytes of a length-prefixed field of `lengths` bytes: its tag, varint and body (tag 1 byte)."""
    return 1 + _varint_matrix(lengths)[1] + lengths


def encode(columns: dict[str, tuple[bool, np.ndarray]]) -> list[bytes]:
    """Serialized Examples, one per row.

    `columns` maps a feature name to (is_float, (records, k) values), every
    matrix with the same number of rows; k may differ between features. Every length
    header is computed for all records at once and the records assembled with numpy
    (per-record Python assembly cost ~70 us a record, the largest part of serialization).
    """
    names = sorted(columns)  # deterministic serialization orders map keys
    if not names:
        return []
    rows = {int(columns[n][1].shape[0]) for n in names}
    if len(rows) != 1:
        raise ValueError(f"features have different numbers of records: {sorted(rows)}")
    (num_records,) = rows
    if num_records == 0:
        return []
    features = []
    body = np.zeros(num_records, np.int64)
    for name in names:
        is_float, values = columns[name]
        values = values.reshape(num_records, -1)
        if is_float:
            data, real = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(num_records, -1), None
        else:
            data, real = _packed_varints(values)
        payload = np.full(num_records, data.shape[1], np.int64) if real is None else real.sum(axis=1, dtype=np.int64)
        packed = np.where(payload > 0, _len(payload), 0)  # an empty packed field is omitted
        feature = _len(packed)  # kind tag + length + packed field
        key = name.encode("utf-8")
        prefix = b"\x0a" + varint(len(key)) + key + b"\x12"
        entry = len(prefix) + _varint_matrix(feature)[1] + feature
        body += _len(entry)
        features.append((prefix, _FLOAT_FEATURE if is_float else _INT_FEATURE, data, real, payload, packed, feature, entry))
    out = _Segments(num_records)
    out.const(b"\x0a")
    out.varint(body)
    for prefix, kind, data, real, payload, packed, feature, entry in features:
        out.const(b"\x0a")
        out.varint(entry)
        out.const(prefix)
        out.varint(feature)
        out.const(kind)
        out.varint(packed)
        if (payload > 0).all():  # every record has values (fixed-length features always do)
            out.const(b"\x0a")
            out.varint(payload)
        elif (payload > 0).any():
            raise ValueError("a feature is empty in some records only; fixed-length features never are")
        out.data(data, real)
    return out.join()
