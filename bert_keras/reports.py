"""Files a person looks at after fine-tuning, written under `<out_dir>/reports/`.

- confusion_matrix.png: counts, true class down, predicted class across;
- per_class.json / per_class.csv: precision, recall, F1 and support per class;
- learning_curves.png: training loss (and accuracy) per logged step, dev metrics per evaluation;
- predictions_sample.jsonl: a sample of test predictions, errors first (most confident first);
- scores.json / runs.csv: every run of every start (and baseline) on dev and test, and their spread.

matplotlib runs with the Agg backend (no display on a training machine).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.contract.atomic import atomic_write_bytes, atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as a PNG at `path`, on any filesystem (written whole, atomically)."""
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png")
    atomic_write_bytes(path, png.getvalue())


def save_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str,
                          title: str = "confusion matrix") -> str:
    plt = _pyplot()
    cm = np.asarray(matrix)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_per_class(per_class: Mapping[str, Mapping[str, float]], directory: str) -> list[str]:
    """per_class.json and per_class.csv (class, precision, recall, f1, support)."""
    json_path = os.path.join(directory, "per_class.json")
    atomic_write_text(json_path, json.dumps(per_class, indent=2) + "\n")
    csv_path = os.path.join(directory, "per_class.csv")
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for name, row in per_class.items():
        writer.writerow([name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"]])
    atomic_write_text(csv_path, fh.getvalue())
    return [json_path, csv_path]


def save_learning_curves(train: Sequence[Mapping[str, float]], evals: Sequence[Mapping[str, float]], path: str,
                         eval_keys: Sequence[str] = ()) -> str | None:
    """Left: training loss per logged step (and dev loss); right: accuracy-like metrics (dev: `evals`)."""
    train = [r for r in train if "loss" in r]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals and "loss" in evals[0]:
        ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="dev loss")
    ax1.set_xlabel("step")
    ax1.set_title("loss")
    ax1.legend()
    if train and "accuracy" in train[0]:
        ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy")
    for key in eval_keys:
        if evals and key in evals[0]:
            ax2.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=f"dev {key}")
    ax2.set_xlabel("step")
    ax2.set_title("metrics")
    ax2.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_predictions_sample(rows: Sequence[Mapping], path: str, limit: int = 200) -> str:
    """JSON lines of at most `limit` predictions: errors first (most confident
    mistakes on top), then correct ones. Each row needs "correct" and may have "confidence"."""
    def order(row):
        return (bool(row["correct"]), -float(row.get("confidence", 0.0)))

    chosen = sorted(rows, key=order)[:limit]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
    return path


def write_runs_table(rows: Sequence[Mapping], path: str) -> str:
    """runs.csv: one line per run (start, seed, then the given columns); `rows` share their keys."""
    keys = list(rows[0]) if rows else ["start", "seed"]
    fh = io.StringIO(newline="")
    writer = csv.DictWriter(fh, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, fh.getvalue())
    return path
