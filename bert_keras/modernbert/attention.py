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
cost O(seq) rather than O(seq^2) in time and memory. Rows no longer than that many keys take
the full masked matrix, which is then as small (`masks.LocalWindow.banded` decides).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_keras.layers import large_negative
from bert_keras.modernbert import fused
from bert_keras.modernbert.masks import LocalWindow, allowed

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


def masked_softmax(scores, mask, training):
    """Softmax over the last axis of scores where `mask` (global_mask / local_mask) allows.

    Training runs it as fused kernels (`bert_keras.modernbert.fused.masked_softmax`), which build
    the mask from the ids inside; inference as plain ops. A row with nothing allowed (padding
    queries) comes out uniform, as with classic BERT's additive mask, and is never read.
    """
    if isinstance(training, bool) and training:
        return fused.masked_softmax(scores, *mask)
    neg = tf.constant(large_negative(scores.dtype), scores.dtype)
    return tf.nn.softmax(tf.where(allowed(*mask), scores, neg), axis=-1)


# ---- the attention itself ---------------------------------------------------------------------


def full_attention(q, k, v, mask, dropout, training):
    """q, k, v (batch, heads, seq, head_dim), q already scaled; mask from global_mask / local_mask."""
    scores = tf.matmul(q, k, transpose_b=True)  # (batch, heads, seq, seq)
    probs = dropout(masked_softmax(scores, mask, training), training=training)
    return tf.matmul(probs, v)  # (batch, heads, seq, head_dim)


def banded_attention(q, k, v, mask, window: LocalWindow, dropout, training):
    """Sliding-window attention in blocks: q, k, v (batch, heads, seq, head_dim) -> the same shape.

    mask: the banded `local_mask`. Scores are (batch, heads, blocks, block, keys): O(seq * keys)
    instead of O(seq^2).
    """
    seq = tf.shape(q)[2]
    qb = window.query_blocks(q)  # (batch, heads, blocks, block, head_dim)
    kb, vb = window.windows(k), window.windows(v)  # (batch, heads, blocks, keys, head_dim)
    scores = tf.matmul(qb, kb, transpose_b=True)  # (batch, heads, blocks, block, keys)
    probs = dropout(masked_softmax(scores, mask, training), training=training)
    out = tf.matmul(probs, vb)  # (batch, heads, blocks, block, head_dim)
    shape = tf.shape(out)
    out = tf.reshape(out, [shape[0], shape[1], shape[2] * shape[3], shape[4]])  # (batch, heads, blocks*block, head_dim)
    return out[:, :, :seq]
