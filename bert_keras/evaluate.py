"""Evaluate a task model on its eval records: predictions, metrics, a sample.

The trainer's `evaluate` averages the loss function's batch metrics; macro F1,
a confusion matrix or SQuAD EM/F1 need every prediction, so evaluation here runs
the model over the eval split, keeps its outputs next to the features needed to
score them (labels, example ids, character offsets) and scores them in numpy.

`evaluate(...)` returns an `EvalResult`: flat numeric `metrics` (for logging and
model selection), `details` (per-class table, confusion matrix) and `rows`
(one dict per prediction, for the predictions sample).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from bert_keras import metrics as M
from bert_keras.qa_postprocess import best_answers, windows_from_batches
from bert_keras.task_models import END_LOGITS, LOGITS, START_LOGITS
from pipeline.contract import schema


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    details: dict = dataclasses.field(default_factory=dict)
    rows: list[dict] = dataclasses.field(default_factory=list)


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its traced inference step


def collect(model, dataset, keep: Sequence[str]) -> dict[str, np.ndarray]:
    """Model outputs + the `keep` features over the whole dataset, concatenated on axis 0."""
    if model not in _FORWARD:  # one trace per model, reused by every evaluation (the last batch may be smaller)
        _FORWARD[model] = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    forward = _FORWARD[model]
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset:
        out = {k: v.numpy() for k, v in forward(batch).items()}
        out.update({k: batch[k].numpy() for k in keep if k in batch})
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def detokenize(ids: np.ndarray, vocab: Sequence[str]) -> str:
    """Wordpiece ids -> readable text for the predictions sample (## pieces joined)."""
    out: list[str] = []
    for i in ids:
        tok = vocab[int(i)] if 0 <= int(i) < len(vocab) else "[UNK]"
        if tok in ("[PAD]", "[CLS]"):
            continue
        if tok.startswith("##") and out:
            out[-1] += tok[2:]
        else:
            out.append(tok)
    return " ".join(out).replace(" [SEP]", " |").removesuffix(" |")


def evaluate_classification(model, dataset, labels: Sequence[str], vocab: Sequence[str],
                            examples: Mapping[int, dict] | None = None) -> EvalResult:
    """Classification, pairs and long documents: one prediction per real instance.

    `examples` (example_id -> source row) gives the predictions their original text;
    without it, the text is the wordpieces, detokenized."""
    got = collect(model, dataset, (schema.LABEL, schema.EXAMPLE_ID, schema.TOKEN_IDS, schema.CLS_WEIGHTS))
    logits = got[LOGITS]
    if logits.ndim == 2:  # long documents: (rows, classes) -> (rows, 1, classes)
        logits = logits[:, None, :]
    real = got.get(schema.CLS_WEIGHTS, np.ones(got[schema.LABEL].shape)) > 0  # (rows, instances)
    probs = _softmax(logits.astype(np.float64))[real]  # (examples, classes)
    gold = got[schema.LABEL][real]
    pred = probs.argmax(-1)
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(gold)), gold], 1e-12)))) if len(gold) else 0.0
    scores = M.classification_metrics(gold, pred, labels)
    metrics = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "loss": loss,
               "examples": float(scores["examples"])}
    token_ids = got[schema.TOKEN_IDS]
    if token_ids.ndim == 3:  # long documents: show the first chunk
        token_ids = token_ids[:, 0]
    example_ids = got[schema.EXAMPLE_ID][real] if schema.EXAMPLE_ID in got else np.full(len(gold), -1)
    rows_of_real = np.nonzero(real)[0]  # the record each instance came from (unpacked eval: one each)
    examples = examples or {}
    rows = []
    for i in range(len(gold)):
        source = examples.get(int(example_ids[i]))
        text = {"text": detokenize(token_ids[rows_of_real[i]], vocab)} if source is None else {
            k: v for k, v in source.items() if k not in (schema.EXAMPLE_ID, "label")}
        rows.append({schema.EXAMPLE_ID: int(example_ids[i]), **text, schema.LABEL: labels[int(gold[i])],
                     "predicted": labels[int(pred[i])], "confidence": round(float(probs[i, pred[i]]), 4),
                     "correct": bool(gold[i] == pred[i])})
    details = {"per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"], "labels": list(labels)}
    return EvalResult(metrics, details, rows)


# ---- extractive QA --------------------------------------------------------------


def _answer_texts(answers) -> list[str]:
    return [a["text"] if isinstance(a, Mapping) else str(a) for a in answers or []]


def evaluate_qa(model, dataset, examples: Mapping[int, dict], allow_null: bool) -> EvalResult:
    got = collect(model, dataset, (schema.EXAMPLE_ID, schema.TOKEN_CHAR_STARTS, schema.TOKEN_CHAR_ENDS,
                                   schema.TOKEN_IS_MAX_CONTEXT, schema.START_POSITION, schema.END_POSITION))
    start, end = got[START_LOGITS].astype(np.float64), got[END_LOGITS].astype(np.float64)
    # Window-level loss (same as training's), for the learning curves.
    def ce(logits, target):
        z = logits - logits.max(-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -log_p[np.arange(len(target)), target]

    loss = float(np.mean((ce(start, got[schema.START_POSITION][:, 0]) + ce(end, got[schema.END_POSITION][:, 0])) / 2))
    examples = {eid: {**ex, "answers": _answer_texts(ex.get("answers"))} for eid, ex in examples.items()}
    windows = windows_from_batches([{**got, START_LOGITS: start, END_LOGITS: end}])
    contexts = {eid: ex["context"] for eid, ex in examples.items()}
    answers = best_answers(windows, contexts, allow_null=allow_null)
    predictions = {examples[eid]["id"]: a.text for eid, a in answers.items()}
    golds = {ex["id"]: ex["answers"] for ex in examples.values()}
    scores = M.squad_metrics(predictions, golds)
    metrics = {**{k: float(v) for k, v in scores.items() if k != "total"}, "loss": loss, "examples": float(len(golds))}
    rows = []
    for eid, ex in examples.items():
        a = answers.get(eid)
        text = a.text if a else ""
        em, f1 = M.score_answer(text, ex["answers"])
        rows.append({"id": ex["id"], "question": ex.get("question", ""), "answers": ex["answers"], "predicted": text,
                     "char_start": a.char_start if a else -1, "score": round(a.score, 4) if a else None,
                     "exact_match": em, "f1": round(f1, 4), "correct": bool(em),
                     "confidence": a.score if a else 0.0})
    details = {"predictions": predictions, "contexts": {ex["id"]: ex["context"] for ex in examples.values()}}
    return EvalResult(metrics, details, rows)
