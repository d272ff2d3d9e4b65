"""Labelled rows -> fixed-length records, per task type (pure logic, no I/O but `writers`).

- classification / pair: [CLS] A [SEP] (B [SEP]), longest side trimmed first;
- qa: BERT's SQuAD windows over the context (doc_stride, max_query_length), char
  offsets of every context token, the max-context flag, answer token positions
  (0 = [CLS] when the window lacks the answer or the question is impossible);
- long_document: [CLS] chunk [SEP] windows every `doc_stride` tokens, up to `max_chunks`.
"""

from __future__ import annotations

import json

import numpy as np

from beam_jobs.instances import pad
from pipeline.contract import schema
from pipeline.contract.config import TaskConfig
from pipeline.contract.errors import UserError

EXAMPLES_NAME = "examples.jsonl"  # QA: id, question, context, answers per example_id
KINDS = {
    "classification": schema.CLASSIFICATION,
    "pair": schema.CLASSIFICATION,
    "qa": schema.QUESTION_ANSWERING,
    "long_document": schema.LONG_DOCUMENT,
}


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


def char_offsets(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """Byte offsets into UTF-8 `text` -> char offsets (the tokenizer reports bytes)."""
    cum = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])
    return np.searchsorted(cum, byte_offsets, side="left")


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


class ExampleBuilder:
    def __init__(self, task: TaskConfig, tokenizer, ids, labels: list[str]):
        self.task, self.tok, self.ids, self.labels = task, tokenizer, ids, labels
        self.label_ids = {name: i for i, name in enumerate(labels)}
        self.kind = KINDS[task.type]
        self.shape = schema.shapes(self.kind, task.max_seq_length, 0, task.max_chunks)

    def _tokens(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        ragged = self.tok.tokenize(texts)  # (batch, pieces) ragged
        flat, splits = ragged.flat_values.numpy(), ragged.row_splits.numpy()
        return [flat[splits[i] : splits[i + 1]] for i in range(len(texts))]

    def _label(self, row: dict, writer) -> int | None:
        label = str(row.get(self.task.label_field))
        if label not in self.label_ids:
            writer.skipped["label_not_in_label_set"] += 1
            return None
        return self.label_ids[label]

    def write(self, batch: list[tuple[str, int, dict]], writers) -> None:
        if batch:
            {"qa": self._qa}.get(self.task.type, self._text)(batch, writers)

    # ---- classification, pair, long_document -----------------------------------
    def _text(self, batch, writers) -> None:
        t, seq = self.task, self.task.max_seq_length
        rows = []
        for split, index, row in batch:
            w = writers[split]
            texts = [row.get(t.text_field)] + ([row.get(t.text_b_field)] if t.type == "pair" else [])
            if not all(isinstance(x, str) and x.strip() for x in texts):
                w.skipped["empty_or_missing_text"] += 1
                continue
            label = self._label(row, w)
            if label is not None:
                rows.append((w, index, texts, label))
        pieces = iter(self._tokens([x for _, _, texts, _ in rows for x in texts]))
        cls, sep = self.ids.cls, self.ids.sep
        for w, index, texts, label in rows:
            segs = [next(pieces) for _ in texts]
            if t.type == "long_document":
                self._long_document(w, index, segs[0], label)
                continue
            budget = seq - 1 - len(segs)  # [CLS] + one [SEP] per segment
            w.counts["truncated"] += int(sum(len(s) for s in segs) > budget)
            while sum(len(s) for s in segs) > budget:  # trim the longer side, from the end
                # Ties trim the last segment (B), as google-research/bert's _truncate_seq_pair
                # and the exported serving graph do, so training and serving keep the same pieces.
                longest = max(reversed(range(len(segs))), key=lambda i: len(segs[i]))
                segs[longest] = segs[longest][:-1]
            tokens = np.concatenate([[cls]] + [np.append(s, sep) for s in segs])
            segment = np.concatenate([[0]] + [np.full(len(s) + 1, i) for i, s in enumerate(segs)])
            w.counts["examples"] += 1
            w.counts["tokens"] += len(tokens)
            w.write(
                schema.serialize(
                    self.kind,
                    {
                        schema.TOKEN_IDS: pad(tokens, seq),
                        schema.SEGMENT_IDS: pad(segment, seq),
                        schema.PADDING_MASK: pad(np.ones(len(tokens)), seq),
                        schema.LABEL: [label],
                        schema.EXAMPLE_ID: [index],
                    },
                    self.shape,
                )
            )

    def _long_document(self, w, index: int, ids: np.ndarray, label: int) -> None:
        t, seq = self.task, self.task.max_seq_length
        width = seq - 2  # [CLS] chunk [SEP]
        starts = list(range(0, max(1, len(ids) - width + t.doc_stride), t.doc_stride))[: t.max_chunks]
        tokens = np.zeros((t.max_chunks, seq), dtype=np.int64)
        mask = np.zeros((t.max_chunks, seq), dtype=np.int64)
        for c, start in enumerate(starts):
            chunk = np.concatenate(([self.ids.cls], ids[start : start + width], [self.ids.sep]))
            tokens[c, : len(chunk)] = chunk
            mask[c, : len(chunk)] = 1
        w.counts["examples"] += 1
        w.counts["chunks"] += len(starts)
        w.counts["documents_cut_at_max_chunks"] += int(starts[-1] + width < len(ids))
        w.write(
            schema.serialize(
                self.kind,
                {
                    schema.TOKEN_IDS: tokens,
                    schema.SEGMENT_IDS: np.zeros_like(tokens),
                    schema.PADDING_MASK: mask,
                    schema.CHUNK_MASK: pad(np.ones(len(starts)), t.max_chunks),
                    schema.LABEL: [label],
                    schema.EXAMPLE_ID: [index],
                },
                self.shape,
            )
        )

    # ---- question answering ---------------------------------------------------
    def _qa(self, batch, writers) -> None:
        t = self.task
        rows = []
        for split, index, row in batch:
            w = writers[split]
            if not row["question"].strip() or not row["context"].strip():
                w.skipped["empty_question_or_context"] += 1
                continue
            answer = row["answers"][0] if row["answers"] and not row["is_impossible"] else None
            if answer is not None:
                start = answer.get("answer_start", -1)
                text = answer.get("text", "")
                if not text or row["context"][start : start + len(text)] != text:
                    w.skipped["answer_text_not_at_answer_start"] += 1
                    continue
            elif not row["is_impossible"]:
                w.skipped["no_answer_and_not_impossible"] += 1
                continue
            rows.append((w, index, row, answer))
        questions = self._tokens([r["question"] for _, _, r, _ in rows])
        contexts = [r["context"] for _, _, r, _ in rows]
        ctx_ids, ctx_starts, ctx_ends = [], [], []
        if contexts:
            ragged, starts, ends = self.tok.tokenize_with_offsets(contexts)  # byte offsets
            for i, text in enumerate(contexts):
                ctx_ids.append(ragged[i].numpy())
                ctx_starts.append(char_offsets(text, starts[i].numpy()))
                ctx_ends.append(char_offsets(text, ends[i].numpy()))
        for (w, index, row, answer), q, ids, cs, ce in zip(rows, questions, ctx_ids, ctx_starts, ctx_ends, strict=True):
            self._qa_windows(w, index, row, answer, q[: t.max_query_length], ids, cs, ce)

    def _qa_windows(self, w, index, row, answer, q, ids, cs, ce) -> None:
        t, seq = self.task, self.task.max_seq_length
        room = seq - len(q) - 3  # [CLS] q [SEP] window [SEP]
        windows, start = [], 0
        while True:
            length = min(len(ids) - start, room)
            windows.append((start, length))
            if start + length >= len(ids):
                break
            start += min(length, t.doc_stride)
        tok_start = tok_end = None
        if answer is not None:
            a_s, a_e = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            inside = np.flatnonzero((ce > a_s) & (cs < a_e))
            if inside.size:
                tok_start, tok_end = int(inside[0]), int(inside[-1])
        offset = len(q) + 2
        w.examples.write(json.dumps({schema.EXAMPLE_ID: index, **{k: row[k] for k in ("id", "question", "context", "answers", "is_impossible")}}) + "\n")
        w.counts["examples"] += 1
        for wi, (start, length) in enumerate(windows):
            tokens = np.concatenate(([self.ids.cls], q, [self.ids.sep], ids[start : start + length], [self.ids.sep]))
            segment = np.concatenate((np.zeros(offset), np.ones(length + 1)))
            starts = np.full(seq, -1)
            ends = np.full(seq, -1)
            starts[offset : offset + length] = cs[start : start + length]
            ends[offset : offset + length] = ce[start : start + length]
            is_max = np.zeros(seq)
            is_max[offset : offset + length] = [max_context(windows, start + k, wi) for k in range(length)]
            s_pos = e_pos = 0
            if tok_start is not None and start <= tok_start and tok_end < start + length:
                s_pos, e_pos = tok_start - start + offset, tok_end - start + offset
            w.counts["windows"] += 1
            w.counts["windows_with_answer"] += int(s_pos > 0)
            w.write(
                schema.serialize(
                    self.kind,
                    {
                        schema.TOKEN_IDS: pad(tokens, seq),
                        schema.SEGMENT_IDS: pad(segment, seq),
                        schema.PADDING_MASK: pad(np.ones(len(tokens)), seq),
                        schema.START_POSITION: [s_pos],
                        schema.END_POSITION: [e_pos],
                        schema.EXAMPLE_ID: [index],
                        schema.TOKEN_CHAR_STARTS: starts,
                        schema.TOKEN_CHAR_ENDS: ends,
                        schema.TOKEN_IS_MAX_CONTEXT: is_max,
                    },
                    self.shape,
                )
            )
