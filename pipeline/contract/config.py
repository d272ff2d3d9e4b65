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

from pipeline.contract import masking
from pipeline.contract.errors import ConfigError
from pipeline.contract.normalization import Normalization

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# An editable install (the README's) finds the demo next to the package; an installed
# wheel (the Docker image) finds it in the working directory.
DEFAULT_CONFIG = next(
    (p for p in (os.path.join(REPO_ROOT, "configs", "demo.yaml"), os.path.join("configs", "demo.yaml")) if os.path.exists(p)),
    os.path.join(REPO_ROOT, "configs", "demo.yaml"),
)


MASKING_MODES = masking.MODES  # named once, in pipeline/contract/masking.py


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    work_dir: str = "runs/demo"  # every stage writes below this directory
    seed: int = 0
    tracking_uri: str | None = None  # default: sqlite:///<work_dir>/mlflow.db; MLFLOW_TRACKING_URI wins
    experiment: str = "bertpipe"
    stages: list[Literal["vocab", "prepare", "pretrain", "finetune", "export"]] = Field(
        default_factory=lambda: ["vocab", "prepare", "pretrain", "finetune", "export"]
    )


class DataConfig(_Section):
    corpus: list[str] = Field(default_factory=list)  # files or glob patterns (.txt, .gz, .jsonl)
    format: Literal["auto", "text", "jsonl"] = "auto"  # auto: by file extension
    text_field: str = "text"  # JSONL field holding a document's text
    documents: Literal["file", "blank_line"] = "blank_line"  # what one text document is
    lowercase: bool = True
    strip_accents: bool | None = None  # None: the same as lowercase (BERT's rule)
    max_document_chars: int = Field(5_000_000, gt=0)  # longer documents are skipped and counted

    @property
    def normalization(self) -> Normalization:
        """What every tokenizer and the vocab job do to the text (pipeline/contract/normalization.py)."""
        return Normalization.of(self.lowercase, self.strip_accents)

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VocabConfig(_Section):
    vocab_file: str | None = None  # use this vocab (e.g. bert-base-uncased) instead of learning one
    size: int = Field(8000, ge=100)  # target size of a learned vocab
    num_unused: int = Field(10, ge=0)  # reserved [unusedN] slots for later domain tokens
    max_token_length: int = Field(50, ge=1)
    lower_threshold: int = Field(1, ge=1)  # learner: lowest word count considered
    num_iterations: int = Field(4, ge=1)


class PrepareConfig(_Section):
    max_seq_length: int = Field(128, ge=8)
    # None: what masked_lm_prob needs (masking.default_max_predictions, 20 for 128 x 0.15), filled in on load
    max_predictions_per_seq: int | None = Field(None, ge=1)
    masked_lm_prob: float = Field(0.15, gt=0, lt=1)
    short_seq_prob: float = Field(0.1, ge=0, le=1)
    dupe_factor: int = Field(1, ge=1)  # copies of each instance, each with a different mask
    masking: Literal[MASKING_MODES] = "whole_word"
    max_ngram: int = Field(3, ge=1)  # span masking: spans of 1..max_ngram words
    lexicon: str | None = None  # entity masking: one entity or phrase a line
    dynamic: bool = False  # write unmasked rows; the trainer masks per step
    num_shards: int = Field(4, ge=1)
    compression: Literal["none", "gzip"] = "none"
    beam_args: list[str] = Field(default_factory=list)  # standard Beam options, e.g. --runner=DataflowRunner

    @model_validator(mode="before")
    @classmethod
    def _default_predictions(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("max_predictions_per_seq") is None:
            fields = cls.model_fields
            seq = raw.get("max_seq_length", fields["max_seq_length"].default)
            rate = raw.get("masked_lm_prob", fields["masked_lm_prob"].default)
            try:
                raw = {**raw, "max_predictions_per_seq": masking.default_max_predictions(int(seq), float(rate))}
            except (TypeError, ValueError):
                pass  # the field checks name the bad value
        return raw

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.max_predictions_per_seq >= self.max_seq_length:
            raise ValueError(
                f"max_predictions_per_seq ({self.max_predictions_per_seq}) must be below max_seq_length ({self.max_seq_length})"
            )
        masking.check_lexicon(self.masking, self.lexicon)
        return self


class ModelConfig(_Section):
    vocab_size: int | None = None  # None: the size of the vocab file
    hidden_size: int = Field(256, ge=1)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(1024, ge=1)
    max_position_embeddings: int = Field(512, ge=1)
    type_vocab_size: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    initializer_range: float = Field(0.02, gt=0)
    init_from: str | None = None  # hf:DIR, google:DIR, or a bertpipe checkpoint directory

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class TrainConfig(_Section):
    """Options shared by pretraining and every fine-tuning task."""

    batch_size: int = Field(32, ge=1)  # per replica; global = batch x replicas x accumulation
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)  # used when warmup_steps is not set
    schedule: Literal["linear", "polynomial", "constant"] = "linear"
    optimizer: Literal["adamw", "lamb"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)  # never applied to LayerNorm and biases
    clip_norm: float | None = Field(1.0, gt=0)
    accumulation_steps: int = Field(1, ge=1)
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = "auto"
    jit_compile: bool = False  # XLA; measured slower for bf16 on CPU, so off by default
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    tpu: str | None = None  # TPU name or grpc address for TPUStrategy
    packing: bool = True  # several short instances per row
    pack_max_instances: int = Field(8, ge=1)  # packing: most instances sharing one row
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)


class PretrainConfig(TrainConfig):
    steps: int = Field(1000, ge=1)
    eval_steps: int = Field(20, ge=0)  # batches of held-out data for the final MLM accuracy


class TaskConfig(TrainConfig):
    type: Literal["classification", "pair", "qa", "long_document"]
    train_file: str
    eval_file: str | None = None  # None: split eval_fraction off train_file
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    split_field: str | None = None  # rows with the same value never straddle train and eval
    text_field: str = "text"
    text_b_field: str = "text_b"  # pair tasks
    label_field: str = "label"
    labels: list[str] | None = None  # None: sorted distinct labels of the training file
    class_weights: Literal["none", "balanced"] = "none"
    max_seq_length: int = Field(128, ge=8)
    doc_stride: int = Field(64, ge=1)  # qa and long_document windows
    max_query_length: int = Field(32, ge=1)
    max_chunks: int = Field(8, ge=1)  # long_document: windows kept per document
    pooling: Literal["mean", "max", "attention"] = "attention"
    epochs: float = Field(2, gt=0)
    eval_every: int | None = Field(None, ge=1)  # steps; None = once per epoch
    early_stopping_patience: int | None = Field(None, ge=1)
    best_metric: str = "accuracy"
    init: str = "pretrained"  # pretrained (this run's pretrain stage), random, hf:DIR, google:DIR
    compare_random_init: bool = False  # also train from random init and report both
    register_name: str | None = None  # MLflow Model Registry name
    learning_rate: float = Field(5e-5, gt=0)
    packing: bool = False

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.type in ("qa", "long_document") and self.doc_stride >= self.max_seq_length:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be below max_seq_length ({self.max_seq_length})")
        if self.type == "qa" and self.max_query_length >= self.max_seq_length - 3:
            raise ValueError("max_query_length must leave room for the context in max_seq_length")
        return self


class ExportConfig(_Section):
    tasks: list[str] | None = None  # None: every fine-tuned task
    embedding: bool = True  # add the pooled / mean-pooled embedding signature


class Config(_Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    vocab: VocabConfig = VocabConfig()
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: dict[str, TaskConfig] = Field(default_factory=dict)
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
