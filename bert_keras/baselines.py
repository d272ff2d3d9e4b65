"""The bag-of-words baseline every classification task is reported beside: TF-IDF + logistic regression.

What a data scientist tries first, so a BERT figure means something only next to it.
scikit-learn's `TfidfVectorizer` (word unigrams and bigrams, sublinear tf, lower-cased)
and `LogisticRegression` (`BINARY_SOLVER` / `MULTICLASS_SOLVER`), C chosen on dev from `C_GRID` by the task's
best_metric, test scored once with that C. Without a dev split C is scikit-learn's
default, 1. The vectorizer learns its vocabulary from the training rows only.

Pairs (`baseline_input` gives (a, b)): one vocabulary over both sides, and the features
[A, B, A * B]: each side's words, and the words they share (the elementwise product of
their TF-IDF vectors), which is what entailment and paraphrase baselines lean on.

Metrics are `bert_keras.metrics.classification_metrics`' (the BERT runs' own
definitions) plus the log loss. Each repeat fits with its own seed; both solvers turned
out deterministic here (liblinear's primal solver: two seeds, identical scores), so the spread is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bert_keras import metrics as M
from bert_keras.task_results import BaselineRun

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
# Two classes: liblinear, not the default lbfgs: on the movie reviews' 95,602 uni+bigram features it
# fit in 2-4 s where lbfgs took 7-24 s (C 0.1-30, one loaded 2-core machine), to the same dev accuracy
# (0.764 vs 0.767 at C 30). More classes: lbfgs (multinomial), which scikit-learn 1.9's liblinear refuses.
BINARY_SOLVER, MULTICLASS_SOLVER = "liblinear", "lbfgs"
DEFAULT_C = 1.0
LOWER_IS_BETTER = ("loss",)


def _vectorize(train: list, others: Sequence[list]):
    """TF-IDF matrices of the training inputs and of each other split (texts, or (a, b) pairs; an empty split
    gives a matrix of no rows)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    if not train or isinstance(train[0], str):
        vectorizer.fit(train)

        def features(texts):
            return vectorizer.transform(texts)
    else:
        vectorizer.fit([t for pair in train for t in pair])

        def features(pairs):
            a = vectorizer.transform([p[0] for p in pairs])
            b = vectorizer.transform([p[1] for p in pairs])
            return sparse.hstack([a, b, a.multiply(b)]).tocsr()

    x_train = features(train)
    return x_train, [features(x) if len(x) else sparse.csr_matrix((0, x_train.shape[1])) for x in others]


def _scores(model, x, y: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    probs = np.zeros((x.shape[0], len(labels)))
    probs[:, model.classes_] = model.predict_proba(x)  # classes absent from training keep probability 0
    pred = probs.argmax(-1)
    scores = M.classification_metrics(y, pred, labels)
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)))) if len(y) else 0.0
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "loss": loss,
            "examples": float(scores["examples"])}


def tfidf_baseline(train: list, train_y: Sequence[int], dev: list, dev_y: Sequence[int], test: list,
                   test_y: Sequence[int], labels: Sequence[str], metric: str, seeds: Sequence[int]) -> list[BaselineRun]:
    """One run per seed; `train` / `dev` / `test` are the inputs (texts or pairs), `*_y` label ids."""
    from sklearn.linear_model import LogisticRegression

    x_train, (x_dev, x_test) = _vectorize(train, [dev, test])
    y_train, y_dev, y_test = (np.asarray(y, np.int64) for y in (train_y, dev_y, test_y))
    solver = BINARY_SOLVER if len(np.unique(y_train)) <= 2 else MULTICLASS_SOLVER

    def fit(c: float, seed: int):
        return LogisticRegression(C=c, solver=solver, max_iter=1000, random_state=seed).fit(x_train, y_train)

    runs = []
    for seed in seeds:
        if len(dev):
            models = {c: fit(c, seed) for c in C_GRID}
            tried = {c: _scores(m, x_dev, y_dev, labels) for c, m in models.items()}
            sign = -1 if metric in LOWER_IS_BETTER else 1
            c = max(C_GRID, key=lambda c: (sign * tried[c][metric], -abs(np.log(c))))  # ties: nearer to C = 1
            model, dev_scores = models[c], tried[c]
            chosen_by = f"dev {metric} (C {c:g} of {', '.join(f'{g:g}' for g in C_GRID)})"
        else:
            c, dev_scores, chosen_by = DEFAULT_C, {}, f"no dev split: C {DEFAULT_C:g}"
            model = fit(c, seed)
        runs.append(BaselineRun(seed=seed, dev=dev_scores, test=_scores(model, x_test, y_test, labels),
                                chosen_by=chosen_by, c=c))
    return runs
