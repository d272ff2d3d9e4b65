"""Classification: one text, one label.

- config: `pipeline.contract.task_config.ClassificationTaskConfig`;
- records: [CLS] text [SEP], trimmed from the end (`CLASSIFICATION` records);
- model: `SequenceClassifier` on the pooled [CLS] vector, softmax cross-entropy
  (optionally class-weighted); metrics accuracy, macro F1, loss;
- reports: confusion matrix, per-class table, learning curves, predictions sample;
- export: serving_default(text) -> label, label_id, probabilities;
- baseline: TF-IDF + logistic regression on the text.

`pair` and `long_document` build on this class: same labels, loss and reports.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import numpy as np

from bert_keras.tasks.base import EvalContext, PieceTokenizer, RecordSink, TaskType, pad
from pipeline.contract import schema
from pipeline.contract.errors import UserError
from pipeline.contract.task_config import ClassificationTaskConfig


class Classification(TaskType):
    name = "classification"
    config = ClassificationTaskConfig
    record_kind = schema.CLASSIFICATION
    input_names = ("text",)
    example_fields = ("text",)  # what an example row keeps of its source row (the training file's spelling)

    # ---- data -----------------------------------------------------------------------------------
    def source_fields(self, cfg) -> list[str]:
        return [cfg.text_field]

    def required_fields(self, cfg) -> list[str]:
        return self.source_fields(cfg) + [cfg.label_field]

    def label_names(self, cfg, rows: Iterable[dict]) -> list[str]:
        """Labels in id order: from the config, else the sorted distinct training labels."""
        seen = Counter(str(r.get(cfg.label_field)) for r in rows if cfg.label_field in r)
        labels = list(cfg.labels) if cfg.labels else sorted(seen)
        present = [lab for lab in labels if seen.get(lab)]
        if len(present) < 2:
            raise UserError(
                f"{cfg.train_file}: column {cfg.label_field!r} holds only {present or 'no'} of the labels {labels}: "
                "a classifier needs at least two classes in its training data"
            )
        return labels

    def convert(self, cfg, rows, tokenizer: PieceTokenizer, special, labels, out: RecordSink) -> None:
        label_ids = {name: i for i, name in enumerate(labels)}
        kept = []
        for index, row in rows:
            texts = [row.get(f) for f in self.source_fields(cfg)]
            if not all(isinstance(x, str) and x.strip() for x in texts):
                out.skipped["empty_or_missing_text"] += 1
                continue
            label = label_ids.get(str(row.get(cfg.label_field)))
            if label is None:
                out.skipped["label_not_in_label_set"] += 1
                continue
            kept.append((index, texts, label))
        pieces = iter(tokenizer.pieces([x for _, texts, _ in kept for x in texts]))
        for index, texts, label in kept:
            self.write_record(cfg, index, [next(pieces) for _ in texts], label, special, out)
            out.example({schema.EXAMPLE_ID: index, **dict(zip(self.example_fields, texts, strict=True)),
                         "label": labels[label]})

    def write_record(self, cfg, index: int, segs: list[np.ndarray], label: int, special, out: RecordSink) -> None:
        """[CLS] A [SEP] (B [SEP]), the longer side trimmed from its end first."""
        seq = cfg.max_seq_length
        budget = seq - 1 - len(segs)  # [CLS] + one [SEP] per segment
        out.counts["truncated"] += int(sum(len(s) for s in segs) > budget)
        while sum(len(s) for s in segs) > budget:
            # Ties trim the last segment (B), as google-research/bert's _truncate_seq_pair
            # and the exported serving graph do, so training and serving keep the same pieces.
            longest = max(reversed(range(len(segs))), key=lambda i: len(segs[i]))
            segs[longest] = segs[longest][:-1]
        tokens = np.concatenate([[special.cls]] + [np.append(s, special.sep) for s in segs])
        segment = np.concatenate([[0]] + [np.full(len(s) + 1, i) for i, s in enumerate(segs)])
        out.counts["examples"] += 1
        out.counts["tokens"] += len(tokens)
        values = {
            schema.TOKEN_IDS: pad(tokens, seq),
            schema.SEGMENT_IDS: pad(segment, seq),
            schema.PADDING_MASK: pad(np.ones(len(tokens)), seq),
            schema.LABEL: [label],
            schema.EXAMPLE_ID: [index],
        }
        out.write(schema.serialize(self.record_kind, values, schema.shapes(self.record_kind, seq)))

    def baseline_input(self, example: dict) -> str:
        return example["text"]

    # ---- model and evaluation -------------------------------------------------------------------
    def build_model(self, cfg, encoder, num_labels: int, dropout: float):
        from bert_keras.task_models import SequenceClassifier

        return SequenceClassifier(encoder, num_labels, dropout, name=f"{self.name}_model")

    def loss(self, class_weights):
        from bert_keras.task_models import classification_loss

        return classification_loss(class_weights)

    def evaluate(self, model, dataset, ctx: EvalContext):
        from bert_keras.evaluate import evaluate_classification

        return evaluate_classification(model, dataset, ctx.labels, ctx.vocab, ctx.examples)

    def _reports(self, result, labels, directory) -> dict[str, str]:
        from bert_keras import reports

        paths = {"confusion_matrix": reports.save_confusion_matrix(
            result.details["confusion_matrix"], labels, os.path.join(directory, "confusion_matrix.png"))}
        paths["per_class_json"], paths["per_class_csv"] = reports.write_per_class(result.details["per_class"], directory)
        return paths

    # ---- export ---------------------------------------------------------------------------------
    def serving_fn(self, server):
        from bert_keras.export_inputs import length_bucketed

        def classify(text):
            return server.labelled(length_bucketed(server.logits, server.features(text)))

        return classify
