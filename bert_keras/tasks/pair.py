"""Pair classification: two texts (premise / hypothesis, query / document), one label.

Everything is classification's (`classification.py`) except that:
- records: [CLS] A [SEP] B [SEP], B's tokens in segment 1, the longer side trimmed first;
- export: serving_default(text_a, text_b), also as the `pair` signature;
- baseline: one TF-IDF vocabulary over both sides; features A, B and A*B (the words they share).
"""

from __future__ import annotations

from bert_keras.tasks.classification import Classification
from pipeline.contract.task_config import PairTaskConfig


class Pair(Classification):
    name = "pair"
    config = PairTaskConfig
    input_names = ("text_a", "text_b")
    example_fields = ("text", "text_b")
    signature_aliases = ("pair",)

    def source_fields(self, cfg) -> list[str]:
        return [cfg.text_field, cfg.text_b_field]

    def baseline_input(self, example: dict) -> tuple[str, str]:
        return example["text"], example["text_b"]

    def serving_fn(self, server):
        from bert_keras.export_inputs import length_bucketed

        def classify_pair(text_a, text_b):
            return server.labelled(length_bucketed(server.logits, server.features(text_a, text_b)))

        return classify_pair

    def input_example(self, examples: list[dict]) -> dict[str, list[str]]:
        return {"text_a": [e["text"] for e in examples], "text_b": [e["text_b"] for e in examples]}
