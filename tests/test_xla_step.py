"""`jit_compile`: the whole training step (forward, backward, accumulation, clipping, optimizer
update) as one XLA program on one device, what TPU requires: it compiles and trains on this CPU
and equals the step without XLA (dropout 0), with both kernel paths. Under Mirrored the same
setting is tested in test_distribute.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras.distribute import use_xla, xla_scope
from bert_keras.encoder import build_encoder
from bert_keras.optimization import FusedAdamW, build_optimizer
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract.config import PretrainConfig
from tests.test_trainer import TINY, batches


def _trainer(out_dir, cfg: PretrainConfig, fused: bool, loss_fn=pretraining_loss, optimizer=None):
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)  # every trainer starts from the same weights
    model = BertPretrainingModel(build_encoder(TINY, 30522, fused_kernels=fused))
    optimizer = optimizer or build_optimizer(cfg, cfg.steps, model.trainable_variables)
    return Trainer(model, loss_fn, optimizer, tf.distribute.get_strategy(), str(out_dir),
                   LoopSettings.from_config(cfg), log_fn=lambda s: None)


@pytest.mark.parametrize(("fused", "accum"), [(False, 2), (True, 1)], ids=["plain-accumulated", "fused"])
def test_the_whole_step_under_xla_trains_and_equals_the_step_without_it(tmp_path, fused, accum):
    ds = batches(tmp_path, 8)
    runs = {}
    for jit in (False, True):
        cfg = PretrainConfig(batch_size=8 // accum, accumulation_steps=accum, steps=4, learning_rate=2e-3,
                             warmup_steps=0, schedule="constant", log_every=1, checkpoint_every=100, clip_norm=0.5,
                             jit_compile=jit)
        trainer = _trainer(tmp_path / f"run-{jit}", cfg, fused)
        assert trainer.xla_scope == ("step" if jit else None)
        result = trainer.fit(ds, cfg.steps, rows_per_step=8)
        runs[jit] = [h["loss"] for h in result.history], [v.numpy() for v in trainer.model.trainable_variables]
    losses, weights = runs[True]
    assert losses[-1] < losses[0] - 0.02, losses  # it trains
    np.testing.assert_allclose(losses, runs[False][0], rtol=1e-5)
    for a, b in zip(weights, runs[False][1], strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)


def test_loss_and_optimizer_update_are_inside_the_one_xla_program(tmp_path):
    """A host op (tf.print) cannot be compiled: put one in the loss, then in the optimizer's
    update, and the XLA step refuses each; so both are inside the program, and clipping,
    which runs between them in the same function, is too. Without XLA the same step runs."""
    ds = batches(tmp_path, 4)

    def printing_loss(batch, outputs):
        loss, metrics = pretraining_loss(batch, outputs)
        tf.print("loss", loss)
        return loss, metrics

    class PrintingAdamW(FusedAdamW):
        def update_step(self, gradient, variable, learning_rate):
            tf.print("update")
            return super().update_step(gradient, variable, learning_rate)

    cfg = PretrainConfig(batch_size=4, steps=1, log_every=1, checkpoint_every=100, jit_compile=True, weight_decay=0.0)
    for name, kwargs in (("loss", {"loss_fn": printing_loss}), ("update", {"optimizer": PrintingAdamW(1e-3)})):
        trainer = _trainer(tmp_path / name, cfg, fused=False, **kwargs)
        with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported operations when trying to compile graph __inference__replica_step"):
            trainer.fit(ds, 1, rows_per_step=4)
    plain = _trainer(tmp_path / "plain", cfg.model_copy(update={"jit_compile": False}), fused=False,
                     optimizer=PrintingAdamW(1e-3))
    assert plain.fit(ds, 1, rows_per_step=4).step == 1


def test_auto_xla_is_on_for_gpu_and_tpu_only_and_the_strategy_decides_its_scope():
    assert not use_xla("auto", device="cpu") and use_xla("auto", device="gpu") and use_xla("auto", device="tpu")
    assert use_xla(True, device="cpu") and not use_xla(False, device="gpu")
    assert not use_xla("auto")  # this machine has no GPU
    default = tf.distribute.get_strategy()
    assert xla_scope(True, default) == "step" and xla_scope(False, default) is None
    assert xla_scope(True, tf.distribute.OneDeviceStrategy("/cpu:0")) == "step"
    assert xla_scope(True, tf.distribute.MirroredStrategy(["/cpu:0"])) == "grads"
