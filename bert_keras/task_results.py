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
class RunFacts:
    """How one fine-tuning run went: what both the in-memory run and its record say."""

    chosen_by: str  # "dev <metric>" or "last step (no dev split)"
    best_step: int | None
    final_step: int
    stopped_early: bool
    train_seconds: float
    steps_per_epoch: int
    global_batch_size: int
    precision: str
    strategy: str
    starting_weights: str  # what was loaded, in words
    class_weights: dict[str, float] | None


@dataclasses.dataclass
class TaskRun(RunFacts):
    """One fine-tuning run (a start, a seed): trained, its checkpoint chosen on dev, scored once on test."""

    model: Any  # the trained Keras task model, with the chosen weights loaded
    labels: list[str]
    dev: Any  # bert_keras.evaluate.EvalResult of the chosen weights on dev; None without a dev split
    test: Any  # the one evaluation on test, of the chosen weights
    history: list[dict]  # training log lines
    evals: list[dict]  # every dev evaluation during training
    records: dict[str, int]  # split -> records
    skipped: dict[str, dict[str, int]]  # split -> reason -> rows
    allow_null: bool  # qa: questions without an answer exist
    chief: bool  # this worker writes files and logs


@dataclasses.dataclass
class RunScore(RunFacts, Record):
    """What one run scored, as written to its run.json (the mark of a finished run)."""

    start: str  # "main" (the task's init) or "random_init"
    seed: int
    dev: dict[str, float]  # the chosen checkpoint on dev; {} without a dev split
    test: dict[str, float]  # the chosen checkpoint on test, evaluated once
    details: dict[str, Any]  # test: per-class table, confusion matrix
    weights: str  # the chosen weights of the task model (.weights.h5)
    reports: dict[str, str]  # name -> file
    encoder: dict[str, Any]  # the encoder's architecture (bert_keras.starting_weights.encoder_spec)

    @classmethod
    def of(cls, run: TaskRun, **fields) -> RunScore:
        facts = {f.name: getattr(run, f.name) for f in dataclasses.fields(RunFacts)}
        return cls(**facts, **fields)


@dataclasses.dataclass
class BaselineRun(Record):
    """One run of a baseline (bert_keras.baselines): its setting chosen on dev, scored once on test."""

    seed: int
    dev: dict[str, float]
    test: dict[str, float]
    chosen_by: str
    c: float  # TF-IDF + LR: the inverse regularization strength dev chose


@dataclasses.dataclass
class Spread(Record):
    """One metric over the repeats of a start: mean, sample standard deviation (0 for one run), each run."""

    mean: float
    std: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        n = len(values)
        mean = sum(values) / n if n else float("nan")
        std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
        return cls(mean, std, list(values))


@dataclasses.dataclass
class FinetunePaths(Record):
    reports: dict[str, str]  # the chosen run's reports, copied to <task>/reports/, and the scores of every run
    runs: str  # <task>/runs/: one directory per start and seed (checkpoints, history, run.json)


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
    strip_accents: bool | None  # the data's normalization (None: follows lowercase)
    register_name: str | None  # MLflow Model Registry name
    input_example: dict[str, list[str]]  # signature input -> two real rows (MLflow's signature, the check)


@dataclasses.dataclass
class FinetuneResult(Record):
    """A task's result: every run of every start, their spread, the chosen run, the summary."""

    task: str
    type: str
    init: str  # the main start
    metric: str  # the headline metric: `test` and `dev` below are of it
    chosen_by: str  # what chose each run's checkpoint and the exported repeat: "dev <metric>" or the last step
    runs: list[RunScore]  # the main start, one per repeat
    random_init: list[RunScore]  # with compare_random_init
    baselines: dict[str, list[BaselineRun]]  # name -> one per repeat
    test: dict[str, Spread]  # "main", "random_init", each baseline -> headline metric on test
    dev: dict[str, Spread]
    chosen_seed: int  # the repeat dev chose: its reports are in paths.reports and it is exported
    labels: list[str]
    records: dict[str, int]  # split -> records
    skipped: dict[str, dict[str, int]]
    paths: FinetunePaths
    export: ExportSpec
    summary: str
    wall_seconds: float

    @property
    def chosen(self) -> RunScore:
        return next(r for r in self.runs if r.seed == self.chosen_seed)
