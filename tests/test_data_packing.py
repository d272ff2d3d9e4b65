"""Packing at the data level: every instance survives intact, nothing leaks
between instances sharing a row, and padding drops."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import tensorflow as tf

from bert_keras import data, dynamic_masking, packing
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract import schema
from tests.test_data import ROOT, VOCAB, write_records

SEQ, MAX_INST = 64, 4


def _rows(ds):
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def _unpacked_instances(rows, with_preds=True):
    out = Counter()
    for r in rows:
        n = int(r[schema.PADDING_MASK].sum())
        key = (tuple(r[schema.TOKEN_IDS][:n]), tuple(r[schema.SEGMENT_IDS][:n]))
        if with_preds:
            p = int(r[schema.MASK_WEIGHTS].sum())
            key += (tuple(r[schema.MASK_POSITIONS][:p]), tuple(r[schema.MASK_IDS][:p]), int(r[schema.NSP_LABEL][0]))
        else:
            key += (int(r[schema.LABEL][0]), int(r[schema.EXAMPLE_ID][0]))
        out[key] += 1
    return out


def _packed_instances(rows, with_preds=True):
    out = Counter()
    for r in rows:
        pm = r[schema.PADDING_MASK]
        n_inst = int(r[schema.CLS_WEIGHTS].sum())
        assert 1 <= n_inst <= MAX_INST and pm.max() == n_inst
        assert (r[schema.CLS_WEIGHTS][:n_inst] == 1).all() and (r[schema.CLS_WEIGHTS][n_inst:] == 0).all()
        real = np.flatnonzero(pm > 0)
        assert (real == np.arange(len(real))).all()  # instances first, padding after
        for k in range(1, n_inst + 1):
            span = np.flatnonzero(pm == k)
            start = int(r[schema.CLS_POSITIONS][k - 1])
            assert span[0] == start and (np.diff(span) == 1).all()  # contiguous, starts at its [CLS]
            assert r[schema.TOKEN_IDS][start] == 101
            key = (tuple(r[schema.TOKEN_IDS][span]), tuple(r[schema.SEGMENT_IDS][span]))
            if with_preds:
                w = r[schema.MASK_WEIGHTS] > 0
                pos = r[schema.MASK_POSITIONS][w]
                mine = (pos >= span[0]) & (pos <= span[-1])
                key += (tuple(pos[mine] - start), tuple(r[schema.MASK_IDS][w][mine]),
                        int(r[schema.NSP_LABEL][k - 1]))
            else:
                key += (int(r[schema.LABEL][k - 1]), int(r[schema.EXAMPLE_ID][k - 1]))
            out[key] += 1
        if with_preds:  # every prediction belongs to exactly one instance's span
            w = r[schema.MASK_WEIGHTS] > 0
            assert (pm[r[schema.MASK_POSITIONS][w]] > 0).all()
    return out


def test_packing_pretraining_rows_preserves_every_instance(tmp_path):
    manifest = write_records(str(tmp_path), num_records=80, max_tokens=24, num_shards=1)
    plain = data.make_dataset(str(tmp_path), manifest, which="all", batch_size=1, training=False, deterministic=True)
    rows = [{k: v[0] for k, v in r.items()} for r in _rows(plain)]
    pred = packing.packed_predictions(manifest.max_predictions, MAX_INST)

    def pack(ds):
        return packing.pack_dataset(ds, seq_length=SEQ, max_instances=MAX_INST, max_predictions=pred, window=32, seed=0)

    packed_ds = data.make_dataset(str(tmp_path), manifest, which="all", batch_size=1, training=False,
                                  deterministic=True, pack=pack)
    packed = [{k: v[0] for k, v in r.items()} for r in _rows(packed_ds)]
    assert _packed_instances(packed) == _unpacked_instances(rows)
    assert len(packed) <= len(rows) / 2
    before = 1 - sum(r[schema.PADDING_MASK].sum() for r in rows) / (len(rows) * SEQ)
    after = 1 - sum((r[schema.PADDING_MASK] > 0).sum() for r in packed) / (len(packed) * SEQ)
    assert before > 0.5 and after < before / 2, (before, after)


def test_packing_classification_rows_keeps_labels(tmp_path):
    vocab = load_vocab(VOCAB)
    ids = special_ids(vocab)
    with open(os.path.join(ROOT, "data", "reviews", "train.jsonl"), encoding="utf-8") as fh:
        reviews = [json.loads(next(fh)) for _ in range(40)]
    pieces = make_tokenizer(vocab).tokenize(tf.constant([r["text"] for r in reviews])).to_list()
    shape = schema.shapes(schema.CLASSIFICATION, SEQ)
    with tf.io.TFRecordWriter(str(tmp_path / "part-0.tfrecord")) as writer:
        for r, p in zip(reviews, pieces, strict=True):
            toks = [ids.cls, *p[: SEQ - 2], ids.sep]
            pad = SEQ - len(toks)
            writer.write(schema.serialize(schema.CLASSIFICATION, {
                schema.TOKEN_IDS: toks + [0] * pad, schema.SEGMENT_IDS: [0] * SEQ,
                schema.PADDING_MASK: [1] * len(toks) + [0] * pad,
                schema.LABEL: [int(r["label"] == "positive")], schema.EXAMPLE_ID: [r["id"]]}, shape))
    manifest = schema.DataManifest(kind=schema.CLASSIFICATION, seq_length=SEQ, vocab_file=VOCAB, vocab_sha256="",
                                   vocab_size=len(vocab), shards={"part-0.tfrecord": 40})
    schema.write_manifest(str(tmp_path), manifest)
    plain = data.make_dataset(str(tmp_path), manifest, which="all", batch_size=1, training=False, deterministic=True)
    rows = [{k: v[0] for k, v in r.items()} for r in _rows(plain)]

    def pack(ds):
        return packing.pack_dataset(ds, seq_length=SEQ, max_instances=MAX_INST, window=40)

    packed_ds = data.make_dataset(str(tmp_path), manifest, which="all", batch_size=1, training=False, pack=pack)
    packed = [{k: v[0] for k, v in r.items()} for r in _rows(packed_ds)]
    assert _packed_instances(packed, with_preds=False) == _unpacked_instances(rows, with_preds=False)
    assert len(packed) < len(rows)


def test_dynamic_masking_after_packing_stays_inside_instances(tmp_path):
    manifest = write_records(str(tmp_path), schema.PRETRAIN_DYNAMIC, num_records=48, max_tokens=20, num_shards=1)
    pred = packing.packed_predictions(10, MAX_INST)

    def pack(ds):
        return packing.pack_dataset(ds, seq_length=SEQ, max_instances=MAX_INST, max_predictions=pred, window=48)

    spec = dynamic_masking.MaskingSpec("whole_word", 0.3, pred)
    packed = data.make_dataset(str(tmp_path), manifest, which="all", batch_size=64, training=False, pack=pack)
    batch = next(iter(packed))
    words, pm = batch[schema.WORD_IDS].numpy(), batch[schema.PADDING_MASK].numpy()
    for r in range(words.shape[0]):  # units never span two instances
        for unit in set(words[r][words[r] >= 0].tolist()):
            assert len(set(pm[r][words[r] == unit].tolist())) == 1
    masked = dynamic_masking.mask_batch(batch, spec, dynamic_masking.masking_vocab(load_vocab(VOCAB)))
    w = masked[schema.MASK_WEIGHTS].numpy() > 0
    pos = masked[schema.MASK_POSITIONS].numpy()
    for r in range(w.shape[0]):
        assert (words[r][pos[r][w[r]]] >= 0).all()
        assert len({int(pm[r][p]) for p in pos[r][w[r]]}) >= 1
    assert w.sum(axis=1).min() >= 1
