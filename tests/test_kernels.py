"""train.kernels: the fused XLA kernels and the plain layers train the same model the same
way (without dropout: same loss and gradients), and the device decides "auto"; precision
"auto" is decided from the device's facts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras.distribute import auto_precision, use_fused_kernels
from bert_keras.encoder import build_encoder
from bert_keras.optimization import build_optimizer
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract.config import BertConfig, PretrainConfig
from tests.test_data import write_records


def _model(fused: bool, normalize_first: bool):
    cfg = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64,
                     dropout=0.0, attention_dropout=0.0, normalize_first=normalize_first)
    keras.utils.set_random_seed(3)  # both models start from the same weights
    model = BertPretrainingModel(build_encoder(cfg, 30522, fused_kernels=fused))
    model.mlm_head.output_bias.assign(np.random.default_rng(5).normal(size=30522).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from bert_keras import data

    directory = str(tmp_path_factory.mktemp("records"))
    manifest = write_records(directory, num_records=32, num_shards=1)
    return data.make_dataset(directory, manifest, which="all", batch_size=8, training=False, deterministic=True)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post-LN", "pre-LN"])
def test_fused_and_plain_kernels_give_the_same_loss_and_gradients(batches, normalize_first):
    keras.mixed_precision.set_global_policy("float32")
    batch = next(iter(batches))
    results = []
    for fused in (True, False):
        model = _model(fused, normalize_first)
        with tf.GradientTape() as tape:
            loss, metrics = pretraining_loss(batch, model(batch, training=True))
        results.append((loss, metrics, tape.gradient(loss, model.trainable_variables), model))
    (loss, metrics, grads, fused_model), (want_loss, want_metrics, want_grads, plain_model) = results
    assert "mlm_logits_unbiased" in fused_model(batch, training=True)  # the fused path did run
    assert "mlm_logits" in plain_model(batch, training=True)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    for name in want_metrics:
        assert float(metrics[name]) == pytest.approx(float(want_metrics[name]), rel=1e-5, abs=1e-6), name
    for var, got, want in zip(fused_model.trainable_variables, grads, want_grads, strict=True):
        want = np.float32(tf.convert_to_tensor(want))
        np.testing.assert_allclose(np.float32(tf.convert_to_tensor(got)), want, rtol=1e-4,
                                   atol=1e-4 * max(1e-3, np.abs(want).max()), err_msg=var.path)


def test_both_kernel_paths_train_and_stay_together(batches, tmp_path):
    keras.mixed_precision.set_global_policy("float32")
    cfg = PretrainConfig(batch_size=8, steps=8, learning_rate=1e-3, warmup_steps=0, schedule="constant", log_every=1,
                         checkpoint_every=100)
    losses = {}
    for fused in (True, False):
        model = _model(fused, normalize_first=True)
        optimizer = build_optimizer(cfg, cfg.steps, model.trainable_variables)
        trainer = Trainer(model, pretraining_loss, optimizer, tf.distribute.get_strategy(), str(tmp_path / str(fused)),
                          LoopSettings.from_config(cfg), log_fn=lambda s: None)
        result = trainer.fit(batches.take(1).repeat(), cfg.steps, rows_per_step=8)  # one batch, learnt by heart
        losses[fused] = [h["loss"] for h in result.history]
    for path in (True, False):
        assert losses[path][-1] < losses[path][0] - 0.25, losses  # each trains
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-3)  # and along the same path


def test_auto_kernels_are_fused_on_cpu_only():
    assert use_fused_kernels("auto", device="cpu")
    assert not use_fused_kernels("auto", device="gpu") and not use_fused_kernels("auto", device="tpu")
    assert use_fused_kernels("fused", device="gpu") and not use_fused_kernels("plain", device="cpu")
    assert use_fused_kernels("auto")  # this machine has no GPU


@pytest.mark.parametrize("device, capability, cpu_bf16, want", [
    ("tpu", None, False, "mixed_bfloat16"),
    ("gpu", (9, 0), False, "mixed_bfloat16"),  # H100 / H200
    ("gpu", (8, 0), False, "mixed_bfloat16"),  # A100
    ("gpu", (7, 5), False, "mixed_float16"),  # T4: fp16 with loss scaling
    ("gpu", (7, 0), True, "mixed_float16"),  # V100 (the host CPU does not matter)
    ("gpu", None, False, "mixed_float16"),  # capability unknown: the safe choice
    ("cpu", None, True, "mixed_bfloat16"),  # AVX512-BF16 / AMX
    ("cpu", None, False, "float32"),  # AVX2 only
])
def test_auto_precision_from_the_device_facts(device, capability, cpu_bf16, want):
    assert auto_precision(device, capability, cpu_bf16) == want
