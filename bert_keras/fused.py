"""Fused element-wise kernels for the training step: XLA-compiled, backward written out.

Why: on CPU TensorFlow runs every element-wise op as its own pass over memory,
and in bfloat16 each pass also converts every element: about 0.75 ms per op on a
(4096, 1024) tensor here. A BERT layer's bias adds, GELU, dropouts, residual adds
and LayerNorms are dozens of such passes forward and backward, more time than
its matmuls. Compiling the whole step with XLA fuses them, but runs the matmuls
through XLA's slower CPU dot and its CPU Philox generator (330 ms for 2M random
words): -32% here. So only these regions are compiled, as one forward and one
backward kernel each, joined by `tf.custom_gradient`; the matmuls stay on
oneDNN. (Differentiating a compiled forward instead gave a backward twice as
slow.) Measured in one process, forward + backward, bf16: bias + GELU on
(4096, 1024) 11.0 ms as plain ops -> 3.7 ms. On the bench_pretrain bf16 step
(A/B in one process, alternating): bias + GELU +6-9%, bias + dropout + residual +
LayerNorm +3.5-5%, dropout with hashed masks +2.2-3.4%, the tied word-embedding
gradient +0.3-1.4%. Three more kernels measured no gain there and were left out:
softmax + dropout of the attention probabilities, the QKV bias + split into
heads, and the QKV bias + the queries' scaling (0.975).

Each kernel computes in float32 and returns its input's dtype. Dropout draws
its bits inside the kernel (`_keep`), and the forward kernel hands the keep mask
to the backward one. Seeds come from a stateful op per call, or, inside the
trainer's step (`step_seeds`), from the step itself. The kernels serve
training only; inference runs the plain layers, and tests check both give the
same values and gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import tensorflow as tf

from bert_keras.compat import float32_value

compiled = tf.function(jit_compile=True)  # one XLA kernel per call


_STEP_KEY: contextvars.ContextVar = contextvars.ContextVar("bertpipe_step_key", default=None)


@contextlib.contextmanager
def step_seeds(key):
    """While tracing a training step: every `new_seed()` is `key` folded with its call's
    order (stateless), instead of a draw from a stateful op whose state no checkpoint
    holds. `key` is a (2,) int64 tensor distinct per step, micro-batch and replica
    (`Trainer._micro_grads`), so a step's dropout masks are a function of the step and a
    resumed run draws the masks the uninterrupted run drew. Same ops count as before."""
    token = _STEP_KEY.set([key, 0])
    try:
        yield
    finally:
        _STEP_KEY.reset(token)


def new_seed():
    """A fresh (2,) int64 seed per call: each dropout in each step gets its own bits."""
    scope = _STEP_KEY.get()
    if scope is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    key, calls = scope
    scope[1] = calls + 1
    return tf.random.stateless_uniform([2], seed=tf.random.experimental.stateless_fold_in(key, calls),
                                       minval=None, maxval=None, dtype=tf.int64)


def _mix(h):
    """murmur3's 32-bit finalizer: every input bit flips about half the output bits."""
    for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(shift, tf.uint32)))
        h = h * tf.constant(factor, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))


def _keep(seed, like, rate: float):
    """A Bernoulli(1 - rate) bool mask shaped like `like`, all ones when rate is 0.

    The bits are a counter-based hash: each element's index, keyed by the seed's two
    words, through murmur3's finalizer twice; one 32-bit draw per element (rate exact
    to 2^-32). Written by hand because XLA's CPU generators cost more than the rest of
    a dropout: the mask alone for 2M elements took 330 ms with Philox, 0.9 ms with
    ThreeFry and 0.45 ms with this (a dropout forward on (16,384, 128) bf16: 2.1 ms
    with ThreeFry, 1.1 ms with this). It is not a cryptographic generator; dropout needs
    each mask at its rate, independent of its neighbours and of the next call's,
    which tests check.
    """
    if not rate:
        return tf.ones(tf.shape(like), tf.bool)
    key = tf.cast(seed, tf.uint32)  # the low 32 bits of each seed word
    index = tf.cast(tf.reshape(tf.range(tf.size(like)), tf.shape(like)), tf.uint32)
    bits = _mix(tf.bitwise.bitwise_xor(_mix(index * tf.constant(0x9E3779B9, tf.uint32) + key[0]), key[1]))
    return bits >= tf.constant(round(rate * 2**32), tf.uint32)


def _dropped(keep, x, rate: float):
    """Inverted dropout of x by its mask, in float32: kept values scaled by 1 / (1 - rate).
    The forward pass and its gradient are the same map."""
    return tf.where(keep, _f32(x) * (1.0 / (1.0 - rate)), 0.0)


def _f32(x):
    return tf.cast(x, tf.float32)


def _rows(x):
    """(..., n) -> (rows, n). The kernels take 2-D tensors: XLA's CPU code for the same
    math on 3-D ones ran 3.5x slower here (GELU backward: 10.7 vs 2.3 ms)."""
    return tf.reshape(x, [-1, tf.shape(x)[-1]])


# ---- dropout ----------------------------------------------------------------------------


@compiled
def _dropout_forward(x, seed, rate):
    keep = _keep(seed, x, rate)
    return tf.cast(_dropped(keep, x, rate), x.dtype), keep


@compiled
def _dropout_backward(upstream, keep, rate):
    return tf.cast(_dropped(keep, upstream, rate), upstream.dtype)


def dropout(x, rate: float):
    """Inverted dropout of any tensor, one kernel forward and one backward."""
    if not rate:
        return x
    seed = new_seed()

    @tf.custom_gradient
    def run(rows):
        y, keep = _dropout_forward(rows, seed, rate)
        return y, lambda upstream: _dropout_backward(upstream, keep, rate)

    return tf.reshape(run(_rows(x)), tf.shape(x))


# ---- bias + GELU (the FFN's first dense) -------------------------------------------------


def normal_cdf(y):
    """Phi(y) = 0.5 * (1 + erf(y / sqrt(2))): GELU(y) = y * Phi(y), BERT's exact form."""
    return 0.5 * (1.0 + tf.math.erf(y * (1.0 / math.sqrt(2.0))))


@compiled
def _bias_gelu_forward(x, bias):
    y = _f32(x) + _f32(bias)
    return tf.cast(y * normal_cdf(y), x.dtype)


@compiled
def _bias_gelu_backward(x, bias, upstream):
    y = _f32(x) + _f32(bias)
    pdf = tf.exp(-0.5 * y * y) * (1.0 / math.sqrt(2.0 * math.pi))
    d = _f32(upstream) * (normal_cdf(y) + y * pdf)
    return tf.cast(d, x.dtype), tf.cast(tf.reduce_sum(d, axis=0), bias.dtype)


def bias_gelu(x, bias):
    """gelu(x + bias), exact erf form; x (..., n), bias (n,)."""

    @tf.custom_gradient
    def run(rows, bias):
        return _bias_gelu_forward(rows, bias), lambda upstream: _bias_gelu_backward(rows, bias, upstream)

    return tf.reshape(run(_rows(x), float32_value(bias)), tf.shape(x))


# ---- bias + dropout + residual + LayerNorm (the end of each sub-layer) -------------------


def _normalize(s, epsilon):
    """(rows, n) float32 -> (normalized, inv_std): LayerNorm before its scale and offset."""
    centered = s - tf.reduce_mean(s, axis=-1, keepdims=True)
    inv_std = tf.math.rsqrt(tf.reduce_mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    return centered * inv_std, inv_std


def _normalize_backward(upstream, normalized, inv_std, gamma):
    """LayerNorm's backward from its output gradient: (d_input, d_gamma, d_beta), float32."""
    g = _f32(upstream)
    gn = g * _f32(gamma)
    d_s = inv_std * (gn - tf.reduce_mean(gn, axis=-1, keepdims=True)
                     - normalized * tf.reduce_mean(gn * normalized, axis=-1, keepdims=True))
    return d_s, tf.reduce_sum(g * normalized, axis=0), tf.reduce_sum(g, axis=0)


@compiled
def _add_norm_forward(y, bias, residual, gamma, beta, seed, rate, epsilon, with_sum):
    """with_sum (a Python bool, so its own kernel): also return s, the pre-LN residual stream."""
    keep = _keep(seed, y, rate)
    s = _dropped(keep, _f32(y) + _f32(bias), rate) + _f32(residual)
    normalized, inv_std = _normalize(s, epsilon)
    out = tf.cast(normalized * _f32(gamma) + _f32(beta), y.dtype)
    return (out, keep, normalized, inv_std) + ((tf.cast(s, y.dtype),) if with_sum else ())


@compiled
def _add_norm_backward(upstream, keep, normalized, inv_std, y, bias, residual, gamma, beta, rate, upstream_sum=None):
    """upstream_sum: the gradient reaching s directly (pre-LN: the residual stream goes on)."""
    d_s, d_gamma, d_beta = _normalize_backward(upstream, normalized, inv_std, gamma)
    if upstream_sum is not None:
        d_s = d_s + _f32(upstream_sum)
    d_h = _dropped(keep, d_s, rate)
    return (tf.cast(d_h, y.dtype), tf.cast(tf.reduce_sum(d_h, axis=0), bias.dtype), tf.cast(d_s, residual.dtype),
            tf.cast(d_gamma, gamma.dtype), tf.cast(d_beta, beta.dtype))


def dropout_add_norm(y, bias, residual, gamma, beta, *, rate: float, epsilon: float):
    """LayerNorm(residual + dropout(y + bias)) * gamma + beta, in y's dtype: a post-LN sub-layer's end.

    y, residual: (..., hidden); bias, gamma, beta: (hidden,).
    """
    seed = new_seed()

    @tf.custom_gradient
    def run(y, bias, residual, gamma, beta):
        out, keep, normalized, inv_std = _add_norm_forward(y, bias, residual, gamma, beta, seed, rate, epsilon, False)

        def grad(upstream):
            return _add_norm_backward(upstream, keep, normalized, inv_std, y, bias, residual, gamma, beta, rate)

        return out, grad

    # Variables are read here, outside: the tape then carries their gradients through the reads.
    bias, gamma, beta = (float32_value(v) for v in (bias, gamma, beta))
    return tf.reshape(run(_rows(y), bias, _rows(residual), gamma, beta), tf.shape(y))


def dropout_add_then_norm(y, bias, residual, gamma, beta, *, rate: float, epsilon: float):
    """(s, LayerNorm(s) * gamma + beta) with s = residual + dropout(y + bias), in y's dtype: a pre-LN
    sub-layer's end (the residual stream s) and the next sub-layer's normalized input, one kernel each way."""
    seed = new_seed()

    @tf.custom_gradient
    def run(y, bias, residual, gamma, beta):
        out, keep, normalized, inv_std, s = _add_norm_forward(y, bias, residual, gamma, beta, seed, rate, epsilon,
                                                              True)

        def grad(upstream_sum, upstream):
            if upstream_sum is None:  # s unused downstream
                upstream_sum = tf.zeros_like(upstream)
            if upstream is None:
                upstream = tf.zeros_like(upstream_sum)
            return _add_norm_backward(upstream, keep, normalized, inv_std, y, bias, residual, gamma, beta, rate,
                                      upstream_sum)

        return (s, out), grad

    bias, gamma, beta = (float32_value(v) for v in (bias, gamma, beta))
    s, out = run(_rows(y), bias, _rows(residual), gamma, beta)
    return tf.reshape(s, tf.shape(y)), tf.reshape(out, tf.shape(y))


# ---- pre-LN: LayerNorm alone, and bias + dropout + residual without a norm ----------------


@compiled
def _layer_norm_forward(x, gamma, beta, epsilon):
    normalized, inv_std = _normalize(_f32(x), epsilon)
    return tf.cast(normalized * _f32(gamma) + _f32(beta), x.dtype), normalized, inv_std


@compiled
def _layer_norm_backward(upstream, normalized, inv_std, x, gamma, beta):
    d_x, d_gamma, d_beta = _normalize_backward(upstream, normalized, inv_std, gamma)
    return tf.cast(d_x, x.dtype), tf.cast(d_gamma, gamma.dtype), tf.cast(d_beta, beta.dtype)


def layer_norm(x, gamma, beta, *, epsilon: float):
    """LayerNorm(x) * gamma + beta over the last axis, in x's dtype (a pre-LN block's first norm)."""

    @tf.custom_gradient
    def run(x, gamma, beta):
        out, normalized, inv_std = _layer_norm_forward(x, gamma, beta, epsilon)
        return out, lambda upstream: _layer_norm_backward(upstream, normalized, inv_std, x, gamma, beta)

    gamma, beta = float32_value(gamma), float32_value(beta)
    return tf.reshape(run(_rows(x), gamma, beta), tf.shape(x))


@compiled
def _add_forward(y, bias, residual, seed, rate):
    keep = _keep(seed, y, rate)
    return tf.cast(_dropped(keep, _f32(y) + _f32(bias), rate) + _f32(residual), y.dtype), keep


@compiled
def _add_backward(upstream, keep, y, bias, residual, rate):
    d_h = _dropped(keep, upstream, rate)
    return tf.cast(d_h, y.dtype), tf.cast(tf.reduce_sum(d_h, axis=0), bias.dtype), tf.cast(upstream, residual.dtype)


def dropout_add(y, bias, residual, *, rate: float):
    """residual + dropout(y + bias), in y's dtype: a pre-LN sub-layer's end when no norm follows it here."""
    seed = new_seed()

    @tf.custom_gradient
    def run(y, bias, residual):
        out, keep = _add_forward(y, bias, residual, seed, rate)
        return out, lambda upstream: _add_backward(upstream, keep, y, bias, residual, rate)

    return tf.reshape(run(_rows(y), float32_value(bias), _rows(residual)), tf.shape(y))


# ---- the word-embedding table, shared by the lookup and the tied MLM output projection ----


@compiled
def _table_gradient(d_table, d_vectors, ids):
    """d_table (vocab, hidden) + the looked-up rows' gradients scattered to their ids, float32."""
    return tf.tensor_scatter_nd_add(_f32(d_table), ids[:, None], _f32(d_vectors))


def tied_embedding(table, ids, dtype):
    """(table[ids], table) in `dtype`, for a lookup and a tied output projection.

    table: the float32 (vocab, hidden) variable; ids: int (...). Its gradient is one
    dense float32 (vocab, hidden) tensor: the projection's gradient plus the looked-up
    rows' gradients scattered in, in one XLA kernel (2.1 ms on 30,522 x 256 with
    4,096 ids). Reading the table twice instead leaves TensorFlow to cast the
    projection's gradient, turn the lookup's sparse gradient into a dense one and add
    the two: three passes over the table (5.7-7.5 ms).
    """
    flat_ids = tf.reshape(tf.cast(ids, tf.int32), [-1])

    @tf.custom_gradient
    def run(table):
        cast = tf.cast(table, dtype)
        vectors = tf.gather(cast, flat_ids)

        def grad(d_vectors, d_table):
            return _table_gradient(d_table, d_vectors, flat_ids)

        return (vectors, cast), grad

    vectors, cast = run(float32_value(table))
    return tf.reshape(vectors, tf.concat([tf.shape(ids), [-1]], axis=0)), cast
