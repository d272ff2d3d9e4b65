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


def _packed_varints(matrix: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(records, k) integers -> (all rows' packed varints back to back, byte offset of each row (records+1,))."""
    records = matrix.shape[0]
    if matrix.size and 0 <= matrix.min() and matrix.max() < 0x80:  # one byte each: the bytes are the values
        width = matrix.size // records
        return np.ascontiguousarray(matrix, np.uint8).tobytes(), np.arange(records + 1, dtype=np.int64) * width
    u = np.ascontiguousarray(matrix, dtype=np.int64).view(np.uint64).reshape(-1)
    if u.size and int(u.max()) < 1 << 32:  # ids and positions: 32-bit arithmetic, half the memory traffic
        u = u.astype(np.uint32)
    top = int(u.max()) if u.size else 0
    width = max(1, (top.bit_length() + 6) // 7)  # bytes of the largest value (a uint64 needs up to 10)
    lengths = np.ones(u.shape, dtype=np.int8)
    for k in range(1, width):
        lengths += u >= u.dtype.type(1 << (7 * k))
    # (values, width) bytes, continuation bit set on all but each value's last; a boolean mask
    # keeps each value's first `length` bytes in row-major order (a scatter cost 3x more).
    groups = np.empty((u.size, width), np.uint8)
    for k in range(width):
        groups[:, k] = ((u >> u.dtype.type(7 * k)) & u.dtype.type(0x7F)).astype(np.uint8) | ((lengths > k + 1).astype(np.uint8) << 7)
    out = groups[np.arange(width)[None, :] < lengths[:, None]]
    per_row = lengths.reshape(records, -1).sum(axis=1, dtype=np.int64)
    return out.tobytes(), np.concatenate(([0], np.cumsum(per_row)))


def _packed_floats(matrix: np.ndarray) -> tuple[bytes, np.ndarray]:
    flat = np.ascontiguousarray(matrix, dtype="<f4")
    width = 4 * (flat.shape[1] if flat.ndim > 1 else 1)
    return flat.tobytes(), np.arange(matrix.shape[0] + 1, dtype=np.int64) * width


def _varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) non-negative lengths -> ((n, width) varint bytes, (n,) byte count of each)."""
    u = values.astype(np.uint64)
    lengths = np.ones(u.shape, np.int64)
    for k in range(1, 10):
        lengths += u >= np.uint64(1 << (7 * k))
    width = int(lengths.max()) if lengths.size else 1
    out = np.zeros((u.size, width), np.uint8)
    for k in range(width):
        out[:, k] = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | ((lengths > k + 1).astype(np.uint8) << 7)
    return out, lengths


class _Writer:
    """Appends the same kind of segment to every record of a batch at once: `pos` (n,) is each
    record's write position in the flat output buffer `out`."""

    def __init__(self, out: np.ndarray, pos: np.ndarray):
        self.out, self.pos = out, pos

    def const(self, data: bytes) -> None:
        for k, byte in enumerate(data):
            self.out[self.pos + k] = byte
        self.pos += len(data)

    def varint(self, values: np.ndarray) -> None:
        matrix, lengths = _varint_matrix(values)
        for k in range(matrix.shape[1]):
            sel = lengths > k
            self.out[self.pos[sel] + k] = matrix[sel, k]
        self.pos += lengths

    def ragged(self, data: np.ndarray, offsets: np.ndarray) -> None:
        """Record r gets data[offsets[r]:offsets[r + 1]]."""
        lengths = np.diff(offsets)
        total = int(lengths.sum())
        if total:
            skip = np.cumsum(lengths) - lengths  # (n,): bytes of the records before
            step = np.arange(total)
            self.out[np.repeat(self.pos - skip, lengths) + step] = data[np.repeat(offsets[:-1] - skip, lengths) + step]
        self.pos += lengths


def _len(lengths: np.ndarray) -> np.ndarray:
    """Bytes of a length-prefixed field of `lengths` bytes: its tag, varint and body (tag 1 byte)."""
    return 1 + _varint_matrix(lengths)[1] + lengths


def encode(columns: dict[str, tuple[bool, np.ndarray]]) -> list[bytes]:
    """Serialized Examples, one per row.

    `columns` maps a feature name to (is_float, (records, k) values), every
    matrix with the same number of rows; k may differ between features. Every length
    header is computed for all records at once and written with numpy (per-record Python
    assembly cost ~70 us a record, the largest part of serialization).
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
        data, offsets = (_packed_floats if is_float else _packed_varints)(values.reshape(num_records, -1))
        offsets = np.asarray(offsets, np.int64)
        payload = np.diff(offsets)  # (n,) packed bytes
        packed = np.where(payload > 0, _len(payload), 0)  # an empty packed field is omitted
        feature = _len(packed)  # kind tag + length + packed field
        key = name.encode("utf-8")
        prefix = b"\x0a" + varint(len(key)) + key + b"\x12"
        entry = len(prefix) + _varint_matrix(feature)[1] + feature
        body += _len(entry)
        features.append((prefix, _FLOAT_FEATURE if is_float else _INT_FEATURE, np.frombuffer(data, np.uint8),
                         offsets, payload, packed, feature, entry))  # fmt: skip
    record = _len(body)
    ends = np.cumsum(record)
    out = np.zeros(int(ends[-1]), np.uint8)
    w = _Writer(out, ends - record)
    w.const(b"\x0a")
    w.varint(body)
    for prefix, kind, data, offsets, payload, packed, feature, entry in features:
        w.const(b"\x0a")
        w.varint(entry)
        w.const(prefix)
        w.varint(feature)
        w.const(kind)
        w.varint(packed)
        if (payload > 0).all():  # every record has values (fixed-length features always do)
            w.const(b"\x0a")
            w.varint(payload)
        elif (payload > 0).any():
            raise ValueError("a feature is empty in some records only; fixed-length features never are")
        w.ragged(data, offsets)
    blob = out.tobytes()
    starts = (ends - record).tolist()
    return [blob[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]
