"""google-research/bert's own `modeling.py` (the `bert-tensorflow==1.0.4` wheel) on TF 2.

The file is TF1 code; this version imports `tensorflow.compat.v1` itself. Two TF1 APIs it calls
are gone from TF 2.21 with Keras 3, so they get stand-ins written to TF1's documented behaviour:
`tf.layers.dense` (a 2-D kernel `name/kernel` and bias `name/bias`; used only by the pooler) and
`tf.contrib.layers.layer_norm` (variables `LayerNorm/beta`, `LayerNorm/gamma`, epsilon 1e-12).
Everything else (embeddings, attention, masks, the blocks, variable names, the Saver) is the
original; only that module's own `tf` name is redirected, and `sys.modules` is restored on exit.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import tensorflow as tf

v1 = tf.compat.v1


def _dense(inputs, units, activation=None, kernel_initializer=None, name=None):
    with v1.variable_scope(name, default_name="dense"):
        kernel = v1.get_variable("kernel", [int(inputs.shape[-1]), units], initializer=kernel_initializer)
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
        out = tf.matmul(inputs, kernel) + bias
    return activation(out) if activation is not None else out


def _layer_norm(inputs, begin_norm_axis=-1, begin_params_axis=-1, scope=None):
    with v1.variable_scope(scope, default_name="LayerNorm"):
        dim = int(inputs.shape[-1])
        beta = v1.get_variable("beta", [dim], initializer=v1.zeros_initializer())
        gamma = v1.get_variable("gamma", [dim], initializer=v1.ones_initializer())
        mean, variance = tf.nn.moments(inputs, [begin_norm_axis], keepdims=True)
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, variance_epsilon=1e-12)


class _CompatV1:
    """tensorflow.compat.v1 as modeling.py sees it: the real module, with `layers.dense` back."""

    layers = types.SimpleNamespace(dense=_dense)

    def __getattr__(self, name):
        return getattr(v1, name)


@contextlib.contextmanager
def google_modeling():
    """Yields a freshly imported `bert.modeling`, dropped from sys.modules again on exit."""
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.layers = types.SimpleNamespace(layer_norm=_layer_norm)
    saved = {name: sys.modules.get(name) for name in ("tensorflow.contrib", "bert.modeling")}
    sys.modules["tensorflow.contrib"] = contrib
    sys.modules.pop("bert.modeling", None)
    try:
        modeling = importlib.import_module("bert.modeling")
        modeling.tf = _CompatV1()  # its functions read the module global `tf` when they run
        yield modeling
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
