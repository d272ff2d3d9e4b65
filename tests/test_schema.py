import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.contract import schema
from pipeline.contract.errors import ContractError


def _record(shape):
    rng = np.random.default_rng(0)
    values = {}
    for f in schema.features(schema.PRETRAIN_STATIC):
        n = int(np.prod(shape[f.name]))
        values[f.name] = rng.random(n).tolist() if f.dtype == schema.FLOAT else rng.integers(0, 100, n).tolist()
    return values


def test_round_trip_every_feature_of_a_pretraining_record():
    shape = schema.shapes(schema.PRETRAIN_STATIC, seq_length=16, max_predictions=3)
    values = _record(shape)
    blob = schema.serialize(schema.PRETRAIN_STATIC, values, shape)
    parsed = tf.io.parse_single_example(blob, schema.parse_spec(schema.PRETRAIN_STATIC, shape))
    assert set(parsed) == {f.name for f in schema.features(schema.PRETRAIN_STATIC)}
    for name, want in values.items():
        np.testing.assert_allclose(parsed[name].numpy().reshape(-1), np.asarray(want, dtype=np.float32), rtol=1e-6)
    assert parsed[schema.TOKEN_IDS].shape == (16,)
    assert parsed[schema.MASK_WEIGHTS].dtype == tf.float32


def test_long_document_shapes_are_two_dimensional():
    shape = schema.shapes(schema.LONG_DOCUMENT, seq_length=8, max_chunks=3)
    assert shape[schema.TOKEN_IDS] == (3, 8)
    assert shape[schema.CHUNK_MASK] == (3,)


def test_serialize_refuses_missing_or_misshapen_features():
    shape = schema.shapes(schema.PRETRAIN_STATIC, seq_length=16, max_predictions=3)
    values = _record(shape)
    bad = dict(values)
    del bad[schema.NSP_LABEL]
    with pytest.raises(ContractError, match="missing feature 'nsp_label'"):
        schema.serialize(schema.PRETRAIN_STATIC, bad, shape)
    bad = dict(values, token_ids=[1, 2, 3])
    with pytest.raises(ContractError, match="has 3 values"):
        schema.serialize(schema.PRETRAIN_STATIC, bad, shape)


def test_manifest_round_trip_and_checks(tmp_path):
    m = schema.DataManifest(
        kind=schema.PRETRAIN_STATIC,
        seq_length=128,
        max_predictions=20,
        vocab_file="vocab.txt",
        vocab_sha256="ab",
        vocab_size=8000,
        shards={"part-00000.tfrecord": 10, "part-00001.tfrecord": 7},
        skipped={"empty_document": 2},
    )
    schema.write_manifest(str(tmp_path), m)
    back = schema.read_manifest(str(tmp_path))
    assert back == m and back.num_records == 17
    back.check(vocab_size=8000, seq_length=512, kinds=[schema.PRETRAIN_STATIC, schema.PRETRAIN_DYNAMIC])
    with pytest.raises(ContractError, match="vocab of 8000 tokens but the model has 30522"):
        back.check(vocab_size=30522)
    with pytest.raises(ContractError, match="at most 64"):
        back.check(seq_length=64)
    with pytest.raises(ContractError, match="this stage reads classification"):
        back.check(kinds=[schema.CLASSIFICATION])


def test_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ContractError, match="not found: run the data job first"):
        schema.read_manifest(str(tmp_path))
    (tmp_path / schema.MANIFEST_NAME).write_text(json.dumps({"kind": "x"}))
    with pytest.raises(ContractError, match="is not a bertpipe data manifest"):
        schema.read_manifest(str(tmp_path))
    old = dict(kind=schema.CLASSIFICATION, seq_length=8, vocab_file="v", vocab_sha256="s", vocab_size=5, shards={}, schema_version=0)
    (tmp_path / schema.MANIFEST_NAME).write_text(json.dumps(old))
    with pytest.raises(ContractError, match="schema version 0"):
        schema.read_manifest(str(tmp_path)).check()


def test_no_feature_name_is_spelled_outside_the_schema(repo_root):
    """The contract: feature names live in pipeline/contract/schema.py only."""
    import os
    import re

    names = [getattr(schema, n) for n in dir(schema) if n.isupper() and isinstance(getattr(schema, n), str)]
    names = [n for n in names if "_" in n and n not in schema.RECORD_KINDS and n != schema.MANIFEST_NAME]
    offenders = []
    for pkg in ("pipeline", "bert_keras", "beam_jobs"):
        for root, _, files in os.walk(os.path.join(repo_root, pkg)):
            for f in files:
                if not f.endswith(".py") or (pkg == "pipeline" and f == "schema.py"):
                    continue
                text = open(os.path.join(root, f), encoding="utf-8").read()
                for name in names:
                    if re.search(rf"[\"']{name}[\"']", text):
                        offenders.append(f"{pkg}/{f}: {name}")
    assert not offenders, offenders


def _protobuf_bytes(kind, row, shape):
    """The same record built with protobuf's own Example message (the reference encoding)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for f in schema.features(kind):
        flat = np.asarray(row[f.name]).reshape(-1)
        feature = example.features.feature[f.name]
        if f.dtype == schema.FLOAT:
            feature.float_list.value.extend(flat.astype(np.float32).tolist())
        else:
            feature.int64_list.value.extend(flat.astype(np.int64).tolist())
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize("kind", schema.RECORD_KINDS)
def test_batch_encoding_is_byte_identical_to_protobuf(kind):
    """The hand-written encoder must give protobuf's deterministic bytes, for every kind and
    for values that exercise every varint width: 0, 127/128 boundaries, big ids, -1 (10 bytes),
    the int64 extremes, and floats including negative zero and inf."""
    shape = schema.shapes(kind, seq_length=12, max_predictions=5, max_chunks=2)
    rng = np.random.default_rng(7)
    edge = np.array([0, 1, 127, 128, 16383, 16384, 30521, 2**31, 2**53 + 1, -1, -2**63, 2**63 - 1], dtype=np.int64)
    batch = {}
    for f in schema.features(kind):
        size = (6, *shape[f.name])
        if f.dtype == schema.FLOAT:
            values = rng.normal(size=size).astype(np.float32)
            values.reshape(-1)[:3] = [-0.0, np.inf, 1e-45]
        else:
            values = rng.choice(edge, size=size)
        batch[f.name] = values
    blobs = schema.serialize_batch(kind, batch, shape)
    assert len(blobs) == 6
    for r, blob in enumerate(blobs):
        assert blob == _protobuf_bytes(kind, {name: v[r] for name, v in batch.items()}, shape)
