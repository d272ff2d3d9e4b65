"""Every private Apache Beam API the data jobs use, in one place, each with a test in tests/test_compat.py.

Beam has no public API for these; the `apache-beam==2.77.*` pin keeps them there. This module
imports Beam only (no TensorFlow), like the data jobs' workers.

| function          | private API                                   | used by            |
|-------------------|-----------------------------------------------|--------------------|
| `write_tfrecord`  | `apache_beam.io.tfrecordio._TFRecordUtil`     | `shards` part files |
"""

from __future__ import annotations

from apache_beam.io.tfrecordio import _TFRecordUtil


def write_tfrecord(file_handle, record: bytes) -> None:
    """Append one record in TFRecord framing (length, masked crc32c, data, masked crc32c): exactly
    what tf.data reads, and what Beam's own WriteToTFRecord writes, without re-implementing it."""
    _TFRecordUtil.write_record(file_handle, record)
