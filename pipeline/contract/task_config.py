"""The fine-tuning task configs: one class per task type, chosen by `type`, and the evaluation protocol's keys.

A pydantic discriminated union on `type`, so a key that does not apply to a type is
an unknown key there. The configs live here, in the contract, because the CLI
validates the config before TensorFlow is imported; each type's behaviour (data
conversion, model, loss, evaluation, reports, export signature) is
`bert_keras/tasks/<type>.py`, registered in `bert_keras.tasks.TASKS` under the same
name. tests/test_task_registry.py fails when a config class has no behaviour, or
a behaviour no config class.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pipeline.contract.section import Section
from pipeline.contract.train_config import TrainConfig

TYPE_HELP = ("`classification` (one text, one label), `pair` (two texts), `qa` (extractive, SQuAD v1.1/v2.0 JSON) or "
             "`long_document` (a text of several windows)")


class ConfigNote(UserWarning):
    """A config that still works but uses an old spelling; the CLI prints it as one line."""


# Old key -> new key. eval_file used to choose the checkpoint and report the score at once;
# it is now the test set, scored once at the end, while a dev split chooses.
_RENAMED = {"eval_file": "test_file", "eval_fraction": "test_fraction"}


class TaskConfig(TrainConfig):
    """What every task type shares: its files, the evaluation protocol, training.

    Three splits: train; dev, `dev_fraction` of the training rows, which chooses the
    checkpoint (best_metric, early stopping); test (`test_file`, or without it
    `test_fraction` of the training rows), scored once, at the end, on the chosen
    checkpoint. Rows sharing `split_field` stay on one side of every split.
    """

    type: str = Field(description=TYPE_HELP)
    train_file: str = Field(description="CSV, TSV or JSONL (SQuAD JSON for `qa`)")
    test_file: str | None = Field(None, description=(
        "scored once, at the end, on the chosen checkpoint; unset: `test_fraction` of `train_file`'s groups "
        "(`eval_file` is its old name: it still works, with a note)"))
    dev_file: str | None = Field(None, description=(
        "the dev split as its own file (same columns as `train_file`), e.g. held-out speakers' rows; unset: "
        "`dev_fraction` of `train_file`'s groups"))
    test_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "share of `train_file`'s groups carved off as test when `test_file` is unset (old name `eval_fraction`)"))
    dev_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "share of `train_file`'s groups carved off as dev, which alone chooses the checkpoint, stops early and "
        "picks the exported repeat; `0`: no dev, the last step is kept. Unused with `dev_file`"))
    split_field: str | None = Field(None, description=(
        "a group: rows with the same value (a speech, a speaker) never straddle train, dev and test; "
        "unset: each row is its own group"))
    repeats: int = Field(1, ge=1, description=(
        "fine-tune N times from the same start, seeds `run.seed`, +1, ...: mean ± std and each run (random init "
        "and the baselines too)"))
    max_seq_length: int = Field(128, ge=8, description="tokens per window")
    epochs: float = Field(2, gt=0, description="epochs (may be fractional)")
    eval_every: int | None = Field(None, ge=1, description="steps between dev evaluations; unset: once per epoch")
    early_stopping_patience: int | None = Field(None, ge=1, description=(
        "dev evaluations without a gain before training stops; unset: off"))
    best_metric: str = Field("accuracy", description=(
        "the dev metric that chooses the checkpoint and the repeat: `accuracy`, `macro_f1` or `loss`; `qa`: `f1`, "
        "`exact_match` or `loss`"))
    init: str = Field("pretrained", description=(
        "`pretrained` (this run's encoder), `random`, or a checkpoint: `hf:DIR`, `google:DIR`, or a path to bertpipe "
        "encoder weights"))
    compare_random_init: bool = Field(False, description=(
        "also fine-tune from random init (as many repeats) and report both"))
    register_name: str | None = Field(None, description=(
        "MLflow Model Registry name (the export stage adds a new version each time it runs)"))
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    packing: bool = Field(False, description="several short instances share one row, without attending across")

    METRICS: ClassVar[tuple[str, ...]] = ()  # what the type's evaluation computes (best_metric's choices)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for old, new in _RENAMED.items():
            if old in raw:
                if new in raw:
                    raise ValueError(f"{old} is the old name of {new}: give only {new}")
                raw = {(new if k == old else k): v for k, v in raw.items()}
                warnings.warn(ConfigNote(f"{old} is now called {new} (scored once, at the end; "
                                         "a dev split of train_file chooses the checkpoint)"), stacklevel=2)
        return raw

    @field_validator("best_metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        name = value.removeprefix("eval_").removeprefix("dev_")
        if cls.METRICS and name not in cls.METRICS:
            raise ValueError(f"best_metric {value!r} is not computed for {type_name(cls)} tasks; "
                             f"use one of {', '.join(cls.METRICS)}")
        return name

    @model_validator(mode="after")
    def _check_protocol(self) -> TaskConfig:
        if self.early_stopping_patience and not (self.dev_fraction or self.dev_file):
            raise ValueError("early_stopping_patience needs a dev split to watch: set dev_fraction above 0")
        if not self.test_file and self.test_fraction + (0 if self.dev_file else self.dev_fraction) >= 1:
            raise ValueError("test_fraction + dev_fraction must leave training rows (below 1)")
        return self


class DistillConfig(Section):
    """`finetune.<task>.distill`: a smaller student of the task's fine-tuned model, trained by `bertpipe distill`.

    A block of the task, not a task of its own: the student learns the same labels from
    the same train split, dev chooses its checkpoint and test scores it once, as for the
    teacher, so its accuracy and the teacher's are comparable; the stage is its own, so
    the teacher is trained once and distillation reruns alone when only this block changes.
    """

    layers: int = Field(2, ge=1, description="the student's transformer layers (the teacher's width, heads and vocab)")
    init: Literal["first", "spread", "random"] = Field("first", description=(
        "the student's start: `first` = the teacher's embeddings, first `layers` blocks, pooler and head; "
        "`spread` = blocks evenly spaced over the teacher's (DistilBERT's every other layer); `random`"))
    temperature: float = Field(2.0, gt=0, description=(
        "T of the soft targets: loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)"))
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft-target term (1: soft targets only)")
    epochs: float | None = Field(None, gt=0, description="the student's epochs; unset: the task's")
    learning_rate: float | None = Field(None, gt=0, description="the student's peak learning rate; unset: the task's")
    repeats: int | None = Field(None, ge=1, description=(
        "students trained, seeds `run.seed`, +1, ... (mean ± std on test); unset: the task's `repeats`"))


class ClassificationTaskConfig(TaskConfig):
    type: Literal["classification"] = Field(description=TYPE_HELP)
    text_field: str = Field("text", description="column of the text")
    label_field: str = Field("label", description="column of the label")
    labels: list[str] | None = Field(None, description="label names in id order; unset: sorted distinct training labels")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="`balanced` weights classes by inverse frequency")
    baselines: list[Literal["tfidf"]] = Field(default_factory=lambda: ["tfidf"], description=(
        "scored beside BERT on the same splits: `tfidf` is scikit-learn TF-IDF (word uni+bigrams) + logistic "
        "regression, C chosen on dev; `[]` for none"))
    distill: DistillConfig | None = Field(None, description=(
        "train a smaller student of this task's model by `bertpipe distill` (exported as `<task>-student`); "
        "unset: none"))

    METRICS: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "loss")


class PairTaskConfig(ClassificationTaskConfig):
    type: Literal["pair"] = Field(description=TYPE_HELP)
    text_b_field: str = Field("text_b", description="column of the second text")


class LongDocumentTaskConfig(ClassificationTaskConfig):
    type: Literal["long_document"] = Field(description=TYPE_HELP)
    doc_stride: int = Field(64, ge=1, description="tokens between window starts")
    max_chunks: int = Field(8, ge=1, description="windows kept per document")
    pooling: Literal["mean", "max", "attention"] = Field("attention", description="pooling over the windows")

    @model_validator(mode="after")
    def _check_windows(self) -> LongDocumentTaskConfig:
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below max_seq_length ({self.max_seq_length})")
        return self


class QATaskConfig(TaskConfig):
    type: Literal["qa"] = Field(description=TYPE_HELP)
    doc_stride: int = Field(64, ge=1, description="tokens between window starts")
    max_query_length: int = Field(32, ge=1, description="longest question, in tokens")
    best_metric: str = Field("f1", description="the dev metric that chooses the checkpoint and the repeat")

    METRICS: ClassVar[tuple[str, ...]] = ("f1", "exact_match", "loss")

    @model_validator(mode="after")
    def _check_windows(self) -> QATaskConfig:
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below max_seq_length ({self.max_seq_length})")
        if self.max_query_length >= self.max_seq_length - 3:
            raise ValueError("max_query_length must leave room for the context in max_seq_length")
        return self


def type_name(cls: type[TaskConfig]) -> str:
    """The `type` value of a task config class (its Literal)."""
    args = get_args(cls.model_fields["type"].annotation)
    return args[0] if args else cls.__name__


TASK_CONFIGS: dict[str, type[TaskConfig]] = {
    type_name(c): c for c in (ClassificationTaskConfig, PairTaskConfig, QATaskConfig, LongDocumentTaskConfig)
}
AnyTaskConfig = Annotated[
    ClassificationTaskConfig | PairTaskConfig | QATaskConfig | LongDocumentTaskConfig, Field(discriminator="type")
]
