"""One test per private API in bert_keras/compat.py: on a Keras or TensorFlow upgrade that renames or
changes one, the failure names it here."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bert_keras import compat


def test_float32_value_reads_the_float32_variable_inside_a_mixed_precision_call():
    seen = {}

    class Probe(keras.layers.Layer):
        def build(self, _):
            self.w = self.add_weight(shape=(3,), initializer="ones")

        def call(self, x):
            seen["autocast"] = tf.convert_to_tensor(self.w).dtype  # Keras' autocast inside a call
            seen["float32"] = compat.float32_value(self.w).dtype
            return tf.cast(x, tf.float32) * compat.float32_value(self.w)

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        probe = Probe()
        with tf.GradientTape() as tape:
            out = probe(tf.ones(3, tf.float32))
        grad = tape.gradient(out, probe.w.value)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert seen == {"autocast": tf.bfloat16, "float32": tf.float32}
    np.testing.assert_array_equal(grad.numpy(), [1.0, 1.0, 1.0])  # the read is differentiable


def _adamw_with_one_step(weight_decay=0.0):
    w = keras.Variable(np.ones((2, 2), np.float32), name="w")
    b = keras.Variable(np.ones(2, np.float32), name="b")
    opt = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=weight_decay, beta_1=0.9, beta_2=0.99)
    opt.exclude_from_weight_decay(var_list=[b])
    opt.build([w, b])
    return opt, w, b


def test_adam_slots_are_the_momentum_and_velocity_of_that_variable():
    opt, w, b = _adamw_with_one_step()
    grad_w, grad_b = np.full((2, 2), 2.0, np.float32), np.full(2, 3.0, np.float32)
    opt.apply_gradients([(tf.constant(grad_w), w), (tf.constant(grad_b), b)])
    m, v = compat.adam_slots(opt, b)
    np.testing.assert_allclose(m.numpy(), 0.1 * grad_b, rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), 0.01 * grad_b**2, rtol=1e-5)
    assert compat.adam_slots(opt, w)[0].shape == (2, 2)


def test_uses_weight_decay_follows_exclude_from_weight_decay():
    opt, w, b = _adamw_with_one_step(weight_decay=0.01)
    assert compat.uses_weight_decay(opt, w) and not compat.uses_weight_decay(opt, b)


def test_the_weight_decay_hook_fusedadamw_overrides_is_called_once_per_step():
    opt, w, b = _adamw_with_one_step(weight_decay=0.01)
    calls = []
    original = getattr(opt, compat.WEIGHT_DECAY_HOOK)
    setattr(opt, compat.WEIGHT_DECAY_HOOK, lambda variables: calls.append(len(variables)) or original(variables))
    opt.apply_gradients([(tf.ones((2, 2)), w), (tf.ones(2), b)])
    assert calls == [2]  # FusedAdamW relies on it: decaying in its kernel instead, not twice


def test_all_layers_walks_every_nested_layer_once():
    from bert_keras.encoder import BertEncoder

    encoder = BertEncoder(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                          max_position_embeddings=16)
    layers = compat.all_layers(encoder)
    assert layers[0] is encoder and len({id(x) for x in layers}) == len(layers)
    assert encoder.blocks[1].qkv in layers and encoder.blocks[0].output_norm in layers  # inside a block


def test_single_threaded_function_runs_its_ops_on_one_thread_where_a_plain_call_spreads():
    """Four independent ops that each note their thread: a plain nested call (inlined into the caller
    and run by TensorFlow's default executor) spreads them over the inter-op threads, the executor type
    alone (the call inlined all the same) too; `single_threaded_function` runs them all on one thread."""
    import threading
    import time

    from tensorflow.python.eager import context as tf_context

    seen: list[int] = []

    def note(x):
        seen.append(threading.get_ident())
        time.sleep(0.01)  # long enough that the other ready ops are handed to other threads
        return x

    def body(x):  # stateful=False: no automatic control dependencies chain them
        return tf.add_n([tf.numpy_function(note, [x + float(i)], tf.float32, stateful=False) for i in range(4)])

    def threads_used(call) -> set[int]:
        @tf.function
        def outer(x):
            return call(x)

        used = set()
        for _ in range(3):
            seen.clear()
            assert float(outer(tf.constant(1.0))) == 10.0  # (1 + 2 + 3 + 4)
            used.add(len(set(seen)))
        return used

    plain = tf.function(body)

    def executor_type_only(x):
        with tf_context.function_executor_type("SINGLE_THREADED_EXECUTOR"):
            return plain(x)

    assert max(threads_used(plain)) > 1
    assert max(threads_used(executor_type_only)) > 1
    assert threads_used(compat.single_threaded_function(body)) == {1}
