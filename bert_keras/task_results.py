"""What fine-tuning returns, typed: one run (`TaskRun`) and a task's whole result (`FinetuneResult`).

`train_task` returns a `TaskRun` (it holds the trained Keras model, so it stays in
memory); `run_finetune` returns a `FinetuneResult`, a record (`pipeline.contract.records`)
that the finetune stage writes to stage.json and `finetune_result.json` and the export
stage reads back. No TensorFlow here: the records are read by processes that need none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.contract.records import Record


@dataclasses.dataclass
class TaskRun:
    """One fine-tuning run: a start, a seed, trained and evaluated."""

    model: Any  # the trained Keras task model, with the chosen weights loaded
    labels: list[str]
    eval: Any  # bert_keras.evaluate.EvalResult of the kept weights on the eval split
    history: list[dict]  # training log lines
    evals: list[dict]  # every evaluation during training
    best_step: int | None
    final_step: int
    stopped_early: bool
    train_seconds: float
    steps_per_epoch: int
    global_batch_size: int
    precision: str
    strategy: str
    starting_weights: str  # what was loaded, in words
    records: dict[str, int]  # split -> records
    skipped: dict[str, dict[str, int]]  # split -> reason -> rows
    allow_null: bool  # qa: questions without an answer exist
    chief: bool  # this worker writes files and logs
    class_weights: dict[str, float] | None
    examples: dict[int, dict]  # the eval split's example rows, by example_id


@dataclasses.dataclass
class Scores(Record):
    """Metrics of one start, and where its run chose them."""

    metrics: dict[str, float]
    best_step: int | None
    train_seconds: float


@dataclasses.dataclass
class FinetunePaths(Record):
    task_weights: str
    reports: dict[str, str]
    checkpoints: str


@dataclasses.dataclass
class ExportSpec(Record):
    """What the export stage needs to rebuild the fine-tuned model and export it (`bert_keras.export_finetuned`)."""

    task_type: str
    task: dict[str, Any]  # the task's resolved config
    labels: list[str]
    max_seq_length: int
    options: dict[str, Any]  # the type's serving options (doc_stride, allow_no_answer, ...)
    encoder: dict[str, Any]  # the trained encoder's architecture (Keras serialization)
    dropout: float  # the head's (shapes nothing, but the model is built as it was trained)
    weights: str  # the task model's weights (.weights.h5)
    vocab_file: str
    lowercase: bool
    register_name: str | None  # MLflow Model Registry name
    input_example: dict[str, list[str]]  # signature input -> two real rows (MLflow's signature, the check)


@dataclasses.dataclass
class FinetuneResult(Record):
    task: str
    type: str
    init: str
    metrics: dict[str, float]  # the main start's, on the eval split
    details: dict[str, Any]
    best_step: int | None
    final_step: int
    stopped_early: bool
    train_seconds: float
    global_batch_size: int
    precision: str
    strategy: str
    starting_weights: str
    records: dict[str, int]
    skipped: dict[str, dict[str, int]]
    class_weights: dict[str, float] | None
    labels: list[str]
    paths: FinetunePaths
    export: ExportSpec
    summary: str
    wall_seconds: float
    random_init: Scores | None = None
