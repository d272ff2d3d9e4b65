"""Weighted sparse softmax cross-entropy with its gradient written out, plus accuracy.

Why not `tf.nn.sparse_softmax_cross_entropy_with_logits`: on CPU its kernel is the
largest non-matmul cost of a pretraining step. The MLM logits are (batch * 20, 30,522)
float32; forward + backward with the head's bias add and cast and the ArgMax for
accuracy took about 50 ms on (640, 30,522) with that kernel, 29 ms as plain TF ops
with the gradient written out, and 24 ms like this (one process, same inputs; loss
within 2e-6, gradients within 3e-8): the forward pass (max, exp, sum, log) and the
backward one (softmax minus one-hot, scaled by the weights) are one XLA kernel each
(`bert_keras.fused`). On the bench_pretrain bf16 step, against the plain-ops
version: +1% (three A/B runs in one process). Accuracy is TensorFlow's ArgMax:
XLA's CPU ArgMax ran 5x slower, and an exact tie-aware test inside the kernel
cost more than it saved.
"""

from __future__ import annotations

import tensorflow as tf

from bert_keras.fused import compiled


def weighted_sparse_xent(labels, logits, weights):
    """(loss, accuracy): means over the targets weighted by `weights`, float32 scalars.

    labels: (...) int class ids; logits: (..., classes); weights: (...) float.
    A batch whose weights sum to 0 gives 0, not NaN. The gradient flows to `logits`
    only (float32; cast back by the caller's graph when logits were bfloat16).
    """
    classes = tf.shape(logits)[-1]
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, classes])  # (n, classes)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])  # (n,)
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])  # (n,)
    # XLA clamps an out-of-range index where TensorFlow's kernel raised: keep the error.
    in_range = [tf.debugging.assert_less(labels, classes, message="a label is not below the number of classes"),
                tf.debugging.assert_non_negative(labels, message="a label is negative")]
    with tf.control_dependencies(in_range):
        scale = weights / tf.maximum(tf.reduce_sum(weights), 1e-6)  # (n,): each target's share of the mean

    @tf.custom_gradient
    def run(x):
        loss, exp, total = _forward(x, labels, scale)
        return loss, lambda d_loss: _backward(exp, total, labels, scale, d_loss)

    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)  # (n,)
    return run(logits), tf.reduce_sum(hits * scale)


@compiled
def _forward(logits, labels, scale):
    top = tf.reduce_max(logits, axis=-1, keepdims=True)  # (n, 1)
    exp = tf.exp(logits - top)  # (n, classes), kept for the backward kernel
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)  # (n, 1)
    target = tf.gather(logits, labels, batch_dims=1)  # (n,)
    per_target = tf.math.log(total[:, 0]) + top[:, 0] - target
    return tf.reduce_sum(per_target * scale), exp, total


@compiled
def _backward(exp, total, labels, scale, d_loss):
    coef = (d_loss * scale)[:, None]  # (n, 1)
    return (exp / total - tf.one_hot(labels, tf.shape(exp)[-1], dtype=tf.float32)) * coef
