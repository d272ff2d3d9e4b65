"""Weighted sparse softmax cross-entropy with its gradient written out, plus accuracy.

Why not `tf.nn.sparse_softmax_cross_entropy_with_logits`: on CPU its kernel is the
largest non-matmul cost of a pretraining step. The MLM logits are (batch * 20, 30,522)
float32; forward + backward of the kernel (with the bias add, cast and the ArgMax
for accuracy) took 52 ms on (640, 30,522), this 25 ms (one process, same inputs;
loss equal, gradients within 6e-8). It is the same math in ops that TensorFlow runs
on every core: max, exp, sum, log forward; softmax minus one-hot, scaled by the
weights, backward. Accuracy is ArgMax's, as before (a "target logit equals the
row's maximum" test would be free, but bfloat16 logits tie often, which would
count ties as hits).
"""

from __future__ import annotations

import tensorflow as tf


def weighted_sparse_xent(labels, logits, weights):
    """(loss, accuracy): means over the targets weighted by `weights`, float32 scalars.

    labels: (..., ) int class ids; logits: (..., classes); weights: (...) float.
    A batch whose weights sum to 0 gives 0, not NaN. The gradient flows to `logits`
    only (float32; cast back by the caller's graph when logits were bfloat16).
    """
    classes = tf.shape(logits)[-1]
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, classes])  # (n, classes)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])  # (n,)
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])  # (n,)
    scale = weights / tf.maximum(tf.reduce_sum(weights), 1e-6)  # (n,): each target's share of the mean

    @tf.custom_gradient
    def loss_fn(x):
        top = tf.reduce_max(x, axis=-1, keepdims=True)  # (n, 1)
        exp = tf.exp(x - top)  # (n, classes), kept for the gradient
        total = tf.reduce_sum(exp, axis=-1)  # (n,)
        target = tf.gather(x, labels, batch_dims=1)  # (n,)
        per_target = tf.math.log(total) + top[:, 0] - target

        def grad(upstream):
            coef = upstream * scale  # (n,)
            d = exp * (coef / total)[:, None]  # softmax * coef
            rows = tf.range(tf.shape(labels)[0])
            return tf.tensor_scatter_nd_sub(d, tf.stack([rows, labels], axis=1), coef)  # - one_hot * coef

        return tf.reduce_sum(per_target * scale), grad

    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)  # (n,)
    return loss_fn(logits), tf.reduce_sum(hits * scale)
