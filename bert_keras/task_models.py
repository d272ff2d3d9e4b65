"""The Keras building blocks of the fine-tuning tasks: our `BertEncoder` + a head, and their losses.

Which task type uses which block is the task type's business (`bert_keras/tasks/<type>.py`):

| model                      | outputs                                  | used by                      |
|----------------------------|------------------------------------------|------------------------------|
| `SequenceClassifier`       | logits (batch, instances, classes)       | classification, pair         |
| `SpanExtractor`            | start_logits, end_logits (batch, seq)    | qa                           |
| `LongDocumentClassifier`   | logits (batch, classes)                  | long_document                |

A pair is just a classification record whose text_b tokens carry segment 1,
so one model serves both. Classification rows may be packed (several instances
per row, `CLS_POSITIONS` / `CLS_WEIGHTS`); unpacked rows are the one-instance case.

Losses follow the trainer's `loss_fn(batch, outputs) -> (loss, metrics)` form and
are computed in float32 (every head returns float32 logits).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bert_keras.encoder import POOLED_OUTPUT, SEQUENCE_OUTPUT
from bert_keras.heads import ChunkPooling, ClassificationHead, SpanHead, encode_chunks
from pipeline.contract.schema import CHUNK_MASK, CLS_WEIGHTS, END_POSITION, LABEL, PADDING_MASK, START_POSITION

LOGITS, START_LOGITS, END_LOGITS = "logits", "start_logits", "end_logits"


class SequenceClassifier(keras.Model):
    """Encoder + `ClassificationHead` on each instance's pooled [CLS] vector."""

    def __init__(self, encoder, num_classes: int, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.head = ClassificationHead(encoder.hidden_size, num_classes, dropout, encoder.initializer_range,
                                       name="classifier")

    def call(self, inputs, training=None):
        pooled = self.encoder(inputs, training=training)[POOLED_OUTPUT]  # (batch, instances, hidden)
        return {LOGITS: self.head(pooled, training=training)}


class SpanExtractor(keras.Model):
    """Encoder + `SpanHead`: start / end logits per token for extractive QA."""

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        # Spans come from the sequence output; the [CLS] pooler gets no gradient
        # (None would break the update), so freeze it, as HF's QA model drops it.
        if getattr(encoder, "pooler", None) is not None:  # ModernBERT has none
            encoder.pooler.trainable = False
        self.head = SpanHead(encoder.hidden_size, encoder.initializer_range, name="span")

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)[SEQUENCE_OUTPUT]  # (batch, seq, hidden)
        start, end = self.head(sequence, inputs[PADDING_MASK])
        return {START_LOGITS: start, END_LOGITS: end}


class LongDocumentClassifier(keras.Model):
    """Each chunk through the encoder, chunk [CLS] vectors pooled (mean/max/attention), then classified."""

    def __init__(self, encoder, num_classes: int, pooling: str = "attention", dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.pooling = ChunkPooling(encoder.hidden_size, pooling, encoder.initializer_range, name="chunk_pooling")
        self.head = ClassificationHead(encoder.hidden_size, num_classes, dropout, encoder.initializer_range,
                                       name="classifier")

    def call(self, inputs, training=None):
        chunks = encode_chunks(self.encoder, inputs, training=training)  # (batch, chunks, hidden)
        document = self.pooling(chunks, inputs[CHUNK_MASK])  # (batch, hidden)
        return {LOGITS: self.head(document, training=training)}


# ---- class weights ---------------------------------------------------------------


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's 'balanced' rule, n_samples / (n_classes * count_c); classes
    absent from training get weight 0 (nothing to learn from them)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


# ---- losses ----------------------------------------------------------------------


def classification_loss(class_weights: np.ndarray | None = None):
    """Mean cross-entropy over real instances, optionally weighted per class.

    Works for (batch, instances, classes) logits with (batch, instances) labels
    and CLS_WEIGHTS (packed or not), and for (batch, classes) long-document
    logits with (batch, 1) labels. Normalized by the number of real instances,
    as Keras does with sample weights, so class weights change the balance of
    the gradient but not its overall scale.
    """
    table = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def loss_fn(batch, outputs):
        logits = outputs[LOGITS]
        labels = batch[LABEL]
        if logits.shape.rank == 2:  # long documents: one instance per row
            logits = logits[:, None, :]  # (batch, 1, classes)
        real = tf.cast(batch[CLS_WEIGHTS], tf.float32) if CLS_WEIGHTS in batch else tf.ones(tf.shape(labels))
        per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # (batch, instances)
        weight = real if table is None else real * tf.gather(table, labels)
        count = tf.maximum(tf.reduce_sum(real), 1.0)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32)
        return tf.reduce_sum(per * weight) / count, {"accuracy": tf.reduce_sum(correct * real) / count}

    return loss_fn


def span_loss(batch, outputs):
    """Mean of start and end cross-entropy over token positions (position 0 = no answer)."""
    start = batch[START_POSITION][:, 0]
    end = batch[END_POSITION][:, 0]
    start_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=start, logits=outputs[START_LOGITS])
    end_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=end, logits=outputs[END_LOGITS])
    hit_start = tf.equal(tf.argmax(outputs[START_LOGITS], -1, output_type=start.dtype), start)
    hit_end = tf.equal(tf.argmax(outputs[END_LOGITS], -1, output_type=end.dtype), end)
    exact = tf.reduce_mean(tf.cast(hit_start & hit_end, tf.float32))
    return tf.reduce_mean(start_ce + end_ce) / 2.0, {"span_accuracy": exact}

