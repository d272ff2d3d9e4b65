"""What a task type is: the one interface every `bert_keras/tasks/<type>.py` implements.

A task type is a small class, registered by name in `bert_keras.tasks.TASKS`; the
pipeline asks it for everything that differs between types and does the rest itself:

| part        | here                                                   | runs in                       |
|-------------|--------------------------------------------------------|-------------------------------|
| config      | `config` (a class of `pipeline.contract.task_config`)  | the CLI, before TensorFlow    |
| data        | `read_rows`, `required_fields`, `label_names`, `convert` | the data job (numpy, no TF) |
| model, loss | `build_model`, `loss`                                  | training                      |
| evaluation  | `evaluate`, `headline` (`config.METRICS` to choose by)  | training                      |
| reports     | `write_reports` (of one run: test, and dev apart)      | the finetune stage            |
| export      | `input_names`, `export_options`, `serving_fn`, `input_example` | the export stage      |
| baselines   | `baseline_input` (None: the type has none)             | the finetune stage            |

The data conversion is numpy and pure Python, so the data job runs it without
TensorFlow; methods that need TensorFlow or Keras import it when called.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from pipeline.contract import atomic, schema
from pipeline.contract.atomic import atomic_write_text
from pipeline.contract.errors import ContractError, UserError
from pipeline.contract.task_config import TaskConfig


class PieceTokenizer(Protocol):
    """The tokenizer as the conversions see it: wordpiece ids as numpy arrays, offsets in characters."""

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        """Wordpiece ids of each text."""

    def pieces_with_offsets(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, char starts, char ends) of each text; ends exclusive, Python string indices."""


class RecordSink(Protocol):
    """One split's output in the data job: records, the source rows they came from, counts."""

    counts: Counter
    skipped: Counter

    def write(self, record: bytes) -> None: ...

    def example(self, row: dict) -> None:
        """The source row of a written record (examples.jsonl): text for reports, baselines and QA scoring."""


@dataclasses.dataclass
class EvalContext:
    """What evaluation needs besides the model and the records of a split."""

    labels: list[str]
    vocab: list[str]
    examples: dict[int, dict]  # the split's examples.jsonl by example_id
    allow_no_answer: bool = False  # qa: SQuAD 2.0 questions without an answer exist


def read_table(path: str) -> Iterator[dict]:
    """Rows of a JSONL, CSV or TSV file."""
    with io.TextIOWrapper(atomic.open_read(path), encoding="utf-8-sig", newline="") as fh:  # any filesystem
        if path.endswith((".csv", ".tsv")):
            yield from csv.DictReader(fh, delimiter="\t" if path.endswith(".tsv") else ",")
            return
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise UserError(f"{path} line {n} is not valid JSON: fix or remove that line") from None


def load_examples(data_dir: str) -> dict[int, dict]:
    """example_id -> source row, from the examples file the data job writes next to a split's records."""
    path = os.path.join(data_dir, schema.EXAMPLES_NAME)
    if not atomic.exists(path):
        raise ContractError(f"{path} not found: rerun the task's data step (bertpipe finetune --force)")
    lines = atomic.read_text(path).splitlines()
    return {int(row[schema.EXAMPLE_ID]): row for row in map(json.loads, filter(str.strip, lines))}


def pad(values: Sequence[int] | np.ndarray, length: int) -> np.ndarray:
    """Right-pad with zeros to `length` (the writers trim before they pad)."""
    out = np.zeros(length, dtype=np.int64)
    out[: len(values)] = values
    return out


class TaskType:
    """The interface; subclasses set the class attributes and implement what differs."""

    name: ClassVar[str]
    config: ClassVar[type[TaskConfig]]
    record_kind: ClassVar[str]  # pipeline.contract.schema record kind
    input_names: ClassVar[tuple[str, ...]] = ("text",)  # the serving signature's string inputs
    signature_aliases: ClassVar[tuple[str, ...]] = ()  # more names for serving_default in the export
    # (metric, shown as) in summaries and reports, the main one first.
    headline: ClassVar[tuple[tuple[str, str], ...]] = (("accuracy", "accuracy"), ("macro_f1", "macro F1"))
    percent: ClassVar[bool] = False  # metrics already in percent (SQuAD's); else fractions, shown x100
    has_labels: ClassVar[bool] = True
    export_defaults: ClassVar[dict[str, Any]] = {}  # export options and their defaults

    # ---- data (numpy and pure Python) ------------------------------------------------------
    def read_rows(self, path: str, cfg: TaskConfig) -> Iterator[dict]:
        return read_table(path)

    def required_fields(self, cfg: TaskConfig) -> list[str]:
        return []

    def label_names(self, cfg: TaskConfig, rows: Iterable[dict]) -> list[str]:
        return []

    def max_chunks(self, cfg: TaskConfig) -> int:
        return 0

    def convert(self, cfg: TaskConfig, rows: list[tuple[int, dict]], tokenizer: PieceTokenizer, special,
                labels: list[str], out: RecordSink) -> None:
        """Rows (example_id, source row) of one split -> records and example rows in `out`; bad rows counted."""
        raise NotImplementedError

    def allow_no_answer(self, examples: Iterable[dict]) -> bool:
        return False

    def baseline_input(self, example: dict) -> str | tuple[str, str] | None:
        """What a bag-of-words baseline reads of an example row; None: this type has no baseline."""
        return None

    # ---- model and evaluation (Keras, imported on use) ----------------------------------------
    def build_model(self, cfg: TaskConfig, encoder, num_labels: int, dropout: float):
        raise NotImplementedError

    def loss(self, class_weights: np.ndarray | None):
        raise NotImplementedError

    def evaluate(self, model, dataset, ctx: EvalContext):
        raise NotImplementedError

    # ---- reports -----------------------------------------------------------------------------
    def write_reports(self, test, dev, history: list[dict], evals: list[dict], labels: list[str],
                      directory: str) -> dict[str, str]:
        """One run's reports in `directory`: learning curves (training loss, dev evaluations), the test
        predictions sample and, per type, more on test (`_reports`); test and dev metrics (EvalResults) apart."""
        from bert_keras import reports

        atomic.makedirs(directory)
        paths = self._reports(test, labels, directory)
        keys = [key for key, _ in self.headline]
        if self.percent:  # percent -> 0..1, so the curves share one axis with accuracy-like metrics
            evals = [{**r, **{k: r[k] / 100 for k in keys if k in r}} for r in evals]
        curves = reports.save_learning_curves(history, evals, os.path.join(directory, "learning_curves.png"), keys)
        if curves:
            paths["learning_curves"] = curves
        paths["predictions_sample"] = reports.write_predictions_sample(
            test.rows, os.path.join(directory, "predictions_sample.jsonl"))
        for split, result in (("test", test), ("dev", dev)):
            if result is not None:
                paths[f"{split}_metrics"] = os.path.join(directory, f"{split}_metrics.json")
                atomic_write_text(paths[f"{split}_metrics"], json.dumps(result.metrics, indent=2) + "\n")
        return paths

    def _reports(self, result, labels: list[str], directory: str) -> dict[str, str]:
        return {}

    # ---- export ------------------------------------------------------------------------------
    def export_options(self, cfg: TaskConfig, allow_no_answer: bool) -> dict[str, Any]:
        return {}

    def serving_fn(self, server):
        """The serving_default function over `server` (bert_keras.export): named string inputs -> outputs."""
        raise NotImplementedError

    def input_example(self, examples: list[dict]) -> dict[str, list[str]]:
        """Signature inputs -> values, from example rows (the MLflow model's input example)."""
        return {"text": [e["text"] for e in examples]}

