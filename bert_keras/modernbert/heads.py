"""ModernBERT's task heads and the models around them.

- `ModernBertMaskedLM`: the encoder and HF's MLM head (`ModernBertForMaskedLM`): dense
  (`classifier_bias`), GELU (`classifier_activation`), norm, then the decoder tied to the
  token embeddings plus its bias (`decoder_bias`). The head is `bert_keras.heads.MaskedLMHead`,
  the one classic BERT uses, with ModernBERT's bias switches; logits only at MASK_POSITIONS.
  Its output forms are `BertPretrainingModel`'s without NSP, so `pretraining_model.mlm_only_loss`
  trains it.
- `ModernBertClassificationHead`: HF's `ModernBertForSequenceClassification` head: pool ("cls":
  each instance's [CLS]; "mean": the mean over the instance's tokens), dense + GELU + norm, then
  dropout and the classifier (`bert_keras.heads.ClassificationHead`). Per instance, so packed rows
  classify each of their instances.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from bert_keras.encoder import SEQUENCE_OUTPUT, gather_positions
from bert_keras.fused import float32_value, tied_embedding
from bert_keras.heads import ClassificationHead, MaskedLMHead
from bert_keras.layers import Dense, gelu
from bert_keras.modernbert.encoder import ModernBertEncoder
from bert_keras.modernbert.layers import norm, truncated_normal
from bert_keras.pretraining_model import MLM_BIAS, MLM_LOGITS, MLM_UNBIASED
from pipeline.contract.schema import CLS_POSITIONS, MASK_POSITIONS, PADDING_MASK, TOKEN_IDS

POOLINGS = ("cls", "mean")


def _check_activation(activation: str) -> None:
    if activation != "gelu":
        raise ValueError(f"classifier_activation {activation!r}: bert_keras implements HF's exact 'gelu'")


def _out_std(encoder: ModernBertEncoder) -> float:
    """HF's init of output projections: initializer_range / sqrt(2 * layers)."""
    return encoder.initializer_range / math.sqrt(2.0 * encoder.num_hidden_layers)


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertMaskedLM(keras.Model):
    """{"mlm_logits": (batch, pred, vocab) float32}; training: the logits before the bias and the bias
    apart (`MaskedLMHead.unbiased_logits`), for the cross-entropy's kernel."""

    def __init__(self, encoder: ModernBertEncoder, classifier_bias: bool = False, classifier_activation: str = "gelu",
                 decoder_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        _check_activation(classifier_activation)
        self.encoder = encoder
        self.classifier_bias = classifier_bias
        self.classifier_activation = classifier_activation
        self.decoder_bias = decoder_bias
        self.mlm_head = MaskedLMHead(
            encoder.tok_embeddings, initializer_range=_out_std(encoder), layer_norm_epsilon=encoder.norm_eps,
            transform_bias=classifier_bias, norm_bias=encoder.norm_bias, output_bias=decoder_bias, name="mlm_head",
        )
        self.built = True

    def call(self, inputs, training=None):
        if not (isinstance(training, bool) and training):
            enc = self.encoder(inputs, training=training)
            return {MLM_LOGITS: self.mlm_head(enc[SEQUENCE_OUTPUT], inputs[MASK_POSITIONS])}
        # Training: one read of the embeddings for the lookup and the tied projection (fused.tied_embedding).
        vectors, table = tied_embedding(self.encoder.tok_embeddings.embeddings, inputs[TOKEN_IDS],
                                        self.encoder.compute_dtype)
        enc = self.encoder(inputs, training=True, token_vectors=vectors)
        out = {MLM_UNBIASED: self.mlm_head.unbiased_logits(enc[SEQUENCE_OUTPUT], inputs[MASK_POSITIONS], table)}
        if self.mlm_head.output_bias is not None:
            out[MLM_BIAS] = float32_value(self.mlm_head.output_bias)
        return out

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "classifier_bias": self.classifier_bias, "classifier_activation": self.classifier_activation,
                "decoder_bias": self.decoder_bias}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder, **config)


def instance_means(sequence_output, padding_mask, instances: int):
    """(batch, seq, hidden) -> (batch, instances, hidden): the mean over each instance's tokens.

    Instance slot k holds the tokens whose PADDING_MASK is k + 1 (as CLS_POSITIONS' slot k);
    an empty slot gives zeros. One matmul with the (batch, seq, instances) membership matrix.
    """
    member = tf.one_hot(tf.cast(padding_mask, tf.int32) - 1, instances, dtype=tf.float32)  # (batch, seq, instances)
    sums = tf.matmul(member, tf.cast(sequence_output, tf.float32), transpose_a=True)  # (batch, instances, hidden)
    counts = tf.reduce_sum(member, axis=1)[..., None]  # (batch, instances, 1)
    return tf.cast(tf.math.divide_no_nan(sums, counts), sequence_output.dtype)


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertClassificationHead(keras.layers.Layer):
    """(batch, seq, hidden) sequence output -> (batch, instances, num_classes) float32 logits."""

    def __init__(self, hidden_size, num_classes, classifier_pooling="cls", classifier_dropout=0.0,
                 classifier_bias=False, classifier_activation="gelu", norm_eps=1e-5, norm_bias=False,
                 initializer_range=0.02, num_hidden_layers=1, **kwargs):
        super().__init__(**kwargs)
        if classifier_pooling not in POOLINGS:
            raise ValueError(f"classifier_pooling {classifier_pooling!r} is not one of {', '.join(POOLINGS)}")
        _check_activation(classifier_activation)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        self.classifier_bias = classifier_bias
        self.classifier_activation = classifier_activation
        self.norm_eps = norm_eps
        self.norm_bias = norm_bias
        self.initializer_range = initializer_range
        self.num_hidden_layers = num_hidden_layers
        std_out = initializer_range / math.sqrt(2.0 * num_hidden_layers)
        self.dense = Dense(hidden_size, activation=gelu, use_bias=classifier_bias,
                           kernel_initializer=truncated_normal(std_out), name="dense")  # HF head.dense
        self.norm = norm(norm_eps, norm_bias, "norm")  # HF head.norm
        # HF's classifier always has a bias; its init std is hidden_size ** -0.5 ("final_out").
        self.classifier = ClassificationHead(hidden_size, num_classes, classifier_dropout,
                                             initializer_range=hidden_size**-0.5, name="classifier")
        self.dense.build((None, hidden_size))
        self.norm.build((None, hidden_size))

    def call(self, sequence_output, padding_mask, cls_positions=None, training=None):
        if cls_positions is None:
            cls_positions = tf.zeros([tf.shape(sequence_output)[0], 1], tf.int32)
        if self.classifier_pooling == "cls":
            pooled = gather_positions(sequence_output, cls_positions)  # (batch, instances, hidden)
        else:
            pooled = instance_means(sequence_output, padding_mask, cls_positions.shape[1] or tf.shape(cls_positions)[1])
        return self.classifier(self.norm(self.dense(pooled)), training=training)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_classes": self.num_classes,
                "classifier_pooling": self.classifier_pooling, "classifier_dropout": self.classifier_dropout,
                "classifier_bias": self.classifier_bias, "classifier_activation": self.classifier_activation,
                "norm_eps": self.norm_eps, "norm_bias": self.norm_bias, "initializer_range": self.initializer_range,
                "num_hidden_layers": self.num_hidden_layers}


@keras.saving.register_keras_serializable(package="bert_keras")
class ModernBertClassifier(keras.Model):
    """The encoder and a classification head: batch dict -> (batch, instances, num_classes) logits."""

    def __init__(self, encoder: ModernBertEncoder, num_classes: int, classifier_pooling="cls",
                 classifier_dropout=0.0, classifier_bias=False, classifier_activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.classification_head = ModernBertClassificationHead(
            encoder.hidden_size, num_classes, classifier_pooling=classifier_pooling,
            classifier_dropout=classifier_dropout, classifier_bias=classifier_bias,
            classifier_activation=classifier_activation, norm_eps=encoder.norm_eps, norm_bias=encoder.norm_bias,
            initializer_range=encoder.initializer_range, num_hidden_layers=encoder.num_hidden_layers,
            name="classification_head",
        )
        self.built = True

    def call(self, inputs, training=None):
        enc = self.encoder(inputs, training=training)
        return self.classification_head(enc[SEQUENCE_OUTPUT], inputs[PADDING_MASK], inputs.get(CLS_POSITIONS),
                                        training=training)

    def get_config(self):
        head = self.classification_head
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_classes": head.num_classes, "classifier_pooling": head.classifier_pooling,
                "classifier_dropout": head.classifier_dropout, "classifier_bias": head.classifier_bias,
                "classifier_activation": head.classifier_activation}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder, **config)

