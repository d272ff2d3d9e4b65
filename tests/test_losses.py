"""The hand-written cross-entropy gives TensorFlow's loss, gradient and accuracy."""

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.losses import weighted_sparse_xent


def _reference(labels, logits, weights):
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    hit = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    total = tf.maximum(tf.reduce_sum(weights), 1e-6)
    return tf.reduce_sum(ce * weights) / total, tf.reduce_sum(hit * weights) / total


def _loss_and_grad(fn, labels, logits, weights):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss, acc = fn(labels, logits, weights)
    return loss.numpy(), acc.numpy(), tape.gradient(loss, logits).numpy()


@pytest.mark.parametrize("shape", [(6, 50), (2, 3, 7)])
def test_matches_tensorflow_kernel(shape):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(shape) * 4).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    weights = rng.integers(0, 2, size=shape[:-1]).astype(np.float32)
    weights.flat[0] = 1.0  # at least one target
    labels.flat[1] = int(np.argmax(logits.reshape(-1, shape[-1])[1]))  # at least one correct prediction
    weights.flat[1] = 1.0

    flat = (labels.reshape(-1), logits.reshape(-1, shape[-1]), weights.reshape(-1))
    ref_loss, ref_acc, ref_grad = _loss_and_grad(_reference, *flat)
    loss, acc, grad = _loss_and_grad(weighted_sparse_xent, labels, logits, weights)

    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert acc == pytest.approx(ref_acc) and acc > 0
    np.testing.assert_allclose(grad.reshape(ref_grad.shape), ref_grad, atol=1e-7)
    assert np.all(grad.reshape(-1, shape[-1])[weights.reshape(-1) == 0] == 0)  # weight 0: no gradient


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-6), (tf.bfloat16, 1e-6)])
def test_bias_added_inside_matches_adding_it_first(dtype, tol):
    """The MLM path: logits in the compute dtype plus a float32 bias, gradients to both."""
    rng = np.random.default_rng(1)
    logits = tf.cast(tf.constant(rng.standard_normal((5, 30)).astype(np.float32) * 3), dtype)
    bias = tf.constant(rng.standard_normal(30).astype(np.float32))
    labels = tf.constant([3, 3, 0, 29, 7])
    weights = tf.constant([1.0, 2.0, 0.0, 1.0, 1.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, bias])
        loss, acc = weighted_sparse_xent(labels, logits, weights, bias=bias)
        want_loss, want_acc = _reference(labels, tf.cast(logits, tf.float32) + bias, weights)
    assert float(loss) == pytest.approx(float(want_loss), rel=tol) and float(acc) == pytest.approx(float(want_acc))
    d_logits, d_bias = tape.gradient(loss, [logits, bias])
    want_d_logits, want_d_bias = tape.gradient(want_loss, [logits, bias])
    assert d_logits.dtype == dtype and d_bias.dtype == tf.float32
    np.testing.assert_allclose(np.float32(d_logits), np.float32(want_d_logits), atol=1e-7)
    np.testing.assert_allclose(d_bias.numpy(), want_d_bias.numpy(), atol=1e-7)


def test_a_tie_for_the_top_logit_is_a_miss():
    """ArgMax would give a tie to the lowest class; equal logits must not score as right."""
    _, acc, _ = _loss_and_grad(weighted_sparse_xent, np.array([0, 1, 2], np.int32),
                               np.array([[1, 1, 0], [2, 2, 2], [0, 0, 5]], np.float32), np.ones([3], np.float32))
    assert acc == pytest.approx(1 / 3)  # only the third row's label is strictly on top


def test_no_targets_gives_zero_not_nan():
    loss, acc, grad = _loss_and_grad(weighted_sparse_xent, np.zeros([4], np.int32),
                                     np.ones([4, 5], np.float32), np.zeros([4], np.float32))
    assert loss == 0 and acc == 0 and np.all(grad == 0)


def test_bfloat16_logits_give_float32_loss_and_bfloat16_gradient():
    logits = tf.cast(tf.random.stateless_normal([4, 9], seed=[1, 2]), tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss, _ = weighted_sparse_xent(tf.constant([1, 2, 3, 4]), logits, tf.ones([4]))
    assert loss.dtype == tf.float32 and tape.gradient(loss, logits).dtype == tf.bfloat16


def test_a_label_outside_the_classes_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="not below the number of classes"):
        weighted_sparse_xent(tf.constant([0, 5]), tf.zeros([2, 5]), tf.ones([2]))
