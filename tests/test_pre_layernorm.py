"""Pre-LN blocks (model.normalize_first): the math against an independent numpy computation,
the fused training kernels against the plain layers, and the encoder's final LayerNorm."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras import fused
from bert_keras.encoder import BertEncoder
from bert_keras.layers import TransformerBlock, attention_bias, same_instance
from bert_keras.pretraining_model import BertPretrainingModel
from bert_keras.weights import save_hf_checkpoint
from pipeline.contract import schema as S
from pipeline.contract.errors import UserError

H, HEADS, FF, EPS = 16, 2, 32, 1e-12
PADDING = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])  # a packed row with padding, and a full row


def _erf(x):
    return np.vectorize(math.erf)(x)


def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def _reference_pre_ln_block(x, w, padding):
    """x + Attn(LN1(x)), then + FFN(LN2(.)), in float64 numpy from the block's weights."""
    batch, seq, _ = x.shape
    head = H // HEADS
    h = _layer_norm(x, w["attention_norm/gamma"], w["attention_norm/beta"])
    qkv = h @ w["qkv/kernel"] + w["qkv/bias"]  # (batch, seq, 3H): [query | key | value]
    q, k, v = (qkv[..., i * H:(i + 1) * H].reshape(batch, seq, HEADS, head).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head)  # (batch, heads, seq, seq)
    allowed = (padding[:, :, None] == padding[:, None, :]) & (padding[:, None, :] != 0)
    scores = np.where(allowed[:, None], scores, -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, H)
    x = x + context @ w["attention_output/kernel"] + w["attention_output/bias"]
    h = _layer_norm(x, w["output_norm/gamma"], w["output_norm/beta"])
    inner = h @ w["intermediate/kernel"] + w["intermediate/bias"]
    inner = inner * 0.5 * (1 + _erf(inner / math.sqrt(2)))
    return x + inner @ w["output/kernel"] + w["output/bias"]


def _block(fused_kernels=True):
    block = TransformerBlock(H, HEADS, FF, dropout=0.0, attention_dropout=0.0, normalize_first=True,
                             fused_kernels=fused_kernels, name="blk")
    block.build()
    rng = np.random.default_rng(7)
    for var in block.trainable_variables:  # LayerNorm scales and offsets away from 1 and 0 too
        var.assign(rng.normal(0.5 if "gamma" in var.path else 0.0, 0.3, var.shape).astype(np.float32))
    return block


def test_a_pre_ln_block_equals_the_reference_computation_in_training_and_inference():
    block = _block()
    x = np.random.default_rng(0).standard_normal((2, 6, H))
    weights = {"/".join(v.path.split("/")[-2:]): np.float64(v.numpy()) for v in block.trainable_variables}
    want = _reference_pre_ln_block(x, weights, PADDING)
    bias = attention_bias(same_instance(tf.constant(PADDING)), tf.float32)
    real = PADDING != 0  # a padding token's output is never read; compare the real ones
    for training in (False, True):  # plain layers, fused kernels
        got = block(tf.constant(x, tf.float32), bias, training=training).numpy()
        np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=2e-5, err_msg=f"training={training}")


def _grads(block, x, bias, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = block(x, bias, training=training)
        mix = tf.cos(tf.reshape(tf.range(tf.size(out), dtype=tf.float32), tf.shape(out)))  # distinct weights
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * mix)
    return out, tape.gradient(loss, [x] + [v.value for v in block.trainable_variables])


@pytest.mark.parametrize("policy,tol", [("float32", 2e-5), ("mixed_bfloat16", 0.05)])
def test_fused_pre_ln_block_matches_plain_block_values_and_gradients(policy, tol):
    keras.mixed_precision.set_global_policy(policy)
    try:
        block = _block()
        x = tf.constant(np.random.default_rng(1).standard_normal((2, 6, H)), tf.as_dtype(block.compute_dtype))
        bias = attention_bias(same_instance(tf.constant(PADDING)), x.dtype)
        plain, plain_grads = _grads(block, x, bias, training=False)
        fused_out, fused_grads = _grads(block, x, bias, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(np.float32(fused_out), np.float32(plain), atol=tol, rtol=tol)
    assert len(fused_grads) == 1 + 12
    for got, want in zip(fused_grads, plain_grads, strict=True):
        want = np.float32(want)
        np.testing.assert_allclose(np.float32(got), want, atol=tol * max(1.0, np.abs(want).max()), rtol=tol)


def test_dropout_add_then_norm_returns_the_stream_and_its_norm_with_both_gradients():
    rng = np.random.default_rng(2)
    y, residual = (tf.constant(rng.standard_normal((5, 8)), tf.float32) for _ in range(2))
    bias, beta = (tf.constant(rng.standard_normal(8), tf.float32) for _ in range(2))
    gamma = tf.constant(rng.uniform(0.5, 1.5, 8), tf.float32)
    up_s, up_n = (tf.constant(rng.standard_normal((5, 8)), tf.float32) for _ in range(2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y, residual, bias, gamma, beta])
        s, n = fused.dropout_add_then_norm(y, bias, residual, gamma, beta, rate=0.0, epsilon=EPS)
        got = tf.reduce_sum(s * up_s) + tf.reduce_sum(n * up_n)
        s_ref = residual + y + bias
        n_ref = tf.nn.batch_normalization(s_ref, *tf.nn.moments(s_ref, [-1], keepdims=True), beta, gamma, EPS)
        want = tf.reduce_sum(s_ref * up_s) + tf.reduce_sum(n_ref * up_n)
    np.testing.assert_allclose(s.numpy(), s_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(n.numpy(), n_ref.numpy(), atol=1e-5)
    for a, b in zip(tape.gradient(got, [y, residual, bias, gamma, beta]),
                    tape.gradient(want, [y, residual, bias, gamma, beta]), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_pre_ln_encoder_ends_with_a_final_norm_and_has_no_checkpoint_layout(tmp_path):
    tiny = dict(vocab_size=40, hidden_size=H, num_layers=2, num_heads=HEADS, intermediate_size=FF,
                max_position_embeddings=16)
    post, pre = BertEncoder(**tiny), BertEncoder(**tiny, normalize_first=True)
    assert post.final_norm is None and pre.final_norm is not None
    assert len(pre.trainable_variables) == len(post.trainable_variables) + 2
    batch = {S.TOKEN_IDS: np.arange(24).reshape(2, 12) % 40, S.SEGMENT_IDS: np.zeros((2, 12), int),
             S.PADDING_MASK: np.ones((2, 12), int)}
    seq = pre(batch)["sequence_output"].numpy()
    np.testing.assert_allclose(seq.mean(-1), 0.0, atol=1e-5)  # the final LayerNorm (gamma 1, beta 0 at init)
    clone = BertEncoder.from_config(pre.get_config())
    assert clone.normalize_first and clone.final_norm is not None
    with pytest.raises(UserError, match="pre-LN"):
        save_hf_checkpoint(BertPretrainingModel(pre), str(tmp_path / "hf"))
