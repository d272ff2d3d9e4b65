"""The fused training kernels compute the plain layers' math, forward and backward,
and their dropout masks are Bernoulli, scaled, and shared by the backward pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras import fused
from bert_keras.layers import TransformerBlock, attention_bias, same_instance


def _grads(fn, tensors, variables):
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn()
        mix = tf.cos(tf.reshape(tf.range(tf.size(out), dtype=tf.float32), tf.shape(out)))  # distinct output weights
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * mix)
    return out, tape.gradient(loss, tensors + variables)


@pytest.mark.parametrize("policy,tol", [("float32", 2e-5), ("mixed_bfloat16", 0.05)])
def test_fused_block_matches_plain_block_without_dropout(policy, tol):
    keras.mixed_precision.set_global_policy(policy)
    try:
        block = TransformerBlock(16, 2, 32, dropout=0.0, attention_dropout=0.0, name="blk")
        block.build()
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((2, 6, 16)), tf.as_dtype(block.compute_dtype))
        padding = tf.constant([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])  # packed row with padding, full row
        bias = attention_bias(same_instance(padding), x.dtype)
        weights = [v.value for v in block.trainable_variables]
        plain, plain_grads = _grads(lambda: block(x, bias, training=False), [x], weights)
        fused_out, fused_grads = _grads(lambda: block(x, bias, training=True), [x], weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert fused_out.dtype == plain.dtype
    np.testing.assert_allclose(np.float32(fused_out), np.float32(plain), atol=tol, rtol=tol)
    assert len(fused_grads) == len(plain_grads) == 1 + 12  # x, then 4 dense (kernel, bias) and 2 norms
    for got, want in zip(fused_grads, plain_grads, strict=True):
        want = np.float32(want)
        np.testing.assert_allclose(np.float32(got), want, atol=tol * max(1.0, np.abs(want).max()), rtol=tol)


def test_dropout_add_norm_drops_exactly_what_its_gradient_skips():
    rate = 0.25
    rng = np.random.default_rng(1)
    y = tf.constant(rng.standard_normal((64, 32)) + 3.0, tf.float32)  # y + bias never 0
    bias, residual = tf.constant(rng.standard_normal(32), tf.float32), tf.constant(rng.standard_normal((64, 32)), tf.float32)
    gamma, beta = tf.constant(rng.uniform(0.5, 1.5, 32), tf.float32), tf.constant(rng.standard_normal(32), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y)
        out = fused.dropout_add_norm(y, bias, residual, gamma, beta, rate=rate, epsilon=1e-12)
    keep = tape.gradient(out, y, output_gradients=tf.ones_like(out) + tf.range(32, dtype=tf.float32)).numpy() != 0
    assert abs(1 - keep.mean() - rate) < 0.03  # 2,048 draws
    s = np.where(keep, (y.numpy() + bias.numpy()) / (1 - rate), 0.0) + residual.numpy()
    normalized = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(out.numpy(), normalized * gamma.numpy() + beta.numpy(), atol=1e-4)


def test_bias_gelu_is_exact_erf_gelu_with_its_gradient():
    x = tf.constant(np.linspace(-6, 6, 3 * 40).reshape(3, 40), tf.float32)
    bias = tf.constant(np.linspace(-1, 1, 40), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, bias])
        got = fused.bias_gelu(x, bias)
        want = tf.nn.gelu(x + bias, approximate=False)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    for g, w in zip(tape.gradient(got, [x, bias]), tape.gradient(want, [x, bias]), strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-5)


def test_dense_bias_gradient_is_summed_in_float32_under_mixed_bfloat16():
    """TensorFlow's CPU BiasAddGrad sums bfloat16 in bfloat16 (4,096 rows of 3.0 gave 1,024);
    bert_keras' Dense adds its bias so that the gradient is a float32-accumulated sum."""
    from bert_keras.layers import Dense

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        dense = Dense(8)
        dense.build((None, 4))
        with tf.GradientTape() as tape:
            loss = 3.0 * tf.reduce_sum(tf.cast(dense(tf.ones([4096, 4], tf.bfloat16)), tf.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_array_equal(tape.gradient(loss, dense.bias.value).numpy(), np.full(8, 3.0 * 4096))


def test_tied_embedding_gradient_is_the_lookup_plus_the_projection():
    """One read of the table for the lookup and the tied projection: its gradient (one
    kernel) equals TensorFlow's for the two reads, repeated ids included."""
    rng = np.random.default_rng(3)
    table = tf.Variable(rng.standard_normal((12, 4)).astype(np.float32))
    ids = tf.constant([[1, 5, 5], [0, 11, 1]])
    up_vectors = tf.constant(rng.standard_normal((2, 3, 4)).astype(np.float32))
    up_table = tf.constant(rng.standard_normal((12, 4)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        vectors, cast = fused.tied_embedding(table, ids, tf.float32)
        got = tf.reduce_sum(vectors * up_vectors) + tf.reduce_sum(cast * up_table)
        want = tf.reduce_sum(tf.gather(table, ids) * up_vectors) + tf.reduce_sum(table * up_table)
    np.testing.assert_allclose(vectors.numpy(), tf.gather(table, ids).numpy())
    np.testing.assert_allclose(tape.gradient(got, table).numpy(),
                               tf.convert_to_tensor(tape.gradient(want, table)).numpy(), atol=1e-6)
