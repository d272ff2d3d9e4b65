"""The BERT encoder: embeddings, post-LayerNorm transformer blocks, pooler.

Exactly BERT (Devlin et al. 2018; google-research/bert modeling.py): token +
segment + learned absolute position embeddings, embedding LayerNorm and
dropout, `num_layers` post-LN blocks with exact GELU, and a dense+tanh pooler
on each instance's [CLS]. Variables map one-to-one onto Google's and Hugging
Face's checkpoints (`bert_keras.weights`).

Inputs are the batch dict named by `pipeline.contract.schema`: TOKEN_IDS, SEGMENT_IDS,
PADDING_MASK (1-based instance index per token when rows are packed) and
optionally CLS_POSITIONS (batch, instances), default [[0]].
Outputs: {"sequence_output": (batch, seq, hidden),
          "pooled_output": (batch, instances, hidden)}.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras.layers import Dense, FastDropout, TransformerBlock, attention_bias, packed_positions, same_instance
from pipeline.contract.schema import CLS_POSITIONS, PADDING_MASK, SEGMENT_IDS, TOKEN_IDS

SEQUENCE_OUTPUT = "sequence_output"
POOLED_OUTPUT = "pooled_output"


def gather_positions(sequence, positions):
    """(batch, seq, hidden) at (batch, n) indices -> (batch, n, hidden)."""
    return tf.gather(sequence, tf.cast(positions, tf.int32), batch_dims=1)


@keras.saving.register_keras_serializable(package="bert_keras")
class BertEncoder(keras.Model):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: int = 1024,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon

        # ---- layers ----
        init = keras.initializers.TruncatedNormal(stddev=initializer_range)
        self.token_embedding = keras.layers.Embedding(
            vocab_size, hidden_size, embeddings_initializer=init, name="token_embedding"
        )
        self.segment_embedding = keras.layers.Embedding(
            type_vocab_size, hidden_size, embeddings_initializer=init, name="segment_embedding"
        )
        # Gathered per token (not sliced) so packed instances restart at position 0.
        self.position_embedding = keras.layers.Embedding(
            max_position_embeddings, hidden_size, embeddings_initializer=init, name="position_embedding"
        )
        self.embedding_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="embedding_norm")
        self.embedding_dropout = FastDropout(dropout)
        self.blocks = [
            TransformerBlock(
                hidden_size,
                num_heads,
                intermediate_size,
                dropout=dropout,
                attention_dropout=attention_dropout,
                initializer_range=initializer_range,
                layer_norm_epsilon=layer_norm_epsilon,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooler = Dense(hidden_size, activation="tanh", kernel_initializer=init, name="pooler")
        self._build_variables()

    def _build_variables(self):
        # Build eagerly so weights exist right after construction (for import,
        # optimizer creation under a strategy scope, and summary()).
        for emb in (self.token_embedding, self.segment_embedding, self.position_embedding):
            emb.build((None, None))
        self.embedding_norm.build((None, self.hidden_size))
        for block in self.blocks:
            block.build()
        self.pooler.build((None, self.hidden_size))
        self.built = True

    def call(self, inputs, training=None, token_vectors=None):
        """token_vectors: the word embeddings of TOKEN_IDS when the caller looked them up
        already (the pretraining model shares that lookup with its tied MLM projection)."""
        token_ids = inputs[TOKEN_IDS]
        padding_mask = inputs[PADDING_MASK]
        allowed = same_instance(padding_mask)  # (batch, seq, seq), shared by every layer
        positions = packed_positions(allowed)  # (batch, seq)

        if token_vectors is None:
            token_vectors = self.token_embedding(token_ids)
        x = (
            token_vectors
            + self.segment_embedding(inputs[SEGMENT_IDS])
            + self.position_embedding(positions)
        )
        x = self.embedding_dropout(self.embedding_norm(x), training=training)
        bias = attention_bias(allowed, x.dtype)  # (batch, 1, seq, seq)
        for block in self.blocks:
            x = block(x, bias, training=training)

        cls_positions = inputs.get(CLS_POSITIONS)
        if cls_positions is None:
            cls_positions = tf.zeros([tf.shape(token_ids)[0], 1], tf.int32)
        pooled = self.pooler(gather_positions(x, cls_positions))  # (batch, instances, hidden)
        return {SEQUENCE_OUTPUT: x, POOLED_OUTPUT: pooled}

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


def build_encoder(model_cfg, vocab_size: int, **overrides) -> BertEncoder:
    """A `BertEncoder` from a `pipeline.contract.config.ModelConfig` section.

    `vocab_size` is the vocab file's size (the config's `vocab_size`, when set,
    must agree with it). `model_cfg.init_from` is not applied here; see
    `bert_keras.weights.init_from`.
    """
    from pipeline.contract.errors import ConfigError

    if model_cfg.vocab_size is not None and model_cfg.vocab_size != vocab_size:
        raise ConfigError(
            f"model.vocab_size is {model_cfg.vocab_size} but the vocab file has {vocab_size} tokens: "
            "drop model.vocab_size or use the matching vocab"
        )
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        num_layers=model_cfg.num_layers,
        num_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        type_vocab_size=model_cfg.type_vocab_size,
        dropout=model_cfg.dropout,
        attention_dropout=model_cfg.attention_dropout,
        initializer_range=model_cfg.initializer_range,
    )
    kwargs.update(overrides)
    return BertEncoder(**kwargs, name="bert_encoder")
