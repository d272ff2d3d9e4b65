"""Long-document classification: a document longer than one window, one label.

Labels, loss, metrics, reports and baseline are classification's (`classification.py`); then:
- records: [CLS] chunk [SEP] windows every `doc_stride` pieces, up to `max_chunks`
  (`LONG_DOCUMENT` records, (chunks, seq) per feature plus CHUNK_MASK);
- model: `LongDocumentClassifier`: each chunk through the encoder, the chunks'
  [CLS] vectors pooled (`pooling`: mean, max or attention), then classified;
- export: serving_default(text) windows the text in the graph the same way.
"""

from __future__ import annotations

import numpy as np

from bert_keras.tasks.base import pad
from bert_keras.tasks.classification import Classification
from pipeline.contract import schema
from pipeline.contract.task_config import LongDocumentTaskConfig


class LongDocument(Classification):
    name = "long_document"
    config = LongDocumentTaskConfig
    record_kind = schema.LONG_DOCUMENT
    export_defaults = {"doc_stride": 64, "max_chunks": 8}

    def max_chunks(self, cfg) -> int:
        return cfg.max_chunks

    def write_record(self, cfg, index: int, segs: list[np.ndarray], label: int, special, out) -> None:
        (ids,) = segs
        seq = cfg.max_seq_length
        width = seq - 2  # [CLS] chunk [SEP]
        starts = list(range(0, max(1, len(ids) - width + cfg.doc_stride), cfg.doc_stride))[: cfg.max_chunks]
        tokens = np.zeros((cfg.max_chunks, seq), dtype=np.int64)  # (chunks, seq)
        mask = np.zeros((cfg.max_chunks, seq), dtype=np.int64)
        for c, start in enumerate(starts):
            chunk = np.concatenate(([special.cls], ids[start : start + width], [special.sep]))
            tokens[c, : len(chunk)] = chunk
            mask[c, : len(chunk)] = 1
        out.counts["examples"] += 1
        out.counts["chunks"] += len(starts)
        out.counts["documents_cut_at_max_chunks"] += int(starts[-1] + width < len(ids))
        values = {
            schema.TOKEN_IDS: tokens,
            schema.SEGMENT_IDS: np.zeros_like(tokens),
            schema.PADDING_MASK: mask,
            schema.CHUNK_MASK: pad(np.ones(len(starts)), cfg.max_chunks),
            schema.LABEL: [label],
            schema.EXAMPLE_ID: [index],
        }
        out.write(schema.serialize(self.record_kind, values, schema.shapes(self.record_kind, seq, 0, cfg.max_chunks)))

    def build_model(self, cfg, encoder, num_labels: int, dropout: float):
        from bert_keras.task_models import LongDocumentClassifier

        return LongDocumentClassifier(encoder, num_labels, cfg.pooling, dropout, name="long_document_model")

    def export_options(self, cfg, allow_no_answer: bool) -> dict:
        return {"doc_stride": cfg.doc_stride, "max_chunks": cfg.max_chunks}

    def serving_fn(self, server):
        import tensorflow as tf

        from bert_keras.export_inputs import pack_segments, sliding_windows

        def classify_long(text):
            tokens = server.pieces(text)
            stride, max_chunks = server.options["doc_stride"], server.options["max_chunks"]
            pieces, _, _, counts = sliding_windows(tokens, server.max_seq_length - 2, stride, max_chunks)
            flat = pack_segments([pieces], server.special, server.max_seq_length)  # (num_windows, seq)
            # (num_windows, seq) -> (batch, chunks, seq): the windows of a row are consecutive.
            batch = {k: tf.RaggedTensor.from_row_lengths(v, counts).to_tensor() for k, v in flat.items()}
            batch[schema.CHUNK_MASK] = tf.sequence_mask(counts, tf.shape(batch[schema.TOKEN_IDS])[1], dtype=tf.int32)
            return server.labelled(server.classification_logits(server.model(batch, training=False)))

        return classify_long
