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
    u = np.ascontiguousarray(matrix, dtype=np.int64).view(np.uint64).reshape(-1)
    lengths = np.ones(u.shape, dtype=np.int64)
    for k in range(1, 10):  # a uint64 needs up to 10 groups of 7 bits
        lengths += u >= np.uint64(1 << (7 * k))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.zeros(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    for k in range(int(lengths.max()) if lengths.size else 0):
        sel = np.flatnonzero(lengths > k)
        group = ((u[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        group |= (lengths[sel] > k + 1).astype(np.uint8) << 7  # continuation bit
        out[starts[sel] + k] = group
    per_row = lengths.reshape(matrix.shape[0], -1).sum(axis=1)
    return out.tobytes(), np.concatenate(([0], np.cumsum(per_row)))


def _packed_floats(matrix: np.ndarray) -> tuple[bytes, np.ndarray]:
    flat = np.ascontiguousarray(matrix, dtype="<f4")
    width = 4 * (flat.shape[1] if flat.ndim > 1 else 1)
    return flat.tobytes(), np.arange(matrix.shape[0] + 1, dtype=np.int64) * width


def encode(columns: dict[str, tuple[bool, np.ndarray]]) -> list[bytes]:
    """Serialized Examples, one per row.

    `columns` maps a feature name to (is_float, (records, k) values), every
    matrix with the same number of rows; k may differ between features.
    """
    names = sorted(columns)  # deterministic serialization orders map keys
    if not names:
        return []
    rows = {int(columns[n][1].shape[0]) for n in names}
    if len(rows) != 1:
        raise ValueError(f"features have different numbers of records: {sorted(rows)}")
    (num_records,) = rows
    encoded = []
    for name in names:
        is_float, values = columns[name]
        data, offsets = (_packed_floats if is_float else _packed_varints)(values.reshape(num_records, -1))
        key = name.encode("utf-8")
        encoded.append((b"\x0a" + varint(len(key)) + key + b"\x12", _FLOAT_FEATURE if is_float else _INT_FEATURE,
                        data, offsets.tolist()))  # fmt: skip
    out = []
    for r in range(num_records):
        entries = []
        for prefix, kind, data, offsets in encoded:
            payload = data[offsets[r] : offsets[r + 1]]
            values = b"\x0a" + varint(len(payload)) + payload if payload else b""  # an empty packed field is omitted
            feature = kind + varint(len(values)) + values
            entry = prefix + varint(len(feature)) + feature
            entries.append(b"\x0a" + varint(len(entry)) + entry)
        body = b"".join(entries)
        out.append(b"\x0a" + varint(len(body)) + body)
    return out
