"""ModernBERT's attention pieces: positions per instance, the blocked local attention, masks."""

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.layers import packed_positions, same_instance
from bert_keras.modernbert.attention import (
    LocalWindow,
    banded_attention,
    full_attention,
    global_mask,
    instance_positions,
    local_mask,
)


def _packed_mask(rng, batch, seq, max_instances=4):
    mask = np.zeros((batch, seq), np.int32)
    for r in range(batch):
        start = 0
        for k in range(rng.integers(1, max_instances + 1)):
            n = int(rng.integers(1, seq // 2))
            mask[r, start:start + n] = k + 1
            start += n
            if start >= seq:
                break
    return mask[:, :seq]


def test_instance_positions_equal_classic_packed_positions():
    rng = np.random.default_rng(0)
    mask = _packed_mask(rng, 16, 50)
    ours = instance_positions(tf.constant(mask)).numpy()
    classic = packed_positions(same_instance(tf.constant(mask))).numpy()
    np.testing.assert_array_equal(ours, classic)
    assert ours[0, 0] == 0 and ours.max() > 10


@pytest.mark.parametrize("half_window,block", [(8, None), (8, 4), (5, 4), (3, 8)])
def test_blocked_local_attention_equals_the_full_masked_matrix(half_window, block):
    """Same values as a (seq, seq) softmax with |i - j| <= half_window and same-instance masking,
    for blocks equal to, smaller than and larger than the half window, packed rows included."""
    rng = np.random.default_rng(1)
    batch, heads, seq, dim = 3, 2, 45, 4
    mask = _packed_mask(rng, batch, seq)
    q, k, v = (tf.constant(rng.normal(size=(batch, heads, seq, dim)), tf.float32) for _ in range(3))
    window = LocalWindow(half_window, block)
    assert window.banded(seq)
    i = np.arange(seq)
    allowed = same_instance(tf.constant(mask)).numpy() & (np.abs(i[:, None] - i[None, :]) <= half_window)
    reference_bias = np.where(allowed[:, None], 0.0, -1e9).astype(np.float32)
    reference = full_attention(q, k, v, reference_bias, lambda x, training: x, False).numpy()
    blocked = banded_attention(q, k, v, local_mask(tf.constant(mask), window, tf.float32), window,
                               lambda x, training: x, False).numpy()
    real = mask > 0
    for r in range(batch):
        np.testing.assert_allclose(blocked[r][:, real[r]], reference[r][:, real[r]], rtol=1e-5, atol=1e-6)


def test_short_rows_take_the_full_matrix_with_the_same_mask():
    window = LocalWindow(64)
    assert window.keys == 192 and not window.banded(128) and window.banded(1024) and window.banded(None)
    mask = tf.constant([[1] * 100 + [2] * 28])
    bias = local_mask(mask, window, tf.float32).numpy()  # (1, 1, 128, 128)
    assert bias.shape == (1, 1, 128, 128)
    allowed = bias[0, 0] == 0
    assert allowed[0, 64] and not allowed[0, 65]  # 64 tokens each side, inclusive (HF's sliding_window)
    assert not allowed[99, 100] and allowed[100, 127]  # never across instances
    assert (global_mask(mask, tf.float32).numpy()[0, 0] == 0)[0, 99]
