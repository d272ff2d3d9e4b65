"""Every private Keras API bertpipe uses, in one place, each with a test in tests/test_compat.py.

Keras has no public API for these; the `keras==3.15.*` pin is what keeps them there. On a
Keras upgrade, run `pytest tests/test_compat.py`: a renamed or changed private fails there,
by name, instead of as a wrong result somewhere in training.

| function               | private API                                        | used by                   |
|------------------------|----------------------------------------------------|---------------------------|
| `float32_value`        | `keras.src.backend.AutocastScope`                  | `fused` kernels           |
| `adam_slots`           | `Optimizer._get_variable_index`, `Adam._momentums`, `Adam._velocities` | `FusedAdamW` |
| `uses_weight_decay`    | `Optimizer._use_weight_decay`                      | `FusedAdamW`              |
| `WEIGHT_DECAY_HOOK`    | `Optimizer._apply_weight_decay` (overridden)       | `FusedAdamW`              |
| `all_layers`           | `Layer._flatten_layers`                            | `export` (bf16 signatures)|
| `single_threaded_function` | TensorFlow's `eager.context.function_executor_type`, the `_noinline` function attribute | `export` (numeric part) |

`single_threaded_function` is TensorFlow's (not Keras'), kept here for the same reason.

"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.eager import context as tf_context

# The optimizer method `keras.optimizers.Optimizer.apply` calls to decay the weights, once per
# step, before the per-variable updates. FusedAdamW overrides it (by this name) to skip that
# pass and decay inside its update kernel instead.
WEIGHT_DECAY_HOOK = "_apply_weight_decay"


def float32_value(variable):
    """A Keras variable's own (float32) value, also inside a layer's call under a mixed policy,
    where reading it gives a copy cast to the compute dtype. The fused kernels take their
    parameters in float32: the cast pass and its gradient's cast go, and the parameter
    gradients leave the kernels unrounded."""
    with keras.src.backend.AutocastScope(None):
        return tf.convert_to_tensor(variable)


def adam_slots(optimizer, variable):
    """(momentum, velocity): Adam's two slot variables for `variable`."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def uses_weight_decay(optimizer, variable) -> bool:
    """Whether `optimizer` decays `variable` (False for those given to `exclude_from_weight_decay`)."""
    return optimizer._use_weight_decay(variable)


def all_layers(model) -> list:
    """`model` and every layer inside it, recursively, each once."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def single_threaded_function(python_fn, **tf_function_kwargs):
    """`tf.function(python_fn)` whose calls, traced inside another function, run every op of its body
    in a row on the calling thread (TensorFlow's single-threaded executor; kernels still use the
    intra-op pool). The call op records the executor, so SavedModels keep it. The body must hold no
    v1 control flow (Switch/Merge: tf-text's asserts, for one).

    Both parts are needed: TensorFlow inlines a nested function call into its caller's graph
    before it runs, and an inlined body runs on the caller's executor, whatever executor type its
    call op named; `_noinline` keeps the call (and so the executor). With the executor type alone
    the serving signature ran as before (MiniLM-L6, one text, bf16, intra 1 / inter 2 threads:
    7.5-8.0 ms p50 either way); with both, 5.2-5.6 ms."""
    inner = tf.function(python_fn, experimental_attributes={"_noinline": True}, **tf_function_kwargs)

    def call(*args, **kwargs):
        with tf_context.function_executor_type("SINGLE_THREADED_EXECUTOR"):
            return inner(*args, **kwargs)

    return call
