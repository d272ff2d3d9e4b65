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
from bert_keras.modernbert.attention import GLOBAL, LOCAL, instance_positions, layer_types_every, rotary_tables
from bert_keras.modernbert.layers import ModernBertBlock, norm, truncated_normal
from bert_keras.modernbert.masks import LocalWindow, global_mask, local_mask
from pipeline.contract.model_config import ModernBertConfig, hyperparameters
from pipeline.contract.schema import CLS_POSITIONS, PADDING_MASK, TOKEN_IDS

# The encoder's hyperparameters, named once in pipeline.contract.model_config.ModernBertConfig.
HYPERPARAMETERS = tuple(h.name for h in hyperparameters(ModernBertConfig))


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertEncoder(keras.Model):
    """ModernBERT's encoder. Arguments: `ModernBertConfig`'s hyperparameters by name, Hugging Face's
    config.json keys (`vocab_size` required, the rest default and are checked there). Each is kept
    as an attribute of the same name; `layer_types` is resolved to one name per layer."""

    def __init__(self, vocab_size: int, **kwargs):
        given = {name: kwargs.pop(name) for name in HYPERPARAMETERS if name in kwargs}
        super().__init__(**kwargs)
        hp = ModernBertConfig(family="modernbert", vocab_size=vocab_size, **given)  # the table's defaults and checks
        for name in HYPERPARAMETERS:
            setattr(self, name, getattr(hp, name))
        self.layer_types = list(hp.layer_types or layer_types_every(hp.num_hidden_layers,
                                                                    hp.global_attn_every_n_layers))
        self.head_dim = hp.hidden_size // hp.num_attention_heads
        self.window = LocalWindow(hp.local_attention // 2)

        # ---- layers ----
        self.tok_embeddings = keras.layers.Embedding(
            vocab_size, hp.hidden_size, embeddings_initializer=truncated_normal(hp.initializer_range),
            name="tok_embeddings",
        )
        self.embedding_norm = norm(hp.norm_eps, hp.norm_bias, "embedding_norm")
        self.embedding_drop = FastDropout(hp.embedding_dropout)
        self.blocks = [
            ModernBertBlock(
                hp.hidden_size, hp.num_attention_heads, hp.intermediate_size, attention_type=kind,
                local_attention=hp.local_attention, first=i == 0, norm_eps=hp.norm_eps, norm_bias=hp.norm_bias,
                attention_bias=hp.attention_bias, mlp_bias=hp.mlp_bias, attention_dropout=hp.attention_dropout,
                mlp_dropout=hp.mlp_dropout, initializer_range=hp.initializer_range,
                num_hidden_layers=hp.num_hidden_layers, name=f"block_{i}",
            )
            for i, kind in enumerate(self.layer_types)
        ]
        self.final_norm = norm(hp.norm_eps, hp.norm_bias, "final_norm")
        # Built eagerly, as BertEncoder: weights exist for import, optimizers and summary().
        self.tok_embeddings.build((None, None))
        self.embedding_norm.build((None, hp.hidden_size))
        for block in self.blocks:
            block.build()
        self.final_norm.build((None, hp.hidden_size))
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
        return {**super().get_config(), **{name: getattr(self, name) for name in HYPERPARAMETERS}}
