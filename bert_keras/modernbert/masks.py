"""ModernBERT's attention masks: the sliding window's geometry and the per-batch masks.

A mask is (query ids, key ids, band): O(seq) tensors computed once per batch and shared by
the layers of one type; `allowed` expands them to (batch, 1, [blocks,] queries, keys) bool
where a layer needs it (inside the fused softmax kernel in training).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


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


def global_mask(padding_mask):
    """The global layers' mask as (query ids, key ids, band): same instance, non-padding keys."""
    ids = tf.cast(padding_mask, tf.int32)
    return ids, ids, None


def local_mask(padding_mask, window: LocalWindow):
    """The local layers' mask as (query ids, key ids, band): same instance and within the window.

    Banded: ids (batch, blocks, block) and (batch, blocks, keys) with the static (block, keys)
    band, the layout of `banded_attention`'s scores, O(seq); otherwise, for rows of at most
    `window.keys` tokens, (batch, seq) ids and a (seq, seq) band. `allowed` expands them per
    layer (or inside the fused softmax kernel).
    """
    ids = tf.cast(padding_mask, tf.int32)
    if not window.banded(padding_mask.shape[1]):
        i = tf.range(tf.shape(ids)[1])
        return ids, ids, tf.abs(i[:, None] - i[None, :]) <= window.half_window
    # Keys outside the row are padded with id 0, so they are never allowed.
    return window.query_blocks(ids), window.windows(ids), tf.constant(window.band())


def allowed(q_ids, k_ids, band):
    """(batch, [blocks,] queries) and (batch, [blocks,] keys) ids, optional (queries, keys) band ->
    (batch, 1, [blocks,] queries, keys) bool, broadcast over heads: query i may attend key j."""
    q, k = q_ids[:, None, ..., :, None], k_ids[:, None, ..., None, :]
    ok = tf.logical_and(tf.equal(q, k), tf.not_equal(k, 0))
    return ok if band is None else tf.logical_and(ok, band)


