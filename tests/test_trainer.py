"""The training loop with the real BERT pretraining model (tiny) on real records:
schedule, weight-decay exclusion, gradient accumulation, NaN stop."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras import data
from bert_keras.encoder import build_encoder
from bert_keras.optimization import WarmupDecay, build_optimizer, no_decay
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract.config import PretrainConfig
from pipeline.contract.errors import UserError
from tests.harness import tiny_model_config
from tests.test_data import write_records

TINY = tiny_model_config(max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)


def make_trainer(out_dir, cfg: PretrainConfig, strategy=None, loss_fn=pretraining_loss, seed=0):
    strategy = strategy or tf.distribute.get_strategy()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = BertPretrainingModel(build_encoder(TINY, 30522))
        opt = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    return Trainer(model, loss_fn, opt, strategy, str(out_dir), LoopSettings.from_config(cfg), log_fn=lambda s: None)


def batches(tmp_path, rows, **kw):
    manifest = write_records(str(tmp_path / "data"), num_records=64, full_masks=True, **kw)
    return data.make_dataset(str(tmp_path / "data"), manifest, which="all", batch_size=rows, training=False,
                             deterministic=True, drop_remainder=True).repeat()


def test_schedule_warmup_then_decay_and_serializes():
    lin = WarmupDecay(1e-3, 10, 110, "linear")
    assert float(lin(0)) == pytest.approx(1e-4)  # (step + 1) / warmup
    assert float(lin(9)) == pytest.approx(1e-3)
    assert float(lin(10)) == pytest.approx(1e-3)
    assert float(lin(60)) == pytest.approx(5e-4)
    assert float(lin(110)) == pytest.approx(0.0) and float(lin(500)) == pytest.approx(0.0)
    poly = WarmupDecay(1e-3, 10, 110, "polynomial")
    assert float(poly(60)) == pytest.approx(2.5e-4)  # (1 - 0.5) ** 2
    assert float(WarmupDecay(1e-3, 0, 100, "constant")(70)) == pytest.approx(1e-3)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(poly))
    assert isinstance(again, WarmupDecay) and float(again(60)) == pytest.approx(2.5e-4)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_skips_layernorm_and_biases(name):
    keras.mixed_precision.set_global_policy("float32")
    model = BertPretrainingModel(build_encoder(TINY, 30522))
    cfg = PretrainConfig(optimizer=name, learning_rate=1.0, warmup_steps=0, schedule="constant", weight_decay=0.1)
    opt = build_optimizer(cfg, 10, model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])  # only decay moves weights
    for v, old in zip(model.trainable_variables, before, strict=True):
        if no_decay(v):
            np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)
        else:
            np.testing.assert_allclose(v.numpy(), old * 0.9, rtol=1e-5, err_msg=v.path)
    names = [v.path for v in model.trainable_variables if no_decay(v)]
    assert any("norm" in n for n in names) and any("bias" in n for n in names)
    assert not any("embedding" in n and "norm" not in n for n in names)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    ds = batches(tmp_path, 8)
    weights = []
    for accum in (1, 2):
        cfg = PretrainConfig(batch_size=8 // accum, accumulation_steps=accum, steps=3, learning_rate=1e-3,
                             warmup_steps=1, log_every=1, checkpoint_every=100, clip_norm=1.0)
        trainer = make_trainer(tmp_path / f"run{accum}", cfg)
        result = trainer.fit(ds, 3, rows_per_step=8)
        weights.append([v.numpy() for v in trainer.model.trainable_variables])
        losses = [h["loss"] for h in result.history]
        if accum == 1:
            big_losses = losses
    np.testing.assert_allclose(losses, big_losses, rtol=1e-5)
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert not np.allclose(weights[0][0], make_trainer(tmp_path / "fresh", cfg).model.trainable_variables[0].numpy())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    ds = batches(tmp_path, 4)
    cfg = PretrainConfig(batch_size=4, steps=10, log_every=1, checkpoint_every=2)
    holder = {}

    def poisoned(batch, outputs):  # the real loss, turned NaN from the 4th step on
        loss, metrics = pretraining_loss(batch, outputs)
        return tf.where(holder["trainer"].step >= 3, tf.constant(np.nan, tf.float32), loss), metrics

    trainer = holder["trainer"] = make_trainer(tmp_path / "run", cfg, loss_fn=poisoned)
    with pytest.raises(UserError, match="loss became nan at step 4") as err:
        trainer.fit(ds, 10, rows_per_step=4)
    assert "ckpt-2" in str(err.value) and "\n" not in str(err.value)
    ckpts = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-2"), ckpts
    fresh = make_trainer(tmp_path / "run", cfg, seed=1)
    assert fresh.restore() == 2
    assert all(np.isfinite(v.numpy()).all() for v in fresh.model.trainable_variables)


def test_mixed_float16_uses_loss_scaling_and_trains(tmp_path):
    ds = batches(tmp_path, 4)
    cfg = PretrainConfig(batch_size=4, steps=3, log_every=1, checkpoint_every=100, accumulation_steps=2,
                         learning_rate=1e-3, warmup_steps=0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = BertPretrainingModel(build_encoder(TINY, 30522))
        opt = build_optimizer(cfg, cfg.steps, model.trainable_variables, loss_scale=True)
        before = [v.numpy().copy() for v in model.trainable_variables]
        trainer = Trainer(model, pretraining_loss, opt, tf.distribute.get_strategy(), str(tmp_path / "fp16"),
                          LoopSettings.from_config(cfg), log_fn=lambda s: None)
        result = trainer.fit(ds, 3, rows_per_step=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert model.encoder.blocks[0].compute_dtype == "float16"
    assert all(np.isfinite(h["loss"]) for h in result.history)
    moved = [not np.array_equal(v.numpy(), b) for v, b in zip(model.trainable_variables, before, strict=True)]
    assert sum(moved) > len(moved) // 2  # steps were applied, not all skipped as overflow


def test_fused_adamw_matches_keras_adamw():
    from bert_keras.optimization import FusedAdamW

    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype(np.float32) for s in ((4, 3), (3,))]
    grads = [[tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in init] for _ in range(3)]
    results = []
    for cls in (keras.optimizers.AdamW, FusedAdamW):
        variables = [keras.Variable(w) for w in init]
        opt = cls(learning_rate=0.1, weight_decay=0.01, epsilon=1e-6)
        opt.exclude_from_weight_decay(var_list=variables[1:])
        for g in grads:
            opt.apply_gradients(zip(g, variables, strict=True))
        results.append([v.numpy() for v in variables] + [s.numpy() for s in opt.variables[1:]])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # same math, different rounding order
    assert not np.allclose(results[1][0], init[0])


def test_a_loss_that_ignores_some_variables_trains(tmp_path):
    """An MLM-only loss leaves the pooler and NSP head without a gradient: the loop must
    still train (it crashed on None gradients), and must leave the untouched head's
    weights moved only by weight decay, never by a gradient."""
    ds = batches(tmp_path, 4)
    cfg = PretrainConfig(batch_size=4, steps=3, log_every=1, checkpoint_every=100, weight_decay=0.0)

    def mlm_only(batch, outputs):
        _, metrics = pretraining_loss(batch, outputs)
        return metrics["mlm_loss"], metrics

    trainer = make_trainer(tmp_path / "run", cfg, loss_fn=mlm_only)
    nsp_before = [v.numpy().copy() for v in trainer.model.nsp_head.trainable_variables]
    mlm_before = trainer.model.mlm_head.output_bias.numpy().copy()
    trainer.fit(ds, 3, rows_per_step=4)
    assert int(trainer.step.numpy()) == 3
    for before, v in zip(nsp_before, trainer.model.nsp_head.trainable_variables, strict=True):
        np.testing.assert_array_equal(v.numpy(), before)
    assert not np.array_equal(trainer.model.mlm_head.output_bias.numpy(), mlm_before)
