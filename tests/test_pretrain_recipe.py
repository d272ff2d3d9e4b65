"""The modern recipe's model options: MLM-only pretraining (no NSP head), and dropout off
while pretraining but back at the model's rates for fine-tuning."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras import families
from bert_keras.encoder import build_encoder
from bert_keras.pretrain import encoder_overrides, run_pretraining, uses_nsp
from bert_keras.pretraining_model import pretraining_loss
from bert_keras.starting_weights import apply_init, build_encoder_for
from pipeline.contract import schema
from pipeline.contract.config import BertConfig, PretrainConfig
from pipeline.contract.errors import ContractError
from tests.test_data import write_records

TINY = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)


def _batch(tmp_path):
    from bert_keras import data

    manifest = write_records(str(tmp_path / "batch"), num_records=8, num_shards=1)
    ds = data.make_dataset(str(tmp_path / "batch"), manifest, which="all", batch_size=8, training=False,
                           deterministic=True)
    return next(iter(ds))


def test_mlm_only_model_has_no_nsp_variables_and_its_loss_is_the_mlm_loss(tmp_path):
    keras.mixed_precision.set_global_policy("float32")
    model = families.for_config(TINY).build_pretraining_model(build_encoder(TINY, 30522), nsp=False)
    assert model.nsp_head is None
    assert not any("nsp" in v.path for v in model.variables)
    assert not model.encoder.pooler.trainable  # nothing trains it without NSP
    batch = _batch(tmp_path)
    for training in (True, False):
        outputs = model(batch, training=training)
        assert "nsp_logits" not in outputs
        loss, metrics = pretraining_loss(batch, outputs)
        assert set(metrics) == {"mlm_loss", "mlm_accuracy"}
        assert float(loss) == pytest.approx(float(metrics["mlm_loss"]))
    # The loss is the masked-LM cross-entropy and nothing else (computed here with Keras' own).
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    want = xent(batch[schema.MASK_IDS], outputs["mlm_logits"], sample_weight=batch[schema.MASK_WEIGHTS])
    assert float(loss) == pytest.approx(float(want) * float(tf.size(batch[schema.MASK_WEIGHTS]))
                                        / float(tf.reduce_sum(batch[schema.MASK_WEIGHTS])), rel=1e-5)


def _mlm_only_data(directory: str) -> schema.DataManifest:
    """Records written as MLM-only data (manifest nsp false; the NSP labels are there but mean nothing)."""
    manifest = write_records(directory, num_records=96, num_shards=2)
    manifest.nsp = False
    schema.write_manifest(directory, manifest)
    return manifest


def test_pretraining_on_mlm_only_data_trains_without_nsp_head_and_without_dropout(tmp_path):
    data_dir = str(tmp_path / "data")
    manifest = _mlm_only_data(data_dir)
    cfg = PretrainConfig(batch_size=8, steps=6, log_every=1, eval_steps=1, eval_batch_size=8, precision="float32",
                         learning_rate=1e-3, warmup_steps=0, packing=False, dropout=0.0, attention_dropout=0.0)
    result = run_pretraining(TINY, cfg, data_dir, str(tmp_path / "run"), manifest.vocab_size, seed=0,
                             log_fn=lambda s: None)
    assert result["objectives"] == "mlm" and "nsp_loss" not in result and "eval_nsp_loss" not in result
    assert result["loss"] == pytest.approx(result["mlm_loss"])
    assert (result["dropout"], result["attention_dropout"]) == (0.0, 0.0)  # pretraining's own rates
    first, last = result["history"][0]["loss"], result["history"][-1]["loss"]
    assert last < first  # it trains
    names = [name for name, _ in tf.train.list_variables(result["checkpoint"])]
    assert names and not any("nsp" in n for n in names)

    # Fine-tuning from those weights builds its encoder from model.*: dropout is back on.
    encoder, pending = build_encoder_for(result["encoder_weights"], TINY, manifest.vocab_size)
    apply_init(encoder, encoder, result["encoder_weights"], pending)
    assert (encoder.dropout, encoder.attention_dropout) == (TINY.dropout, TINY.attention_dropout) == (0.1, 0.1)
    batch = _batch(tmp_path)
    a, b = (encoder(batch, training=True)["sequence_output"].numpy() for _ in range(2))
    assert np.abs(a - b).max() > 1e-3  # dropout drew two different masks


def test_the_nsp_objective_follows_the_data_unless_the_config_says_otherwise(tmp_path):
    nsp_data = write_records(str(tmp_path / "nsp"), num_records=8)
    mlm_data = _mlm_only_data(str(tmp_path / "mlm"))
    assert uses_nsp(PretrainConfig(), nsp_data, "nsp") and not uses_nsp(PretrainConfig(), mlm_data, "mlm")
    assert not uses_nsp(PretrainConfig(nsp=False), nsp_data, "nsp")  # MLM only on NSP data
    with pytest.raises(ContractError, match="no NSP pairs") as err:
        uses_nsp(PretrainConfig(nsp=True), mlm_data, "runs/x/prepare/data")
    assert "runs/x/prepare/data" in str(err.value) and "\n" not in str(err.value)
    written = json.loads(open(os.path.join(str(tmp_path / "mlm"), schema.MANIFEST_NAME)).read())
    assert written["nsp"] is False and schema.read_manifest(str(tmp_path / "nsp")).nsp is True


def test_pretraining_dropout_overrides_only_the_pretraining_encoder():
    strategy = tf.distribute.get_strategy()
    assert encoder_overrides(PretrainConfig(), strategy) == {"fused_kernels": True}  # this CPU: fused
    overrides = encoder_overrides(PretrainConfig(dropout=0.0, attention_dropout=0.05, kernels="plain"), strategy)
    assert overrides == {"dropout": 0.0, "attention_dropout": 0.05, "fused_kernels": False}
    encoder, _ = build_encoder_for(None, TINY, 30522, **overrides)
    assert [b.hidden_dropout.rate for b in encoder.blocks] == [0.0, 0.0]
    assert [b.attention_probs_dropout.rate for b in encoder.blocks] == [0.05, 0.05]
    assert encoder.embedding_dropout.rate == 0.0 and TINY.dropout == 0.1  # the config is untouched
