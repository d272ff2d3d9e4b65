"""Extractive question answering (SQuAD v1.1 / v2.0).

- config: `pipeline.contract.task_config.QATaskConfig`; the files are SQuAD JSON;
- records: google-research/bert run_squad.py's windows over the context (`doc_stride`,
  `max_query_length`), the character offsets of every context token, the max-context
  flag, the answer's token positions (0 = [CLS] when the window lacks the answer or
  the question has none); examples.jsonl keeps question, context and answers;
- model: `SpanExtractor`, start / end cross-entropy; metrics SQuAD's EM and F1 (percent)
  over whole questions, each stitched back from its windows (`qa_postprocess`);
- export: serving_default(question, context) -> answer, score, start_char, end_char
  (`export_qa.answer_spans`: the same windows and span rule in the graph);
- no baseline.
"""

from __future__ import annotations

import json

import numpy as np

from bert_keras.tasks.base import EvalContext, TaskType, pad
from pipeline.contract import schema
from pipeline.contract.errors import UserError
from pipeline.contract.task_config import QATaskConfig

SOURCE_KEYS = ("id", "question", "context", "answers", "is_impossible")


def squad_rows(path: str):
    """One dict per question of a SQuAD v1.1 / v2.0 file."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            articles = json.load(fh)["data"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a SQuAD JSON file (expected {{'data': [...]}})") from None
    for article in articles:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                yield {
                    "id": qa.get("id"),
                    "title": article.get("title", ""),
                    "question": qa.get("question", ""),
                    "context": para.get("context", ""),
                    "answers": qa.get("answers", []),
                    "is_impossible": bool(qa.get("is_impossible", False)),
                }


def max_context(windows: list[tuple[int, int]], position: int, current: int) -> bool:
    """BERT's rule: a token belongs to the window where it has the most context on its
    shorter side (ties: the longer window)."""
    best, best_score = None, None
    for w, (start, length) in enumerate(windows):
        if not start <= position < start + length:
            continue
        score = min(position - start, start + length - 1 - position) + 0.01 * length
        if best_score is None or score > best_score:
            best, best_score = w, score
    return best == current


def doc_spans(num_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `num_tokens` context tokens (run_squad.py's doc spans)."""
    windows, start = [], 0
    while True:
        length = min(num_tokens - start, room)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, stride)


class QuestionAnswering(TaskType):
    name = "qa"
    config = QATaskConfig
    record_kind = schema.QUESTION_ANSWERING
    input_names = ("question", "context")
    headline = (("f1", "F1"), ("exact_match", "EM"))
    percent = True
    has_labels = False
    export_defaults = {"doc_stride": 64, "max_query_length": 32, "max_answer_length": 30, "allow_no_answer": False}

    # ---- data -----------------------------------------------------------------------------------
    def read_rows(self, path: str, cfg):
        return squad_rows(path)

    def allow_no_answer(self, examples) -> bool:
        return any(ex.get("is_impossible") for ex in examples)

    def convert(self, cfg, rows, tokenizer, special, labels, out) -> None:
        kept = []
        for index, row in rows:
            if not row["question"].strip() or not row["context"].strip():
                out.skipped["empty_question_or_context"] += 1
                continue
            answer = row["answers"][0] if row["answers"] and not row["is_impossible"] else None
            if answer is not None:
                start, text = answer.get("answer_start", -1), answer.get("text", "")
                if not text or row["context"][start : start + len(text)] != text:
                    out.skipped["answer_text_not_at_answer_start"] += 1
                    continue
            elif not row["is_impossible"]:
                out.skipped["no_answer_and_not_impossible"] += 1
                continue
            kept.append((index, row, answer))
        questions = tokenizer.pieces([r["question"] for _, r, _ in kept])
        contexts = tokenizer.pieces_with_offsets([r["context"] for _, r, _ in kept])
        for (index, row, answer), q, (ids, cs, ce) in zip(kept, questions, contexts, strict=True):
            out.example({schema.EXAMPLE_ID: index, **{k: row[k] for k in SOURCE_KEYS}})
            out.counts["examples"] += 1
            self._windows(cfg, index, answer, q[: cfg.max_query_length], ids, cs, ce, special, out)

    def _windows(self, cfg, index, answer, q, ids, cs, ce, special, out) -> None:
        seq = cfg.max_seq_length
        windows = doc_spans(len(ids), seq - len(q) - 3, cfg.doc_stride)  # [CLS] q [SEP] window [SEP]
        tok_start = tok_end = None
        if answer is not None:
            a_s, a_e = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            inside = np.flatnonzero((ce > a_s) & (cs < a_e))
            if inside.size:
                tok_start, tok_end = int(inside[0]), int(inside[-1])
        offset = len(q) + 2
        shape = schema.shapes(self.record_kind, seq)
        for wi, (start, length) in enumerate(windows):
            tokens = np.concatenate(([special.cls], q, [special.sep], ids[start : start + length], [special.sep]))
            segment = np.concatenate((np.zeros(offset), np.ones(length + 1)))
            starts, ends = np.full(seq, -1), np.full(seq, -1)
            starts[offset : offset + length] = cs[start : start + length]
            ends[offset : offset + length] = ce[start : start + length]
            is_max = np.zeros(seq)
            is_max[offset : offset + length] = [max_context(windows, start + k, wi) for k in range(length)]
            s_pos = e_pos = 0
            if tok_start is not None and start <= tok_start and tok_end < start + length:
                s_pos, e_pos = tok_start - start + offset, tok_end - start + offset
            out.counts["windows"] += 1
            out.counts["windows_with_answer"] += int(s_pos > 0)
            values = {
                schema.TOKEN_IDS: pad(tokens, seq),
                schema.SEGMENT_IDS: pad(segment, seq),
                schema.PADDING_MASK: pad(np.ones(len(tokens)), seq),
                schema.START_POSITION: [s_pos],
                schema.END_POSITION: [e_pos],
                schema.EXAMPLE_ID: [index],
                schema.TOKEN_CHAR_STARTS: starts,
                schema.TOKEN_CHAR_ENDS: ends,
                schema.TOKEN_IS_MAX_CONTEXT: is_max,
            }
            out.write(schema.serialize(self.record_kind, values, shape))

    # ---- model and evaluation -------------------------------------------------------------------
    def build_model(self, cfg, encoder, num_labels: int, dropout: float):
        from bert_keras.task_models import SpanExtractor

        return SpanExtractor(encoder, name="qa_model")

    def loss(self, class_weights):
        from bert_keras.task_models import span_loss

        return span_loss

    def evaluate(self, model, dataset, ctx: EvalContext):
        from bert_keras.evaluate import evaluate_qa

        return evaluate_qa(model, dataset, ctx.examples, ctx.allow_no_answer)

    # ---- export ---------------------------------------------------------------------------------
    def export_options(self, cfg, allow_no_answer: bool) -> dict:
        return {"doc_stride": cfg.doc_stride, "max_query_length": cfg.max_query_length,
                "allow_no_answer": allow_no_answer}

    def serving_fn(self, server):
        from bert_keras.export_qa import answer_spans

        def answer(question, context):
            def run(features):
                out = server.model(features, training=False)
                return out["start_logits"], out["end_logits"]

            return answer_spans(server.tokenizer, server.special, run, question, context, server.max_seq_length,
                                **server.options)

        return answer

    def input_example(self, examples: list[dict]) -> dict[str, list[str]]:
        return {"question": [e["question"] for e in examples], "context": [e["context"] for e in examples]}
