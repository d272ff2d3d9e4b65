"""ModernBERT's attention pieces: positions per instance, the blocked local attention, masks."""

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.layers import packed_positions, same_instance
from bert_keras.modernbert.attention import banded_attention, full_attention, instance_positions
from bert_keras.modernbert.masks import LocalWindow, allowed, global_mask, local_mask


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


def _reference_attention(q, k, v, ok):
    """numpy softmax attention where `ok` (batch, seq, seq) allows."""
    scores = np.einsum("bhqd,bhkd->bhqk", q, k)
    scores = np.where(ok[:, None], scores, -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", probs / probs.sum(-1, keepdims=True), v)


def _no_dropout(x, training):
    return x


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("half_window,block", [(8, None), (8, 4), (5, 4), (3, 8)])
def test_blocked_local_attention_equals_the_full_masked_matrix(half_window, block, training):
    """Same values as a (seq, seq) softmax with |i - j| <= half_window and same-instance masking,
    for blocks equal to, smaller than and larger than the half window, packed rows included;
    inference (plain ops) and training (the fused softmax kernels) alike."""
    rng = np.random.default_rng(1)
    batch, heads, seq, dim = 3, 2, 45, 4
    mask = _packed_mask(rng, batch, seq)
    q, k, v = (rng.normal(size=(batch, heads, seq, dim)).astype(np.float32) for _ in range(3))
    window = LocalWindow(half_window, block)
    assert window.banded(seq)
    i = np.arange(seq)
    ok = same_instance(tf.constant(mask)).numpy() & (np.abs(i[:, None] - i[None, :]) <= half_window)
    reference = _reference_attention(q, k, v, ok)
    blocked = banded_attention(tf.constant(q), tf.constant(k), tf.constant(v), local_mask(tf.constant(mask), window),
                               window, _no_dropout, training).numpy()
    real = mask > 0
    for r in range(batch):
        np.testing.assert_allclose(blocked[r][:, real[r]], reference[r][:, real[r]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["global", "local_full", "local_banded"])
def test_fused_masked_softmax_gives_the_plain_values_and_gradients(kind):
    rng = np.random.default_rng(2)
    seq = 45 if kind == "local_banded" else 20
    mask = tf.constant(_packed_mask(rng, 2, seq))
    window = LocalWindow(8)
    spec = global_mask(mask) if kind == "global" else local_mask(mask, window)
    q, k, v = (tf.constant(rng.normal(size=(2, 3, seq, 4)), tf.float32) for _ in range(3))
    upstream = tf.constant(rng.normal(size=(2, 3, seq, 4)), tf.float32)
    run = full_attention if kind != "local_banded" else lambda *a: banded_attention(*a[:4], window, *a[4:])
    results = []
    for training in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = run(q, k, v, spec, _no_dropout, training)
        results.append([out.numpy()] + [g.numpy() for g in tape.gradient(out, [q, k, v], output_gradients=upstream)])
    real = mask.numpy() > 0
    for plain, fused in zip(*results, strict=True):
        np.testing.assert_allclose(fused[:, :, real[0]], plain[:, :, real[0]], rtol=1e-5, atol=1e-6)
    assert np.abs(results[1][1]).max() > 1e-3  # the gradients are not trivially zero


def test_short_rows_take_the_full_matrix_with_the_same_mask():
    window = LocalWindow(64)
    assert window.keys == 192 and not window.banded(128) and window.banded(1024) and window.banded(None)
    mask = tf.constant([[1] * 100 + [2] * 28])
    ok = allowed(*local_mask(mask, window)).numpy()
    assert ok.shape == (1, 1, 128, 128)
    ok = ok[0, 0]
    assert ok[0, 64] and not ok[0, 65]  # 64 tokens each side, inclusive (HF's sliding_window)
    assert not ok[99, 100] and ok[100, 127]  # never across instances
    full = allowed(*global_mask(mask)).numpy()[0, 0]
    assert full[0, 99] and not full[0, 100] and full[127, 100]
