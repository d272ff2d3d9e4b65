"""ModernBERT's attention: rotary positions, global attention and sliding-window (local) attention.

Packing follows the contract of classic BERT (pipeline/contract/schema.py): PADDING_MASK holds
the 1-based instance index of each token (0 = padding), attention never crosses instances and
positions restart at each one. Hugging Face's local layers let token i attend token j when
|i - j| <= local_attention // 2 (`ModernBertConfig.sliding_window`, inclusive); here the same
band, intersected with "same instance", so the window stays inside an instance.

Local attention is computed in blocks (`banded_attention`), not as a (seq, seq) score matrix
with most of it masked: queries are cut into blocks of `block` tokens, and each block scores
only the keys from `halo` tokens before it to `halo` after it, (block + 2 * halo) keys, 192 for
the 128-token window, against `seq` for the full matrix. That is what makes the local layers
cost O(seq) rather than O(seq^2) in time and memory. Below that many keys the full masked
matrix is as small, and `attend` uses it.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from bert_keras.layers import attention_bias, large_negative, same_instance

GLOBAL, LOCAL = "full_attention", "sliding_attention"  # Hugging Face's `layer_types` names
LAYER_TYPES = (GLOBAL, LOCAL)


def layer_types_every(num_layers: int, every: int) -> list[str]:
    """HF's default pattern (`global_attn_every_n_layers`): layers 0, n, 2n, ... global, the rest local."""
    return [LOCAL if i % every else GLOBAL for i in range(num_layers)]


def instance_positions(padding_mask):
    """(batch, seq) instance ids -> each token's position inside its instance, (batch, seq) int32.

    Positions count from the start of each run of equal ids, in O(seq). That equals
    `bert_keras.layers.packed_positions(same_instance(mask))` when each instance is one
    contiguous run, as bertpipe's packer (`bert_keras.packing`) writes them, without its
    (batch, seq, seq) matrix, which at 8,192 tokens is 256 MiB per row. Padding gets 0.
    """
    m = tf.cast(padding_mask, tf.int32)
    batch, seq = tf.shape(m)[0], tf.shape(m)[1]
    index = tf.broadcast_to(tf.range(seq)[None, :], [batch, seq])
    begins = tf.concat([tf.ones([batch, 1], tf.bool), tf.not_equal(m[:, 1:], m[:, :-1])], axis=1)
    run = tf.cumsum(tf.cast(begins, tf.int32), axis=1) - 1 + tf.range(batch)[:, None] * seq  # run id, unique per row
    run_start = tf.math.unsorted_segment_max(tf.where(begins, index, 0), run, batch * seq)
    return tf.where(tf.equal(m, 0), 0, index - tf.gather(run_start, run))


# ---- rotary position embeddings -------------------------------------------------------------


def rotary_tables(positions, head_dim: int, theta: float, dtype):
    """(batch, seq) positions -> cos, sin, each (batch, 1, seq, head_dim) in `dtype`.

    Hugging Face's default RoPE: inverse frequencies theta^(-2i/head_dim), angles computed in
    float32, each frequency used for both halves of the head (its `rotate_half` layout).
    """
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = tf.cast(positions, tf.float32)[..., None] * inv_freq.astype(np.float32)  # (batch, seq, head_dim / 2)
    angles = tf.concat([freqs, freqs], axis=-1)[:, None]  # (batch, 1, seq, head_dim)
    return tf.cast(tf.cos(angles), dtype), tf.cast(tf.sin(angles), dtype)


def apply_rotary(x, cos, sin):
    """x (batch, heads, seq, head_dim) rotated: x * cos + rotate_half(x) * sin."""
    x1, x2 = tf.split(x, 2, axis=-1)
    return x * cos + tf.concat([-x2, x1], axis=-1) * sin


# ---- masks, computed once per batch and shared by the layers of one type ---------------------


class LocalWindow:
    """The sliding window's geometry: `half_window` tokens each side, queries in blocks of `block`.

    `halo` is the half window rounded up to whole blocks, so each query block's keys are
    (1 + 2 * halo / block) whole blocks: slices of one reshape, no gather.
    """

    def __init__(self, half_window: int, block: int | None = None):
        self.half_window = half_window
        self.block = block or max(half_window, 1)
        self.halo = math.ceil(half_window / self.block) * self.block
        self.keys = self.block + 2 * self.halo  # keys scored per query

    def banded(self, seq) -> bool:
        """Whether blocks do less work than the full matrix; an unknown length (export) takes blocks."""
        return seq is None or seq > self.keys

    def num_blocks(self, seq):
        return (seq + self.block - 1) // self.block

    def windows(self, x, fill=0):
        """(batch, [heads,] seq, ...) -> (batch, [heads,] blocks, keys, ...): each query block's key span.

        `axis` is the sequence axis (1 for ids, 2 for heads-first tensors); the sequence is padded
        with `fill` by `halo` in front and to whole blocks plus `halo` behind.
        """
        axis = 1 if x.shape.rank == 2 else 2
        seq = tf.shape(x)[axis]
        n = self.num_blocks(seq)
        pad = [[0, 0]] * x.shape.rank
        pad[axis] = [self.halo, n * self.block - seq + self.halo]
        padded = tf.pad(x, pad, constant_values=fill)
        shape = tf.shape(padded)
        blocks = tf.reshape(padded, tf.concat([shape[:axis], [n + 2 * self.halo // self.block, self.block],
                                               shape[axis + 1:]], 0))  # (..., n + 2 m, block, ...)
        span = 1 + 2 * self.halo // self.block
        # concat of shifted slices: its gradient is slices and pads, no scatter.
        return tf.concat([_take(blocks, axis, i, n) for i in range(span)], axis=axis + 1)

    def query_blocks(self, x, fill=0):
        """(batch, [heads,] seq, ...) -> (batch, [heads,] blocks, block, ...), padded to whole blocks."""
        axis = 1 if x.shape.rank == 2 else 2
        seq = tf.shape(x)[axis]
        n = self.num_blocks(seq)
        pad = [[0, 0]] * x.shape.rank
        pad[axis] = [0, n * self.block - seq]
        shape = tf.shape(x)
        return tf.reshape(tf.pad(x, pad, constant_values=fill),
                          tf.concat([shape[:axis], [n, self.block], shape[axis + 1:]], 0))

    def band(self):
        """(block, keys) bool, static: query offset a may see key slot t, |t - halo - a| <= half_window."""
        a = np.arange(self.block)[:, None]
        t = np.arange(self.keys)[None, :]
        return np.abs(t - self.halo - a) <= self.half_window


def _take(x, axis, start, n):
    begin = [0] * x.shape.rank
    size = [-1] * x.shape.rank
    begin[axis], size[axis] = start, n
    return tf.slice(x, begin, size)


def global_mask(padding_mask, dtype):
    """Additive (batch, 1, seq, seq) bias: same instance, non-padding keys."""
    return attention_bias(same_instance(padding_mask), dtype)


def local_mask(padding_mask, window: LocalWindow, dtype):
    """Additive bias for the local layers: same instance and within the window.

    Banded: (batch, 1, blocks, block, keys), the layout of `banded_attention`'s scores;
    otherwise the full (batch, 1, seq, seq) one.
    """
    neg = tf.constant(large_negative(dtype), dtype)
    ids = tf.cast(padding_mask, tf.int32)
    if not window.banded(padding_mask.shape[1]):
        seq = tf.shape(ids)[1]
        i = tf.range(seq)
        near = tf.abs(i[:, None] - i[None, :]) <= window.half_window  # (seq, seq)
        allowed = tf.logical_and(same_instance(ids), near[None])
        return tf.where(allowed[:, None], tf.zeros([], dtype), neg)
    q = window.query_blocks(ids)  # (batch, blocks, block)
    k = window.windows(ids)  # (batch, blocks, keys); 0 outside the row, so never allowed
    allowed = tf.logical_and(tf.equal(q[..., :, None], k[..., None, :]), tf.not_equal(k, 0)[..., None, :])
    allowed = tf.logical_and(allowed, window.band()[None, None])  # (batch, blocks, block, keys)
    return tf.where(allowed[:, None], tf.zeros([], dtype), neg)


# ---- the attention itself ---------------------------------------------------------------------


def full_attention(q, k, v, bias, dropout, training):
    """q, k, v (batch, heads, seq, head_dim), q already scaled; bias broadcast to (batch, heads, seq, seq)."""
    scores = tf.matmul(q, k, transpose_b=True) + tf.cast(bias, q.dtype)  # (batch, heads, seq, seq)
    probs = dropout(tf.nn.softmax(scores, axis=-1), training=training)
    return tf.matmul(probs, v)  # (batch, heads, seq, head_dim)


def banded_attention(q, k, v, bias, window: LocalWindow, dropout, training):
    """Sliding-window attention in blocks: q, k, v (batch, heads, seq, head_dim) -> the same shape.

    bias: (batch, 1, blocks, block, keys) from `local_mask`. Scores are (batch, heads, blocks,
    block, keys): O(seq * keys) instead of O(seq^2).
    """
    seq = tf.shape(q)[2]
    qb = window.query_blocks(q)  # (batch, heads, blocks, block, head_dim)
    kb, vb = window.windows(k), window.windows(v)  # (batch, heads, blocks, keys, head_dim)
    scores = tf.matmul(qb, kb, transpose_b=True) + tf.cast(bias, q.dtype)  # (batch, heads, blocks, block, keys)
    probs = dropout(tf.nn.softmax(scores, axis=-1), training=training)
    out = tf.matmul(probs, vb)  # (batch, heads, blocks, block, head_dim)
    shape = tf.shape(out)
    out = tf.reshape(out, [shape[0], shape[1], shape[2] * shape[3], shape[4]])  # (batch, heads, blocks*block, head_dim)
    return out[:, :, :seq]
