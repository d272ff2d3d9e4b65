"""BertEncoder, heads and the pretraining loss on a tiny model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras.encoder import BertEncoder, build_encoder
from bert_keras.heads import ChunkPooling, ClassificationHead, SpanHead, encode_chunks
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from pipeline.contract import schema as S
from pipeline.contract.config import BertConfig
from pipeline.contract.errors import ConfigError
from tests.harness import run_encoder_test, tiny_encoder_kwargs

TINY = tiny_encoder_kwargs(vocab_size=40, hidden_size=16, intermediate_size=32, max_position_embeddings=16)


def _batch(rng, b=3, seq=12, pred=4):
    mask = np.ones((b, seq), int)
    mask[0, 8:] = 0
    return {
        S.TOKEN_IDS: rng.integers(4, 40, (b, seq)),
        S.SEGMENT_IDS: np.zeros((b, seq), int),
        S.PADDING_MASK: mask,
        S.MASK_POSITIONS: rng.integers(1, 8, (b, pred)),
        S.MASK_IDS: rng.integers(4, 40, (b, pred)),
        S.MASK_WEIGHTS: np.array([[1, 1, 1, 0]] * b, np.float32),
        S.NSP_LABEL: rng.integers(0, 2, (b, 1)),
    }


def test_bert_encoder_passes_the_encoder_harness(tmp_path):
    """Shapes, deterministic inference, get_config and .keras round trips, training path = inference path."""
    batch = _batch(np.random.default_rng(0))
    run_encoder_test(BertEncoder, TINY, batch, {"sequence_output": (3, 12, 16), "pooled_output": (3, 1, 16)}, tmp_path)
    packed = dict(batch, **{S.PADDING_MASK: np.array([[1] * 6 + [2] * 4 + [0] * 2] * 3),
                            S.CLS_POSITIONS: np.array([[0, 6]] * 3)})  # two instances per row
    run_encoder_test(BertEncoder, TINY, packed, {"pooled_output": (3, 2, 16)}, tmp_path)


def test_build_encoder_from_config_and_serialize():
    cfg = BertConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position_embeddings=16)
    enc = build_encoder(cfg, vocab_size=40)
    batch = _batch(np.random.default_rng(0))
    out = enc(batch, training=False)
    assert out["sequence_output"].shape == (3, 12, 16) and out["pooled_output"].shape == (3, 1, 16)
    clone = BertEncoder.from_config(enc.get_config())
    clone.set_weights(enc.get_weights())
    np.testing.assert_allclose(clone(batch)["sequence_output"], out["sequence_output"], atol=1e-6)
    with pytest.raises(ConfigError, match="vocab file has 41"):
        build_encoder(BertConfig(vocab_size=40), vocab_size=41)


def test_dropout_only_in_training():
    enc = BertEncoder(**TINY)
    batch = _batch(np.random.default_rng(0))
    a = enc(batch, training=False)  # (inference is deterministic: the harness checks it)
    assert np.abs(enc(batch, training=True)["sequence_output"] - a["sequence_output"]).max() > 1e-3


def test_mlm_head_is_tied_to_word_embeddings():
    model = BertPretrainingModel(BertEncoder(**TINY))
    batch = _batch(np.random.default_rng(1))
    out = model(batch, training=False)
    seq = model.encoder(batch)["sequence_output"]
    x = tf.gather(seq, batch[S.MASK_POSITIONS], batch_dims=1)
    x = model.mlm_head.transform_norm(model.mlm_head.transform(x))
    want = tf.matmul(x, model.encoder.token_embedding.embeddings, transpose_b=True) + model.mlm_head.output_bias
    np.testing.assert_allclose(out["mlm_logits"], want, atol=1e-5)
    names = [w.path for w in model.trainable_weights]
    assert len(names) == len(set(names)) and not any("decoder" in n for n in names)


def test_pretraining_loss_respects_weights():
    rng = np.random.default_rng(2)
    model = BertPretrainingModel(BertEncoder(**TINY))
    batch = _batch(rng)
    out = model(batch, training=False)
    loss, metrics = pretraining_loss(batch, out)
    np.testing.assert_allclose(float(loss), float(metrics["mlm_loss"] + metrics["nsp_loss"]), rtol=1e-6)
    # Logits at a weight-0 prediction slot do not change the loss.
    changed = dict(out, mlm_logits=tf.concat([out["mlm_logits"][:, :3], out["mlm_logits"][:, 3:] + 100.0], axis=1))
    assert float(pretraining_loss(batch, changed)[0]) == pytest.approx(float(loss), rel=1e-6)
    # Accuracy: make every weighted prediction right.
    perfect = tf.one_hot(batch[S.MASK_IDS], 40) * 50.0
    _, m = pretraining_loss(batch, dict(out, mlm_logits=perfect))
    assert float(m["mlm_accuracy"]) == 1.0 and float(m["mlm_loss"]) < 1e-3
    # Packed NSP: CLS_WEIGHTS 0 drops an instance.
    nsp = tf.constant([[[5.0, 0.0], [0.0, 5.0]]] * 3)
    packed = dict(batch, **{S.NSP_LABEL: np.array([[0, 0]] * 3), S.CLS_WEIGHTS: np.array([[1.0, 0.0]] * 3, np.float32)})
    _, m = pretraining_loss(packed, dict(out, nsp_logits=nsp))
    assert float(m["nsp_accuracy"]) == 1.0


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_loss(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = BertPretrainingModel(BertEncoder(**TINY))
        batch = _batch(np.random.default_rng(3))
        with tf.GradientTape() as tape:
            out = model(batch, training=True)
            loss, _ = pretraining_loss(batch, out)
        grads = tape.gradient(loss, model.trainable_variables)
        logits = model(batch)["mlm_logits"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert loss.dtype == tf.float32 and logits.dtype == tf.float32 and out["nsp_logits"].dtype == tf.float32
    assert out["mlm_logits_unbiased"].dtype == policy.removeprefix("mixed_")  # the bias is added in float32
    assert model.encoder.token_embedding.embeddings.dtype == "float32"
    assert np.isfinite(float(loss)) and all(g is not None and np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)


def test_task_heads():
    enc = BertEncoder(**TINY)
    batch = _batch(np.random.default_rng(4))
    out = enc(batch)
    assert ClassificationHead(16, 3)(out["pooled_output"][:, 0]).shape == (3, 3)
    start, end = SpanHead(16)(out["sequence_output"], batch[S.PADDING_MASK])
    assert start.shape == (3, 12) and float(tf.reduce_max(start[0, 8:])) < -1e8  # padding never an answer

    docs = {k: np.stack([batch[k][:2], batch[k][1:]]) for k in (S.TOKEN_IDS, S.SEGMENT_IDS, S.PADDING_MASK)}
    chunks = encode_chunks(enc, docs)  # (2 docs, 2 chunks, hidden)
    assert chunks.shape == (2, 2, 16)
    chunk_mask = np.array([[1, 0], [1, 1]])
    for mode in ChunkPooling.MODES:
        pool = ChunkPooling(16, mode)
        a = pool(chunks, chunk_mask)
        b = pool(tf.concat([chunks[:, :1], chunks[:, 1:] + 7.0], axis=1), chunk_mask)
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)  # a masked chunk has no influence
        np.testing.assert_allclose(a[0], chunks[0, 0], atol=1e-5)  # one real chunk: its own vector
        assert np.abs(a[1] - b[1]).max() > 1e-2


@pytest.mark.parametrize("policy,tol", [("float32", 1e-5), ("mixed_bfloat16", 0.03)])
def test_training_outputs_give_the_inference_loss_and_gradients(policy, tol):
    """Training hands the MLM output bias to the loss kernel instead of adding it to float32
    logits (and runs the fused kernels); without dropout both paths give the same loss,
    metrics and gradients."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = BertPretrainingModel(BertEncoder(**TINY, dropout=0.0, attention_dropout=0.0))
        model.mlm_head.output_bias.assign(np.random.default_rng(5).normal(size=40).astype(np.float32))
        batch = _batch(np.random.default_rng(4))
        results = []
        for training in (True, False):
            with tf.GradientTape() as tape:
                loss, metrics = pretraining_loss(batch, model(batch, training=training))
            results.append((loss, metrics, tape.gradient(loss, model.trainable_variables)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (loss, metrics, grads), (want_loss, want_metrics, want_grads) = results
    assert float(loss) == pytest.approx(float(want_loss), rel=tol)
    for name in want_metrics:
        assert float(metrics[name]) == pytest.approx(float(want_metrics[name]), rel=tol, abs=1e-6), name
    for var, got, want in zip(model.trainable_variables, grads, want_grads, strict=True):
        want = np.float32(tf.convert_to_tensor(want))
        np.testing.assert_allclose(np.float32(tf.convert_to_tensor(got)), want, rtol=tol,
                                   atol=tol * max(1e-3, np.abs(want).max()), err_msg=var.path)
