"""BERT pretraining: masked LM + next sentence prediction (or MLM only), and its loss.

Contract (used by the trainer):
    model = BertPretrainingModel(encoder, nsp=True)
    outputs = model(batch)
        # {"mlm_logits": (batch, pred, vocab) float32, "nsp_logits": (batch, instances, 2) float32}
    outputs = model(batch, training=True)  # with the encoder's fused kernels on
        # {"mlm_logits_unbiased": (batch, pred, vocab) compute dtype, "mlm_output_bias": (vocab,) float32,
        #  "nsp_logits": ...}: training leaves the bias to the loss's kernel (see MaskedLMHead.unbiased_logits)
    loss, metrics = pretraining_loss(batch, outputs)  # either form
        # metrics: mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy (float32 scalars)

MLM only (`nsp=False`, for data without NSP pairs: Liu et al. 2019, MosaicBERT, Cramming):
no NSP head exists, the outputs hold no "nsp_logits", the loss is the MLM loss, and the
pooler (which only NSP trains during pretraining) is frozen, so weight decay leaves it as initialized.

`batch` is the dict named by pipeline.contract.schema: TOKEN_IDS, SEGMENT_IDS,
PADDING_MASK, MASK_POSITIONS, MASK_IDS, MASK_WEIGHTS, NSP_LABEL and, for packed
rows, CLS_POSITIONS / CLS_WEIGHTS (default: one instance whose [CLS] is token 0).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras.compat import float32_value
from bert_keras.encoder import POOLED_OUTPUT, SEQUENCE_OUTPUT, BertEncoder
from bert_keras.fused import tied_embedding
from bert_keras.heads import MaskedLMHead, NextSentenceHead
from bert_keras.losses import weighted_sparse_xent
from pipeline.contract.schema import CLS_WEIGHTS, MASK_IDS, MASK_POSITIONS, MASK_WEIGHTS, NSP_LABEL, TOKEN_IDS

MLM_LOGITS = "mlm_logits"
MLM_UNBIASED = "mlm_logits_unbiased"
MLM_BIAS = "mlm_output_bias"
NSP_LOGITS = "nsp_logits"


@keras.saving.register_keras_serializable(package="bert_keras")
class BertPretrainingModel(keras.Model):
    def __init__(self, encoder: BertEncoder, nsp: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.nsp = nsp
        self.mlm_head = MaskedLMHead(
            encoder.token_embedding,
            initializer_range=encoder.initializer_range,
            layer_norm_epsilon=encoder.layer_norm_epsilon,
            name="mlm_head",
        )
        self.nsp_head = NextSentenceHead(encoder.hidden_size, encoder.initializer_range, name="nsp_head") if nsp else None
        if not nsp:
            encoder.pooler.trainable = False  # no loss reaches it; fine-tuning trains it from here
        self.built = True

    def call(self, inputs, training=None):
        if not (self.encoder.fused_kernels and isinstance(training, bool) and training):
            enc = self.encoder(inputs, training=training)
            outputs = {MLM_LOGITS: self.mlm_head(enc[SEQUENCE_OUTPUT], inputs[MASK_POSITIONS])}
        else:
            # Fused training: one read of the word embeddings serves the lookup and the tied projection,
            # so their gradients meet in one kernel, and the MLM bias is left to the loss's kernel.
            vectors, table = tied_embedding(self.encoder.token_embedding.embeddings, inputs[TOKEN_IDS],
                                            self.encoder.compute_dtype)
            enc = self.encoder(inputs, training=True, token_vectors=vectors)
            outputs = {MLM_UNBIASED: self.mlm_head.unbiased_logits(enc[SEQUENCE_OUTPUT], inputs[MASK_POSITIONS], table),
                       MLM_BIAS: float32_value(self.mlm_head.output_bias)}
        if self.nsp_head is not None:
            outputs[NSP_LOGITS] = self.nsp_head(enc[POOLED_OUTPUT])
        return outputs

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder), "nsp": self.nsp}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder, **config)


def pretraining_loss(batch, outputs):
    """(loss, metrics): MLM weighted by MASK_WEIGHTS plus, when the outputs hold NSP logits,
    NSP weighted by CLS_WEIGHTS (MLM only otherwise: NSP_LABEL is then not read).

    Both terms are weighted means over the batch passed in (per replica under a
    strategy); the trainer scales for the global batch.
    """
    mlm_loss, mlm_acc = masked_lm_loss(batch, outputs)
    if NSP_LOGITS not in outputs:  # MLM only (pretrain.nsp false, ModernBERT)
        return mlm_only_loss(batch, outputs)
    nsp_logits = outputs[NSP_LOGITS]  # (batch, instances, 2)
    nsp_labels = tf.reshape(batch[NSP_LABEL], tf.shape(nsp_logits)[:2])  # (batch, 1) records -> (batch, instances)
    nsp_weights = batch.get(CLS_WEIGHTS)
    if nsp_weights is None:
        nsp_weights = tf.ones(tf.shape(nsp_labels), tf.float32)
    nsp_loss, nsp_acc = weighted_sparse_xent(nsp_labels, nsp_logits, nsp_weights)
    metrics = {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_acc, "nsp_loss": nsp_loss, "nsp_accuracy": nsp_acc}
    return mlm_loss + nsp_loss, metrics


def masked_lm_loss(batch, outputs):
    """(loss, accuracy) of the MLM predictions, weighted by MASK_WEIGHTS, from either output form."""
    # Training outputs carry the logits before the bias, which the cross-entropy's kernel adds.
    mlm_logits = outputs[MLM_LOGITS] if MLM_LOGITS in outputs else outputs[MLM_UNBIASED]
    return weighted_sparse_xent(batch[MASK_IDS], mlm_logits, batch[MASK_WEIGHTS], bias=outputs.get(MLM_BIAS))


def mlm_only_loss(batch, outputs):
    """(loss, metrics) for models trained on MLM alone (ModernBERT): metrics mlm_loss, mlm_accuracy."""
    loss, accuracy = masked_lm_loss(batch, outputs)
    return loss, {"mlm_loss": loss, "mlm_accuracy": accuracy}
