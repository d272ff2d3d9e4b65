"""The ModernBERT encoder: token embeddings + norm, pre-norm blocks, the final norm.

Exactly Hugging Face's `ModernBertModel` (transformers 5): no position table (rotary
positions in every layer, `global_rope_theta` in the global layers and `local_rope_theta`
in the local ones), global attention in the layers named `full_attention` by `layer_types`
(default: every `global_attn_every_n_layers`-th layer from 0) and a sliding window of
`local_attention` tokens in the rest, GeGLU feed-forwards, no biases by default. Variables
map one-to-one onto HF's tensors (`bert_keras.modernbert.weights`).

Inputs: the batch dict named by `pipeline.contract.schema` (TOKEN_IDS, PADDING_MASK with the
1-based instance index per token, optionally CLS_POSITIONS); SEGMENT_IDS is ignored (ModernBERT
has no segment embedding). Outputs: {"sequence_output": (batch, seq, hidden) after the final
norm, "pooled_output": (batch, instances, hidden), the final hidden state at each instance's
[CLS]; ModernBERT has no pooler, its task heads bring their own dense + norm}.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras.encoder import POOLED_OUTPUT, SEQUENCE_OUTPUT, gather_positions
from bert_keras.layers import FastDropout
from bert_keras.modernbert.attention import (
    GLOBAL,
    LAYER_TYPES,
    LOCAL,
    instance_positions,
    layer_types_every,
    rotary_tables,
)
from bert_keras.modernbert.layers import ModernBertBlock, norm, truncated_normal
from bert_keras.modernbert.masks import LocalWindow, global_mask, local_mask
from pipeline.contract.schema import CLS_POSITIONS, PADDING_MASK, TOKEN_IDS


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertEncoder(keras.Model):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        intermediate_size: int = 384,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        hidden_activation: str = "gelu",
        max_position_embeddings: int = 8192,
        initializer_range: float = 0.02,
        norm_eps: float = 1e-5,
        norm_bias: bool = False,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        layer_types: list[str] | None = None,
        global_attn_every_n_layers: int = 3,
        global_rope_theta: float = 160_000.0,
        local_rope_theta: float = 10_000.0,
        local_attention: int = 128,
        embedding_dropout: float = 0.0,
        mlp_bias: bool = False,
        mlp_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_activation != "gelu":
            raise ValueError(f"hidden_activation {hidden_activation!r}: bert_keras implements HF's exact 'gelu'")
        layer_types = list(layer_types or layer_types_every(num_hidden_layers, global_attn_every_n_layers))
        if len(layer_types) != num_hidden_layers or not set(layer_types) <= set(LAYER_TYPES):
            raise ValueError(f"layer_types must name {num_hidden_layers} layers, each one of {', '.join(LAYER_TYPES)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_activation = hidden_activation
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.norm_eps = norm_eps
        self.norm_bias = norm_bias
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.layer_types = layer_types
        self.global_attn_every_n_layers = global_attn_every_n_layers
        self.global_rope_theta = global_rope_theta
        self.local_rope_theta = local_rope_theta
        self.local_attention = local_attention
        self.embedding_dropout = embedding_dropout
        self.mlp_bias = mlp_bias
        self.mlp_dropout = mlp_dropout
        self.head_dim = hidden_size // num_attention_heads
        self.window = LocalWindow(local_attention // 2)

        # ---- layers ----
        self.tok_embeddings = keras.layers.Embedding(
            vocab_size, hidden_size, embeddings_initializer=truncated_normal(initializer_range), name="tok_embeddings"
        )
        self.embedding_norm = norm(norm_eps, norm_bias, "embedding_norm")
        self.embedding_drop = FastDropout(embedding_dropout)
        self.blocks = [
            ModernBertBlock(
                hidden_size, num_attention_heads, intermediate_size, attention_type=kind,
                local_attention=local_attention, first=i == 0, norm_eps=norm_eps, norm_bias=norm_bias,
                attention_bias=attention_bias, mlp_bias=mlp_bias, attention_dropout=attention_dropout,
                mlp_dropout=mlp_dropout, initializer_range=initializer_range, num_hidden_layers=num_hidden_layers,
                name=f"block_{i}",
            )
            for i, kind in enumerate(layer_types)
        ]
        self.final_norm = norm(norm_eps, norm_bias, "final_norm")
        # Built eagerly, as BertEncoder: weights exist for import, optimizers and summary().
        self.tok_embeddings.build((None, None))
        self.embedding_norm.build((None, hidden_size))
        for block in self.blocks:
            block.build()
        self.final_norm.build((None, hidden_size))
        self.built = True

    # BertEncoder's attribute names, for code that reads either family's size.
    @property
    def token_embedding(self):
        return self.tok_embeddings

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    def call(self, inputs, training=None, token_vectors=None):
        """token_vectors: the embeddings of TOKEN_IDS when the caller looked them up already
        (the MLM model shares that lookup with its tied output projection)."""
        token_ids = inputs[TOKEN_IDS]
        padding_mask = inputs[PADDING_MASK]
        if token_vectors is None:
            token_vectors = self.tok_embeddings(token_ids)
        x = self.embedding_drop(self.embedding_norm(token_vectors), training=training)  # (batch, seq, hidden)

        # Per batch, shared by every layer of a type: rotary tables and masks (O(seq) ids).
        positions = instance_positions(padding_mask)  # (batch, seq)
        theta = {GLOBAL: self.global_rope_theta, LOCAL: self.local_rope_theta}
        kinds = set(self.layer_types)
        rotary = {kind: rotary_tables(positions, self.head_dim, theta[kind], x.dtype) for kind in kinds}
        masks = {}
        if GLOBAL in kinds:
            masks[GLOBAL] = global_mask(padding_mask)
        if LOCAL in kinds:
            masks[LOCAL] = local_mask(padding_mask, self.window)  # banded, or full for short rows
        for block in self.blocks:
            kind = block.attention_type
            x = block(x, rotary[kind], masks[kind], training=training)
        x = self.final_norm(x)

        cls_positions = inputs.get(CLS_POSITIONS)
        if cls_positions is None:
            cls_positions = tf.zeros([tf.shape(token_ids)[0], 1], tf.int32)
        return {SEQUENCE_OUTPUT: x, POOLED_OUTPUT: gather_positions(x, cls_positions)}

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "hidden_activation": self.hidden_activation,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "norm_eps": self.norm_eps,
            "norm_bias": self.norm_bias,
            "attention_bias": self.attention_bias,
            "attention_dropout": self.attention_dropout,
            "layer_types": self.layer_types,
            "global_attn_every_n_layers": self.global_attn_every_n_layers,
            "global_rope_theta": self.global_rope_theta,
            "local_rope_theta": self.local_rope_theta,
            "local_attention": self.local_attention,
            "embedding_dropout": self.embedding_dropout,
            "mlp_bias": self.mlp_bias,
            "mlp_dropout": self.mlp_dropout,
        }
