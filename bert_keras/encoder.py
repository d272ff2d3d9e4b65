"""The BERT encoder: embeddings, transformer blocks, pooler.

By default exactly BERT (Devlin et al. 2018; google-research/bert modeling.py): token +
segment + learned absolute position embeddings, embedding LayerNorm and
dropout, `num_layers` post-LN blocks with exact GELU, and a dense+tanh pooler
on each instance's [CLS]. Variables map one-to-one onto Google's and Hugging
Face's checkpoints (`bert_keras.weights`). With `normalize_first`, the blocks are
pre-LN and a final LayerNorm follows the last one (bertpipe weights only).

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
from pipeline.contract.model_config import BertConfig, hyperparameters
from pipeline.contract.schema import CLS_POSITIONS, PADDING_MASK, SEGMENT_IDS, TOKEN_IDS

SEQUENCE_OUTPUT = "sequence_output"
POOLED_OUTPUT = "pooled_output"


def gather_positions(sequence, positions):
    """(batch, seq, hidden) at (batch, n) indices -> (batch, n, hidden)."""
    return tf.gather(sequence, tf.cast(positions, tf.int32), batch_dims=1)


# The encoder's hyperparameters, named once in pipeline.contract.model_config.BertConfig.
HYPERPARAMETERS = tuple(h.name for h in hyperparameters(BertConfig))


@keras.saving.register_keras_serializable(package="bert_keras")
class BertEncoder(keras.Model):
    """BERT's encoder. Arguments: `BertConfig`'s hyperparameters by name (`vocab_size` required,
    the rest default as there, and are checked there), and `fused_kernels`: whether training
    runs the fused XLA kernels (`bert_keras.fused`, tuned on CPU) or the plain layers
    (`bert_keras.distribute.use_fused_kernels` decides per device). Each hyperparameter is
    kept as an attribute of the same name (`encoder.hidden_size`)."""

    def __init__(self, vocab_size: int, fused_kernels: bool = True, **kwargs):
        given = {name: kwargs.pop(name) for name in HYPERPARAMETERS if name in kwargs}
        super().__init__(**kwargs)
        hp = BertConfig(vocab_size=vocab_size, **given)  # the table's defaults and checks
        for name in HYPERPARAMETERS:
            setattr(self, name, getattr(hp, name))
        self.fused_kernels = fused_kernels

        # ---- layers ----
        init = keras.initializers.TruncatedNormal(stddev=hp.initializer_range)
        self.token_embedding = keras.layers.Embedding(
            hp.vocab_size, hp.hidden_size, embeddings_initializer=init, name="token_embedding"
        )
        self.segment_embedding = keras.layers.Embedding(
            hp.type_vocab_size, hp.hidden_size, embeddings_initializer=init, name="segment_embedding"
        )
        # Gathered per token (not sliced) so packed instances restart at position 0.
        self.position_embedding = keras.layers.Embedding(
            hp.max_position_embeddings, hp.hidden_size, embeddings_initializer=init, name="position_embedding"
        )
        self.embedding_norm = keras.layers.LayerNormalization(epsilon=hp.layer_norm_epsilon, name="embedding_norm")
        self.embedding_dropout = FastDropout(hp.dropout)
        self.blocks = [
            TransformerBlock(
                hp.hidden_size,
                hp.num_heads,
                hp.intermediate_size,
                dropout=hp.dropout,
                attention_dropout=hp.attention_dropout,
                initializer_range=hp.initializer_range,
                layer_norm_epsilon=hp.layer_norm_epsilon,
                normalize_first=hp.normalize_first,
                fused_kernels=fused_kernels,
                name=f"block_{i}",
            )
            for i in range(hp.num_layers)
        ]
        # Pre-LN blocks leave the residual stream unnormalized: one LayerNorm after the last.
        self.final_norm = (keras.layers.LayerNormalization(epsilon=hp.layer_norm_epsilon, name="final_norm")
                           if hp.normalize_first else None)
        self.pooler = Dense(hp.hidden_size, activation="tanh", kernel_initializer=init, name="pooler")
        self._build_variables()

    def _build_variables(self):
        # Build eagerly so weights exist right after construction (for import,
        # optimizer creation under a strategy scope, and summary()).
        for emb in (self.token_embedding, self.segment_embedding, self.position_embedding):
            emb.build((None, None))
        self.embedding_norm.build((None, self.hidden_size))
        for block in self.blocks:
            block.build()
        if self.final_norm is not None:
            self.final_norm.build((None, self.hidden_size))
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
        if self.final_norm is not None:
            x = self.final_norm(x)

        cls_positions = inputs.get(CLS_POSITIONS)
        if cls_positions is None:
            cls_positions = tf.zeros([tf.shape(token_ids)[0], 1], tf.int32)
        pooled = self.pooler(gather_positions(x, cls_positions))  # (batch, instances, hidden)
        return {SEQUENCE_OUTPUT: x, POOLED_OUTPUT: pooled}

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in HYPERPARAMETERS},
                "fused_kernels": self.fused_kernels}


def build_encoder(model_cfg: BertConfig, vocab_size: int, **overrides) -> BertEncoder:
    """A `BertEncoder` from a `BertConfig` section (`model:`).

    `vocab_size` is the vocab file's size (the config's `vocab_size`, when set,
    must agree with it). `overrides`: constructor arguments that win over the
    section (pretraining's own dropout, `fused_kernels`). `model_cfg.init_from`
    is not applied here; see `bert_keras.starting_weights`.
    """
    from pipeline.contract.errors import ConfigError

    if model_cfg.vocab_size is not None and model_cfg.vocab_size != vocab_size:
        raise ConfigError(
            f"model.vocab_size is {model_cfg.vocab_size} but the vocab file has {vocab_size} tokens: "
            "drop model.vocab_size or use the matching vocab"
        )
    return BertEncoder(**{**model_cfg.architecture(), "vocab_size": vocab_size, **overrides}, name="bert_encoder")
