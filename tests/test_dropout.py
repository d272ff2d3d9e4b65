import numpy as np
import tensorflow as tf

from bert_keras.layers import FastDropout


def test_fast_dropout_drops_at_the_rate_keeps_the_mean_and_draws_anew():
    layer = FastDropout(0.1)
    x = tf.ones((64, 4, 128, 128), tf.bfloat16)
    a = layer(x, training=True).numpy().astype(np.float32)
    b = layer(x, training=True).numpy().astype(np.float32)
    dropped = float((a == 0).mean())
    assert abs(dropped - 0.1) < 0.002
    np.testing.assert_allclose(a[a != 0], 1 / 0.9, rtol=4e-3)  # survivors scaled up (bf16 precision)
    assert abs(float(a.mean()) - 1.0) < 0.01
    assert (a != b).mean() > 0.1  # a fresh mask each call
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())


def test_fast_dropout_gradient_uses_the_same_mask():
    layer = FastDropout(0.5)
    x = tf.random.uniform((8, 333))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(grad == 0, y.numpy() == 0)
    np.testing.assert_allclose(grad[grad != 0], 2.0)


def test_masks_are_independent_of_their_neighbours_and_of_the_next_call():
    """The mask bits are a keyed hash of each element's index (fused._keep): no pattern
    along rows or columns, and each call's mask is new. Rate 0.5, 262,144 draws: one
    standard deviation of each agreement share is 0.001."""
    layer = FastDropout(0.5)
    x = tf.ones((512, 512))
    a, b = (layer(x, training=True).numpy() == 0 for _ in range(2))
    assert abs(a.mean() - 0.5) < 0.005
    assert abs((a[:, 1:] == a[:, :-1]).mean() - 0.5) < 0.005  # next element
    assert abs((a[1:] == a[:-1]).mean() - 0.5) < 0.005  # 512 elements on
    assert abs((a == b).mean() - 0.5) < 0.005  # the next call
    for share in (a.mean(0), a.mean(1)):  # per column, per row: 512 draws each, sd 0.022
        assert np.abs(share - 0.5).max() < 0.11
