"""From per-window start/end logits to one answer span per question, in characters.

A context longer than one window is split into overlapping windows
(`doc_stride`), so a token can sit in several windows. As in google-research/bert
(run_squad.py `write_predictions`), a span may only start at a token whose
window gives it the most context on both sides (TOKEN_IS_MAX_CONTEXT, written by
the data job); across all windows of a question the span with the highest
start + end logit wins. It is mapped back to the original context through the
per-token character offsets (TOKEN_CHAR_STARTS / TOKEN_CHAR_ENDS, -1 outside
the context), so the answer keeps the context's own casing and spacing.

SQuAD v2.0 (unanswerable questions): the no-answer score is the [CLS] position's
start + end logit, the lowest over the question's windows; the empty answer is
predicted when it beats the best span by more than `null_threshold`.

Hand-written: neither keras-hub nor tf-text ships this post-processing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np


@dataclasses.dataclass
class Window:
    """One window's model outputs and offsets; arrays are (seq,)."""

    example_id: int
    start_logits: np.ndarray
    end_logits: np.ndarray
    char_starts: np.ndarray
    char_ends: np.ndarray
    is_max_context: np.ndarray


@dataclasses.dataclass
class Answer:
    text: str
    score: float  # start + end logit of the chosen span (the null score if empty)
    char_start: int  # -1 for the empty (no-answer) prediction
    char_end: int  # exclusive
    null_score: float


def _top(logits: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-logits, kind="stable")[:n]


def best_answers(windows: Iterable[Window], contexts: Mapping[int, str], *, n_best: int = 20,
                 max_answer_length: int = 30, allow_null: bool = False,
                 null_threshold: float = 0.0) -> dict[int, Answer]:
    """example_id -> best `Answer` over all of that example's windows.

    `contexts` maps example_id to its context string. With `allow_null` (v2.0)
    an example whose null score beats its best span by more than
    `null_threshold` gets the empty answer; without it the best span always wins.
    """
    best: dict[int, tuple[float, int, int]] = {}  # id -> (score, char_start, char_end)
    null: dict[int, float] = {}
    for w in windows:
        eid = int(w.example_id)
        null_here = float(w.start_logits[0] + w.end_logits[0])  # [CLS] at position 0
        null[eid] = min(null.get(eid, null_here), null_here)
        for s in _top(w.start_logits, n_best):
            if w.char_starts[s] < 0 or not w.is_max_context[s]:
                continue  # not context, or another window sees this token with more context
            for e in _top(w.end_logits, n_best):
                if w.char_ends[e] < 0 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(w.start_logits[s] + w.end_logits[e])
                if eid not in best or score > best[eid][0]:
                    best[eid] = (score, int(w.char_starts[s]), int(w.char_ends[e]))
    out = {}
    for eid, null_score in null.items():
        span = best.get(eid)
        if span is None or (allow_null and null_score - span[0] > null_threshold):
            out[eid] = Answer("", null_score, -1, -1, null_score)
            continue
        score, start, end = span
        out[eid] = Answer(contexts[eid][start:end], score, start, end, null_score)
    return out


def windows_from_batches(batches: Iterable[Mapping[str, np.ndarray]]) -> list[Window]:
    """Unbatch model outputs + features (numpy dicts with a leading batch dim) into Windows.

    Keys: "start_logits", "end_logits" and the schema's EXAMPLE_ID,
    TOKEN_CHAR_STARTS, TOKEN_CHAR_ENDS, TOKEN_IS_MAX_CONTEXT.
    """
    from pipeline.contract.schema import EXAMPLE_ID, TOKEN_CHAR_ENDS, TOKEN_CHAR_STARTS, TOKEN_IS_MAX_CONTEXT

    out = []
    for b in batches:
        ids = np.asarray(b[EXAMPLE_ID]).reshape(-1)
        for i, eid in enumerate(ids):
            out.append(Window(int(eid), np.asarray(b["start_logits"][i]), np.asarray(b["end_logits"][i]),
                              np.asarray(b[TOKEN_CHAR_STARTS][i]), np.asarray(b[TOKEN_CHAR_ENDS][i]),
                              np.asarray(b[TOKEN_IS_MAX_CONTEXT][i])))
    return out
