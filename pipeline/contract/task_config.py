"""The fine-tuning task configs: one class per task type, chosen by `type`.

A pydantic discriminated union on `type`, so a key that does not apply to a type is
an unknown key there. The configs live here, in the contract, because the CLI
validates the config before TensorFlow is imported; each type's behaviour (data
conversion, model, loss, evaluation, reports, export signature) is
`bert_keras/tasks/<type>.py`, registered in `bert_keras.tasks.TASKS` under the same
name. tests/test_task_registry.py fails when a config class has no behaviour, or
a behaviour no config class.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pipeline.contract.train_config import TrainConfig

TYPE_HELP = ("`classification` (one text, one label), `pair` (two texts), `qa` (extractive, SQuAD v1.1/v2.0 JSON) or "
             "`long_document` (a text of several windows)")


class TaskConfig(TrainConfig):
    """What every task type shares: its files, training, model selection."""

    type: str = Field(description=TYPE_HELP)
    train_file: str = Field(description="CSV, TSV or JSONL (SQuAD JSON for `qa`)")
    eval_file: str | None = Field(None, description="unset: split `eval_fraction` off `train_file`")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of `train_file` held out when `eval_file` is unset")
    split_field: str | None = Field(None, description="rows with the same value never straddle train and eval")
    max_seq_length: int = Field(128, ge=8, description="tokens per window")
    epochs: float = Field(2, gt=0, description="epochs (may be fractional)")
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; unset: once per epoch")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without a gain; unset: off")
    best_metric: str = Field("accuracy", description=(
        "the metric that chooses the checkpoint kept: `accuracy`, `macro_f1` or `loss`; `qa`: `f1`, `exact_match` "
        "or `loss`"))
    init: str = Field("pretrained", description="`pretrained` (this run's encoder), `random`, `hf:DIR`, `google:DIR`")
    compare_random_init: bool = Field(False, description="also train from random init and report both scores")
    register_name: str | None = Field(None, description="MLflow Model Registry name (a new version each run)")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    packing: bool = Field(False, description="several short instances share one row, without attending across")

    METRICS: ClassVar[tuple[str, ...]] = ()  # what the type's evaluation computes (best_metric's choices)

    @field_validator("best_metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        name = value.removeprefix("eval_")
        if cls.METRICS and name not in cls.METRICS:
            raise ValueError(f"best_metric {value!r} is not computed for {type_name(cls)} tasks; "
                             f"use one of {', '.join(cls.METRICS)}")
        return name


class ClassificationTaskConfig(TaskConfig):
    type: Literal["classification"] = Field(description=TYPE_HELP)
    text_field: str = Field("text", description="column of the text")
    label_field: str = Field("label", description="column of the label")
    labels: list[str] | None = Field(None, description="label names in id order; unset: sorted distinct training labels")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="`balanced` weights classes by inverse frequency")

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
    best_metric: str = Field("f1", description="the metric that chooses the checkpoint kept")

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
