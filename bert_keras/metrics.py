"""Evaluation metrics of the fine-tuning tasks.

Classification: accuracy, macro F1, per-class precision / recall / F1 and the
confusion matrix, from scikit-learn (already installed with MLflow) so the
definitions are the standard ones (a class never predicted has precision 0,
not NaN: `zero_division=0`).

Extractive QA: exact match and F1 exactly as the official SQuAD v1.1 / v2.0
evaluation scripts compute them. Those scripts are standalone files, not a
library, so their ~30 lines of normalization and token-overlap F1 are
reproduced here: lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace; each prediction scores the max over its gold answers; an
unanswerable question (v2.0, no gold answers) scores 1 only for an empty
prediction.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np

# ---- classification ------------------------------------------------------------


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str]) -> dict:
    """{"accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}}, "confusion_matrix"}.

    `confusion_matrix[i][j]` counts examples of true class i predicted as j,
    over every class of `label_names` (absent classes give zero rows).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(labels, np.int64)
    y_pred = np.asarray(predictions, np.int64)
    ids = list(range(len(label_names)))
    if y_true.size == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "examples": 0,
                "per_class": {n: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for n in label_names},
                "confusion_matrix": [[0] * len(ids) for _ in ids]}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_names)
    }
    # Macro F1 over the classes present in the gold labels or the predictions
    # (scikit-learn's default), so an empty class of a small eval set does not drag it down.
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    macro = float(np.mean([f[i] for i in seen])) if seen else 0.0
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": macro,
        "examples": int(y_true.size),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


# ---- SQuAD (official evaluation, v1.1 and v2.0) -----------------------------------


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of normalized answers; two empty answers agree (v2.0's rule)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_answer(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction: max over gold answers; no gold answers means
    "unanswerable", which only the empty prediction gets right."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(prediction, g) for g in golds), max(f1_score(prediction, g) for g in golds)


def squad_metrics(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """EM and F1 in percent over every question in `golds` (a question without a
    prediction scores 0, as in the official script), split into has-answer /
    no-answer parts when both kinds occur (v2.0)."""
    em, f1, has_answer = {}, {}, {}
    for qid, answers in golds.items():
        em[qid], f1[qid] = score_answer(predictions[qid], answers) if qid in predictions else (0.0, 0.0)
        has_answer[qid] = any(normalize_answer(a) for a in answers)
    n = max(len(golds), 1)
    out = {"exact_match": 100.0 * sum(em.values()) / n, "f1": 100.0 * sum(f1.values()) / n, "total": len(golds)}
    has = [q for q in golds if has_answer[q]]
    no = [q for q in golds if not has_answer[q]]
    if has and no:
        out.update(
            has_answer_exact_match=100.0 * sum(em[q] for q in has) / len(has),
            has_answer_f1=100.0 * sum(f1[q] for q in has) / len(has),
            no_answer_exact_match=100.0 * sum(em[q] for q in no) / len(no),
            no_answer_f1=100.0 * sum(f1[q] for q in no) / len(no),
        )
    return out
