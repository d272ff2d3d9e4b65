"""Weighted sparse softmax cross-entropy with its gradient written out, plus accuracy.

Why not `tf.nn.sparse_softmax_cross_entropy_with_logits`: on CPU its kernel is the
largest non-matmul cost of a pretraining step. The MLM logits are (batch * 20, 30,522);
forward + backward with the head's bias add and casts and an ArgMax for accuracy
took about 50 ms on (640, 30,522) with that kernel and 25-30 ms as two XLA kernels
over float32 logits. Here the forward kernel also takes the logits in the compute
dtype (bfloat16) with the output bias apart, and the backward kernel writes the
gradient in that dtype, so the float32 logits are never written out, and the
accuracy comes from the same pass as the loss (no ArgMax): 15-18 ms (one process,
same inputs, same loss and gradients). On the bench_pretrain bf16 step: +4.4-4.9%
(A/B in one process).

Accuracy: a target is a hit when its logit is above every other class's. ArgMax
differs only on an exact tie for the top, which it gives to the lowest class index;
here a tie is a miss, so logits that are all equal score 0, not the share of class 0.
"""

from __future__ import annotations

import tensorflow as tf

from bert_keras.fused import compiled


def weighted_sparse_xent(labels, logits, weights, bias=None):
    """(loss, accuracy): means over the targets weighted by `weights`, float32 scalars.

    labels: (...) int class ids; logits: (..., classes), any float dtype; weights: (...)
    float; bias: optional (classes,) float32 added to the logits inside the kernel
    (the MLM output bias). A batch whose weights sum to 0 gives 0, not NaN. Gradients
    flow to `logits` (in its dtype) and to `bias`.
    """
    classes = tf.shape(logits)[-1]
    logits = tf.reshape(logits, [-1, classes])  # (n, classes)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])  # (n,)
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])  # (n,)
    # XLA clamps an out-of-range index where TensorFlow's kernel raised: keep the error.
    in_range = [tf.debugging.assert_less(labels, classes, message="a label is not below the number of classes"),
                tf.debugging.assert_non_negative(labels, message="a label is negative")]
    with tf.control_dependencies(in_range):
        scale = weights / tf.maximum(tf.reduce_sum(weights), 1e-6)  # (n,): each target's share of the mean

    @tf.custom_gradient
    def run(x, b):
        loss, accuracy, exp, total = _forward(x, b, labels, scale)

        def grad(d_loss, _):
            coef = d_loss * scale  # (n,)
            d_x = _backward(exp, total, labels, coef, x)
            if bias is None:
                return d_x, None
            # d_bias = sum over rows of softmax * coef - one-hot * coef. A matvec, not a reduction
            # inside the kernel: XLA's CPU column sum over (640, 30,522) took 8 ms, this 2.
            d_b = tf.linalg.matvec(exp, coef / total, transpose_a=True)
            return d_x, d_b - tf.math.unsorted_segment_sum(coef, labels, classes)

        return (loss, accuracy), grad

    b = tf.zeros([classes], tf.float32) if bias is None else tf.convert_to_tensor(bias, tf.float32)
    return run(logits, b)


@compiled
def _forward(logits, bias, labels, scale):
    x = tf.cast(logits, tf.float32) + bias  # (n, classes)
    target = tf.gather(x, labels, batch_dims=1)  # (n,)
    is_target = tf.range(tf.shape(x)[-1])[None, :] == labels[:, None]
    other = tf.reduce_max(tf.where(is_target, float("-inf"), x), axis=-1)  # best other class, (n,)
    top = tf.maximum(other, target)
    exp = tf.exp(x - top[:, None])  # (n, classes), kept for the backward
    total = tf.reduce_sum(exp, axis=-1)  # (n,)
    per_target = tf.math.log(total) + top - target
    hits = tf.cast(target > other, tf.float32)
    return tf.reduce_sum(per_target * scale), tf.reduce_sum(hits * scale), exp, total


@compiled
def _backward(exp, total, labels, coef, like):
    """(softmax - one-hot) * coef in `like`'s dtype (like: the logits, for their dtype only)."""
    d = (exp / total[:, None] - tf.one_hot(labels, tf.shape(exp)[-1], dtype=tf.float32)) * coef[:, None]
    return tf.cast(d, like.dtype)
