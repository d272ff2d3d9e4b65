"""One typed config, loaded once at the CLI edge.

A run is described by a YAML file (see `configs/demo.yaml`) with one section per
stage. `load_config` reads it, applies dotted overrides from the command line
(`--set pretrain.batch_size=64`), validates types and cross-field rules, and
returns a frozen `Config`. Each stage receives only its own section(s).

Relative paths inside a YAML file are relative to that file's directory, so a
config and the data next to it can move together; paths given with `--set` are
relative to the current directory, like any other command-line path.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.contract.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# An editable install (the README's) finds the demo next to the package; an installed
# wheel (the Docker image) finds it in the working directory.
DEFAULT_CONFIG = next(
    (p for p in (os.path.join(REPO_ROOT, "configs", "demo.yaml"), os.path.join("configs", "demo.yaml")) if os.path.exists(p)),
    os.path.join(REPO_ROOT, "configs", "demo.yaml"),
)


# The masking modes, named once: the config accepts them, the Beam job and the
# trainer's dynamic masking implement them.
MASKING_MODES = ("token", "whole_word", "span", "entity")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    work_dir: str = Field("runs/demo", description="every stage writes below this directory")
    seed: int = Field(0, description="seed of the data jobs and of training")
    tracking_uri: str | None = Field(
        None, description="MLflow store; unset: `MLFLOW_TRACKING_URI`, else `sqlite:///<work_dir>/mlflow.db`")
    experiment: str = Field("bertpipe", description="MLflow experiment name")
    stages: list[Literal["vocab", "prepare", "pretrain", "finetune", "export"]] = Field(
        default_factory=lambda: ["vocab", "prepare", "pretrain", "finetune", "export"],
        description="which stages `bertpipe run` runs")


class DataConfig(_Section):
    corpus: list[str] = Field(
        default_factory=list,
        description="files or glob patterns: `.txt`, `.gz`, `.jsonl`; any Beam filesystem (`gs://`, `s3://`, ...)")
    format: Literal["auto", "text", "jsonl"] = Field(
        "auto", description="`auto` (by file extension), `text` or `jsonl`")
    text_field: str = Field("text", description="the JSONL field that holds a document")
    documents: Literal["file", "blank_line"] = Field(
        "blank_line", description="a text document is a whole `file` or a `blank_line`-separated block")
    lowercase: bool = Field(True, description="lower-case (uncased BERT)")
    strip_accents: bool = Field(True, description="NFD and strip accents")
    max_document_chars: int = Field(5_000_000, gt=0, description="longer documents are skipped and counted")

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VocabConfig(_Section):
    vocab_file: str | None = Field(
        None, description="use this vocab (e.g. Google's bert-base-uncased) instead of learning one")
    size: int = Field(8000, ge=100, description=(
        "target size of a learned vocab (tf-text's learner searches a word-count threshold; on a small corpus the "
        "steps are coarse and it can overshoot: the demo's 24 speeches give 11,381)"))
    num_unused: int = Field(10, ge=0, description="reserved `[unusedN]` slots for later domain tokens")
    max_token_length: int = Field(50, ge=1, description="longest word the learner considers")
    lower_threshold: int = Field(1, ge=1, description="lowest word count the learner considers")
    num_iterations: int = Field(4, ge=1, description="learner iterations")


class PrepareConfig(_Section):
    max_seq_length: int = Field(128, ge=8, description="tokens per instance")
    max_predictions_per_seq: int = Field(20, ge=1, description="masked positions per instance")
    masked_lm_prob: float = Field(0.15, gt=0, lt=1, description="share of tokens masked")
    short_seq_prob: float = Field(0.1, ge=0, le=1, description="share of instances with a shorter random target length")
    dupe_factor: int = Field(1, ge=1, description="copies of the data, each with a different mask")
    masking: Literal[MASKING_MODES] = Field("whole_word", description=(
        "`token`, `whole_word`, `span` (n-grams of words) or `entity` (lexicon phrases as units)"))
    max_ngram: int = Field(3, ge=1, description="longest span for `span` masking, in words")
    lexicon: str | None = Field(None, description="entity/phrase lexicon, one a line (needed by `entity`)")
    dynamic: bool = Field(False, description="write unmasked rows with word units; the trainer masks anew every step")
    num_shards: int = Field(4, ge=1, description="output shards")
    compression: Literal["none", "gzip"] = Field("none", description="TFRecord compression")
    beam_args: list[str] = Field(
        default_factory=list, description="standard Beam pipeline options, e.g. `--runner=DataflowRunner`")

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.max_predictions_per_seq >= self.max_seq_length:
            raise ValueError(
                f"max_predictions_per_seq ({self.max_predictions_per_seq}) must be below max_seq_length ({self.max_seq_length})"
            )
        if self.masking == "entity" and not self.lexicon:
            raise ValueError("masking: entity needs a lexicon file (prepare.lexicon)")
        return self


class ModelConfig(_Section):
    vocab_size: int | None = Field(None, description="unset: the vocab file's size")
    hidden_size: int = Field(256, ge=1, description="BERT-base: 768")
    num_layers: int = Field(4, ge=1, description="BERT-base: 12")
    num_heads: int = Field(4, ge=1, description="BERT-base: 12")
    intermediate_size: int = Field(1024, ge=1, description="BERT-base: 3072")
    max_position_embeddings: int = Field(512, ge=1, description="position table size")
    type_vocab_size: int = Field(2, ge=1, description="segment types")
    dropout: float = Field(0.1, ge=0, lt=1, description="hidden dropout")
    attention_dropout: float = Field(0.1, ge=0, lt=1, description="attention-probability dropout")
    initializer_range: float = Field(0.02, gt=0, description="truncated-normal init stddev")
    init_from: str | None = Field(None, description=(
        "start from `hf:DIR` (Hugging Face), `google:DIR` (original TF checkpoint) or a bertpipe checkpoint directory"))

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class TrainConfig(_Section):
    """Options shared by pretraining and every fine-tuning task."""

    batch_size: int = Field(32, ge=1, description=(
        "per replica; global batch = batch x replicas x accumulation steps (logged)"))
    eval_batch_size: int = Field(64, ge=1, description="evaluation batch")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup in steps; unset: `warmup_ratio`")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="linear warmup as a share of all steps")
    schedule: Literal["linear", "polynomial", "constant"] = Field("linear", description="decay after warmup")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="optimizer")
    weight_decay: float = Field(0.01, ge=0, description="never applied to LayerNorm and biases")
    clip_norm: float | None = Field(1.0, gt=0, description="global-norm gradient clipping; unset: none")
    accumulation_steps: int = Field(1, ge=1, description="gradient accumulation")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = Field("auto", description=(
        "`auto`: `mixed_bfloat16` on TPU and on CPUs with native bf16 (AVX512-BF16, AMX), `mixed_float16` with loss "
        "scaling on GPU, `float32` else; or `float32`, `mixed_bfloat16`, `mixed_float16`"))
    jit_compile: bool = Field(False, description=(
        "XLA for the whole step; slower for bf16 on CPU (XLA's CPU matmuls), so off. The element-wise parts are "
        "compiled either way"))
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = Field(
        "auto", description="tf.distribute strategy; `multi_worker` reads `TF_CONFIG`")
    tpu: str | None = Field(None, description="TPU name or address for `TPUStrategy`")
    packing: bool = Field(True, description="several short instances share one row, without attending across")
    pack_max_instances: int = Field(8, ge=1, description="packing: most instances sharing one row")
    log_every: int = Field(50, ge=1, description="steps between progress lines")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept")


class PretrainConfig(TrainConfig):
    steps: int = Field(1000, ge=1, description="training steps")
    eval_steps: int = Field(20, ge=0, description="held-out batches for the final MLM accuracy")


class TaskConfig(TrainConfig):
    type: Literal["classification", "pair", "qa", "long_document"] = Field(description=(
        "`classification`, `pair`, `qa` (SQuAD v1.1/v2.0 JSON) or `long_document`"))
    train_file: str = Field(description="CSV, TSV or JSONL (SQuAD JSON for `qa`)")
    eval_file: str | None = Field(None, description="unset: split `eval_fraction` off `train_file`")
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of `train_file` held out when `eval_file` is unset")
    split_field: str | None = Field(None, description="rows with the same value never straddle train and eval")
    text_field: str = Field("text", description="column of the text")
    text_b_field: str = Field("text_b", description="column of the second text (`pair`)")
    label_field: str = Field("label", description="column of the label")
    labels: list[str] | None = Field(
        None, description="label names in id order; unset: sorted distinct training labels")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="`balanced` weights classes by inverse frequency")
    max_seq_length: int = Field(128, ge=8, description="tokens per window")
    doc_stride: int = Field(64, ge=1, description="QA and long-document windows: stride")
    max_query_length: int = Field(32, ge=1, description="QA: longest question, in tokens")
    max_chunks: int = Field(8, ge=1, description="long documents: windows kept per document")
    pooling: Literal["mean", "max", "attention"] = Field(
        "attention", description="long documents: pooling over windows")
    epochs: float = Field(2, gt=0, description="epochs (may be fractional)")
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; unset: once per epoch")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without a gain; unset: off")
    best_metric: str = Field("accuracy", description="the metric that chooses the checkpoint kept")
    init: str = Field("pretrained", description=(
        "`pretrained` (this run's encoder), `random`, `hf:DIR`, `google:DIR`"))
    compare_random_init: bool = Field(False, description="also train from random init and report both scores")
    register_name: str | None = Field(None, description="MLflow Model Registry name (a new version each run)")
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate")
    packing: bool = Field(False, description="several short instances share one row, without attending across")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.type in ("qa", "long_document") and self.doc_stride >= self.max_seq_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below max_seq_length ({self.max_seq_length})")
        if self.type == "qa" and self.max_query_length >= self.max_seq_length - 3:
            raise ValueError("max_query_length must leave room for the context in max_seq_length")
        return self


class ExportConfig(_Section):
    tasks: list[str] | None = Field(None, description="which tasks to export; unset: every fine-tuned task")
    embedding: bool = Field(True, description="add the pooled / mean-pooled embedding signature")


class Config(_Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    vocab: VocabConfig = VocabConfig()
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: dict[str, TaskConfig] = Field(default_factory=dict, json_schema_extra={"placeholder": "<task>"})
    export: ExportConfig = ExportConfig()

    @field_validator("finetune")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        # Task names become directory names under run.work_dir: keep them from escaping it.
        for name in tasks:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ValueError(f"task name {name!r} must be letters, digits, '_' or '-' (it names a directory)")
        return tasks

    @model_validator(mode="after")
    def _check(self) -> Config:
        m, p = self.model, self.prepare
        if p.max_seq_length > m.max_position_embeddings:
            raise ValueError(
                f"prepare.max_seq_length ({p.max_seq_length}) exceeds model.max_position_embeddings ({m.max_position_embeddings})"
            )
        for name, task in self.finetune.items():
            if task.max_seq_length > m.max_position_embeddings:
                raise ValueError(
                    f"finetune.{name}.max_seq_length ({task.max_seq_length}) exceeds model.max_position_embeddings"
                )
        return self

    def section(self, name: str) -> Any:
        return getattr(self, name)


# Keys whose values are paths to inputs; resolved relative to the YAML file.
_INPUT_PATHS = {
    ("data", "corpus"),
    ("vocab", "vocab_file"),
    ("prepare", "lexicon"),
    ("model", "init_from"),
}
_TASK_INPUT_PATHS = ("train_file", "eval_file")


def _resolve(path: str, base: str) -> str:
    prefix = ""
    if ":" in path and path.split(":", 1)[0] in ("hf", "google"):
        prefix, path = path.split(":", 1)
        prefix += ":"
    if "://" in path or os.path.isabs(path):
        return prefix + path
    return prefix + os.path.normpath(os.path.join(base, path))


def _resolve_paths(raw: dict[str, Any], base: str) -> None:
    for section, key in _INPUT_PATHS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str):
            raw[section][key] = _resolve(value, base)
        elif isinstance(value, list):
            raw[section][key] = [_resolve(v, base) if isinstance(v, str) else v for v in value]
    for task in (raw.get("finetune") or {}).values():
        if not isinstance(task, dict):
            continue
        for key in _TASK_INPUT_PATHS:
            if isinstance(task.get(key), str):
                task[key] = _resolve(task[key], base)
        if isinstance(task.get("init"), str) and task["init"].split(":", 1)[0] in ("hf", "google"):
            task["init"] = _resolve(task["init"], base)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, value = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parsed


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML at `path` (default: the demo config), apply overrides, validate."""
    path = path or DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    _resolve_paths(raw, os.path.dirname(os.path.abspath(path)))
    raw = copy.deepcopy(raw)
    for override in overrides:
        apply_override(raw, override)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        source = path if not overrides else f"{path} (with --set overrides)"
        raise ConfigError(_format_error(err, source)) from None


def to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain, JSON-ready dict of a config or section (what is logged and written)."""
    return config.model_dump(mode="json")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as their string form."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
