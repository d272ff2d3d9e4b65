"""ModernBERT's pre-norm block: x = x + Attn(norm(x)); x = x + GeGLU(norm(x)).

As Hugging Face's `ModernBertEncoderLayer`: layer 0 has no attention norm (the embedding
norm precedes it), Q, K and V come from one fused projection `Wqkv` (columns [q | k | v]),
rotary positions are applied to q and k, local layers attend within a sliding window, and
the feed-forward is a GeGLU: `Wi` makes (input, gate) halves, out = Wo(gelu(input) * gate).
Biases follow the config (`attention_bias`, `mlp_bias`, `norm_bias`; all off in ModernBERT).
GELU is the exact erf form (HF's "gelu"), `bert_keras.layers.gelu`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from bert_keras.layers import Dense, FastDropout, gelu
from bert_keras.modernbert.attention import GLOBAL, LAYER_TYPES, apply_rotary, banded_attention, full_attention
from bert_keras.modernbert.masks import LocalWindow


def truncated_normal(stddev: float):
    """HF's init: a normal truncated at `initializer_cutoff_factor` = 2 std, Keras' fixed cut."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


def norm(epsilon: float, bias: bool, name: str):
    """LayerNorm with or without its bias (HF's `nn.LayerNorm(bias=norm_bias)`)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, center=bias, name=name)


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertBlock(keras.layers.Layer):
    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        attention_type: str = GLOBAL,
        local_attention: int = 128,
        first: bool = False,
        norm_eps: float = 1e-5,
        norm_bias: bool = False,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_dropout: float = 0.0,
        initializer_range: float = 0.02,
        num_hidden_layers: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention_type not in LAYER_TYPES:
            raise ValueError(f"attention_type {attention_type!r} is not one of {', '.join(LAYER_TYPES)}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.attention_type = attention_type
        self.local_attention = local_attention
        self.first = first
        self.norm_eps = norm_eps
        self.norm_bias = norm_bias
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.mlp_dropout = mlp_dropout
        self.initializer_range = initializer_range
        self.num_hidden_layers = num_hidden_layers
        self.head_dim = hidden_size // num_attention_heads
        self.window = LocalWindow(local_attention // 2)

        # HF's init: inputs at initializer_range, outputs scaled down by sqrt(2 * layers).
        std_in = initializer_range
        std_out = initializer_range / math.sqrt(2.0 * num_hidden_layers)
        # ---- layers, in the order of an HF layer ----
        self.attn_norm = None if first else norm(norm_eps, norm_bias, "attn_norm")
        self.wqkv = Dense(3 * hidden_size, use_bias=attention_bias, kernel_initializer=truncated_normal(std_in), name="wqkv")
        self.attn_out = Dense(hidden_size, use_bias=attention_bias, kernel_initializer=truncated_normal(std_out),
                              name="attn_out")
        self.mlp_norm = norm(norm_eps, norm_bias, "mlp_norm")
        self.wi = Dense(2 * intermediate_size, use_bias=mlp_bias, kernel_initializer=truncated_normal(std_in), name="wi")
        self.mlp_out = Dense(hidden_size, use_bias=mlp_bias, kernel_initializer=truncated_normal(std_out),
                             name="mlp_out")
        self.probs_dropout = FastDropout(attention_dropout)
        self.attn_out_dropout = FastDropout(attention_dropout)  # HF's `out_drop` uses attention_dropout too
        self.mlp_drop = FastDropout(mlp_dropout)

    def build(self, input_shape=None):
        h = self.hidden_size
        if self.attn_norm is not None:
            self.attn_norm.build((None, h))
        self.wqkv.build((None, h))
        self.attn_out.build((None, h))
        self.mlp_norm.build((None, h))
        self.wi.build((None, h))
        self.mlp_out.build((None, self.intermediate_size))
        self.built = True

    def call(self, x, rotary, mask, training=None):
        """x: (batch, seq, hidden); rotary: (cos, sin) of this layer type; mask: its
        (query ids, key ids, band) from `masks.global_mask` / `local_mask`."""
        h = x if self.attn_norm is None else self.attn_norm(x)
        x = x + self.attn_out_dropout(self.attn_out(self._attention(h, rotary, mask, training)), training=training)
        return x + self._mlp(self.mlp_norm(x), training)

    def _attention(self, x, rotary, mask, training):
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.wqkv(x), [batch, seq, 3, self.num_attention_heads, self.head_dim])
        q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]), num=3, axis=0)  # each (batch, heads, seq, head_dim)
        cos, sin = rotary
        q = apply_rotary(q, cos, sin) * tf.cast(self.head_dim**-0.5, q.dtype)
        k = apply_rotary(k, cos, sin)
        if mask[0].shape.rank == 3:  # blocked query ids: the local layers' banded layout (masks.local_mask)
            context = banded_attention(q, k, v, mask, self.window, self.probs_dropout, training)
        else:
            context = full_attention(q, k, v, mask, self.probs_dropout, training)
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, seq, self.hidden_size])

    def _mlp(self, x, training):
        inner, gate = tf.split(self.wi(x), 2, axis=-1)  # each (batch, seq, intermediate)
        return self.mlp_out(self.mlp_drop(gelu(inner) * gate, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "attention_type": self.attention_type,
            "local_attention": self.local_attention,
            "first": self.first,
            "norm_eps": self.norm_eps,
            "norm_bias": self.norm_bias,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "attention_dropout": self.attention_dropout,
            "mlp_dropout": self.mlp_dropout,
            "initializer_range": self.initializer_range,
            "num_hidden_layers": self.num_hidden_layers,
        }
