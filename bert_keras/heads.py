"""Task heads on top of `BertEncoder` outputs. Every head returns float32 logits,
so losses stay in float32 under mixed_bfloat16 / mixed_float16 policies.

- `MaskedLMHead`: dense + GELU + LayerNorm, then the output projection tied to
  the word embeddings plus an output bias, computed only at MASK_POSITIONS.
- `NextSentenceHead`: 2 logits per instance from the pooled [CLS] vectors.
- `ClassificationHead`: dropout + dense on pooled vectors.
- `SpanHead`: start / end logits per token (extractive QA), padding masked out.
- `ChunkPooling`: one vector per long document from its chunks' [CLS] vectors
  (mean, max or learned attention), honouring CHUNK_MASK.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras.encoder import gather_positions
from bert_keras.layers import Dense, FastDropout, gelu, large_negative


def _init(initializer_range):
    return keras.initializers.TruncatedNormal(stddev=initializer_range)


@keras.saving.register_keras_serializable(package="bert_keras")
class MaskedLMHead(keras.layers.Layer):
    """(batch, seq, hidden), (batch, pred) positions -> (batch, pred, vocab) float32 logits.

    The projection reuses `token_embedding.embeddings` (tied, as in BERT), so the
    head owns only the transform and the output bias. Gathering first means the
    (hidden x vocab) matmul runs on batch*pred rows, not batch*seq.
    """

    def __init__(self, token_embedding, initializer_range=0.02, layer_norm_epsilon=1e-12, transform_bias=True,
                 norm_bias=True, output_bias=True, **kwargs):
        """transform_bias, norm_bias, output_bias: BERT has all three; ModernBERT's config turns
        the first two off (`classifier_bias`, `norm_bias`) and keeps the last (`decoder_bias`)."""
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        hidden = token_embedding.output_dim
        self.transform = Dense(
            hidden, activation=gelu, use_bias=transform_bias, kernel_initializer=_init(initializer_range),
            name="transform",
        )
        self.transform_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, center=norm_bias,
                                                              name="transform_norm")
        self.transform.build((None, hidden))
        self.transform_norm.build((None, hidden))
        self.output_bias = None
        if output_bias:
            self.output_bias = self.add_weight(
                shape=(token_embedding.input_dim,), initializer="zeros", name="output_bias", autocast=False
            )  # float32 even under mixed precision: added to float32 logits

    def call(self, sequence_output, mask_positions):
        logits = tf.cast(self.unbiased_logits(sequence_output, mask_positions), tf.float32)
        return logits if self.output_bias is None else logits + self.output_bias

    def unbiased_logits(self, sequence_output, mask_positions, table=None):
        """(batch, pred, vocab) logits before the output bias, in the compute dtype.

        Training passes these and `output_bias` to the cross-entropy, which adds the
        bias inside its kernel (`losses.weighted_sparse_xent`): the float32 logits
        are then never written out. table: the word embeddings already cast to the
        compute dtype (`fused.tied_embedding`), else read here.
        """
        x = gather_positions(sequence_output, mask_positions)  # (batch, pred, hidden)
        x = self.transform_norm(self.transform(x))
        batch, pred = tf.shape(x)[0], tf.shape(x)[1]
        flat = tf.reshape(x, [-1, x.shape[-1]])  # (batch*pred, hidden): one 2-D matmul
        if table is None:
            table = tf.cast(self.token_embedding.embeddings, flat.dtype)  # (vocab, hidden)
        logits = tf.matmul(flat, table, transpose_b=True)  # (batch*pred, vocab)
        return tf.reshape(logits, [batch, pred, -1])

    def get_config(self):
        raise NotImplementedError("MaskedLMHead is rebuilt by BertPretrainingModel, which owns the tied embedding")


@keras.saving.register_keras_serializable(package="bert_keras")
class NextSentenceHead(keras.layers.Layer):
    """(batch, instances, hidden) pooled -> (batch, instances, 2) float32 logits (0 = IsNext)."""

    def __init__(self, hidden_size, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.dense = Dense(2, kernel_initializer=_init(initializer_range), name="seq_relationship")
        self.dense.build((None, hidden_size))

    def call(self, pooled):
        return tf.cast(self.dense(pooled), tf.float32)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="bert_keras")
class ClassificationHead(keras.layers.Layer):
    """(batch, [instances,] hidden) pooled -> (..., num_classes) float32 logits."""

    def __init__(self, hidden_size, num_classes, dropout=0.1, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.drop = FastDropout(dropout)
        self.dense = Dense(num_classes, kernel_initializer=_init(initializer_range), name="logits")
        self.dense.build((None, hidden_size))

    def call(self, pooled, training=None):
        return tf.cast(self.dense(self.drop(pooled, training=training)), tf.float32)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "initializer_range": self.initializer_range,
        }


@keras.saving.register_keras_serializable(package="bert_keras")
class SpanHead(keras.layers.Layer):
    """(batch, seq, hidden), padding_mask -> start, end logits, each (batch, seq) float32.

    Padding tokens get a large negative logit so softmax never picks them.
    """

    def __init__(self, hidden_size, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.dense = Dense(2, kernel_initializer=_init(initializer_range), name="span_logits")
        self.dense.build((None, hidden_size))

    def call(self, sequence_output, padding_mask):
        logits = tf.cast(self.dense(sequence_output), tf.float32)  # (batch, seq, 2)
        logits = tf.where(tf.not_equal(padding_mask, 0)[..., None], logits, large_negative(tf.float32))
        return logits[..., 0], logits[..., 1]

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="bert_keras")
class ChunkPooling(keras.layers.Layer):
    """(batch, chunks, hidden) chunk vectors + (batch, chunks) CHUNK_MASK -> (batch, hidden).

    mean: average of real chunks; max: element-wise max over real chunks;
    attention: softmax over real chunks of a learned score v . tanh(W x)
    (hierarchical attention pooling). Empty documents (no real chunk) give zeros.
    """

    MODES = ("mean", "max", "attention")

    def __init__(self, hidden_size, mode="attention", initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"chunk pooling mode {mode!r} is not one of {', '.join(self.MODES)}")
        self.hidden_size = hidden_size
        self.mode = mode
        self.initializer_range = initializer_range
        if mode == "attention":
            self.attention_dense = Dense(
                hidden_size, activation="tanh", kernel_initializer=_init(initializer_range), name="attention_dense"
            )
            self.attention_score = Dense(
                1, use_bias=False, kernel_initializer=_init(initializer_range), name="attention_score"
            )
            self.attention_dense.build((None, hidden_size))
            self.attention_score.build((None, hidden_size))

    def call(self, chunk_vectors, chunk_mask):
        x = tf.cast(chunk_vectors, tf.float32)  # pool in float32: sums over chunks
        real = tf.cast(tf.not_equal(chunk_mask, 0), tf.float32)[..., None]  # (batch, chunks, 1)
        count = tf.reduce_sum(real, axis=1)  # (batch, 1)
        if self.mode == "mean":
            return tf.math.divide_no_nan(tf.reduce_sum(x * real, axis=1), count)
        if self.mode == "max":
            pooled = tf.reduce_max(tf.where(real > 0, x, large_negative(tf.float32)), axis=1)
            return tf.where(count > 0, pooled, 0.0)
        scores = tf.cast(self.attention_score(self.attention_dense(chunk_vectors)), tf.float32)  # (batch, chunks, 1)
        scores = tf.where(real > 0, scores, large_negative(tf.float32))
        weights = tf.nn.softmax(scores, axis=1) * real
        return tf.reduce_sum(weights * x, axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "mode": self.mode,
            "initializer_range": self.initializer_range,
        }


def encode_chunks(encoder, batch, training=None):
    """Run the encoder on (batch, chunks, seq) LONG_DOCUMENT inputs -> (batch, chunks, hidden) [CLS] vectors."""
    from pipeline.contract.schema import PADDING_MASK, SEGMENT_IDS, TOKEN_IDS

    ids = batch[TOKEN_IDS]
    batch_size, chunks, seq = tf.shape(ids)[0], tf.shape(ids)[1], tf.shape(ids)[2]
    flat = {k: tf.reshape(batch[k], [-1, seq]) for k in (TOKEN_IDS, SEGMENT_IDS, PADDING_MASK)}  # (batch*chunks, seq)
    pooled = encoder(flat, training=training)["pooled_output"][:, 0]  # (batch*chunks, hidden)
    return tf.reshape(pooled, [batch_size, chunks, encoder.hidden_size])
