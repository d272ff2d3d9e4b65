"""The pipeline's stages: config sections in, library calls, outputs recorded.

Each stage here is glue: it takes its own config section(s), calls the library
that does the work (`beam_jobs` for data, `bert_keras` for models), and returns
the paths and figures that the runner records in `stage.json` and MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.config import TASK_INIT_WORDS, Config, to_dict
from pipeline.contract.errors import UserError
from pipeline.contract.records import Record
from pipeline.runner import Stage, StageContext

STAGE_ORDER = ("vocab", "prepare", "pretrain", "finetune", "distill", "export")
DATASETS = "datasets"  # the stage that builds the `datasets` section's data, before every other stage
STUDENT_SUFFIX = "-student"  # the distilled student of task T is exported (and tracked) as T-student


# ---- what the stages record (stage.json "outputs") and the next ones read -------------------------
@dataclasses.dataclass
class DatasetsOutputs(Record):
    dirs: dict[str, str]  # dataset name -> its directory (`<work_dir>/datasets/<name>`)
    summary: str


@dataclasses.dataclass
class VocabOutputs(Record):
    vocab_file: str
    vocab_size: int
    stats: dict[str, Any]
    summary: str


@dataclasses.dataclass
class PrepareOutputs(Record):
    data_dir: str
    manifest: dict[str, Any]
    summary: str


@dataclasses.dataclass
class PretrainOutputs(Record):
    """What later stages read of the pretrain stage's record (it holds more: `run_pretraining`'s figures)."""

    encoder_weights: str | None
    checkpoint: str | None  # the full training state a later phase continues from
    encoder: dict[str, Any]  # the encoder's architecture (bert_keras.starting_weights.encoder_spec)
    seq_length: int  # the pretraining data's sequence length
    summary: str


@dataclasses.dataclass
class ExportOutputs(Record):
    models: dict[str, str]  # name -> SavedModel directory
    registered: dict[str, dict[str, Any] | None]  # task -> MLflow model (uri, registered name, version)
    summary: str


def _outputs(ctx: StageContext, stage: str, cls):
    return cls.from_record(ctx.upstream[stage]["outputs"], f"the {stage} stage's record")


def _datasets(cfg: Config) -> list[Stage]:
    """The data the config's `datasets` section asks for, built under the run directory. Later stages name its
    files as ${run.work_dir}/datasets/<name>/... and hash them when they run, so they need no link to this stage."""
    names = cfg.datasets.names()
    if not names:
        return []
    from beam_jobs import sotu_tasks  # plain Python, no TensorFlow: cheap at stage-building time

    def run(ctx: StageContext) -> dict[str, Any]:
        dirs = {"sotu_tasks": os.path.join(ctx.out_dir, "sotu_tasks")}
        record = sotu_tasks.build(dirs["sotu_tasks"])
        return DatasetsOutputs(dirs, f"sotu_tasks: {sotu_tasks.summary(record)}").to_record()

    source = sotu_tasks.sotu_dir()  # a one-line error when the package is missing
    inputs = [os.path.join(source, "metadata.csv"), os.path.join(source, "speeches", "*.txt")]
    section = {"datasets": to_dict(cfg.datasets), "sotu_tasks": sotu_tasks.settings()}
    return [Stage(DATASETS, run, section, inputs=inputs,
                  artifacts=lambda out: [os.path.join(d, "splits.json") for d in out["dirs"].values()])]


def _vocab(cfg: Config):
    # Continued pretraining (model.init_from) reads the checkpoint's own vocab.
    checkpoint = _checkpoint_dir(cfg.model.init_from)
    given = cfg.vocab.vocab_file or (_checkpoint_vocab(checkpoint) if checkpoint else None)

    def run(ctx: StageContext) -> dict[str, Any]:
        from bert_keras.tokenizer import TOKENIZER_JSON, VOCAB_TXT, is_tokenizer_json, load_vocab, special_ids
        from pipeline.contract.atomic import atomic_write_bytes, open_read

        # A tokenizer.json is copied under that name: the file's name says which tokenizer reads it.
        out_path = os.path.join(ctx.out_dir, TOKENIZER_JSON if given and is_tokenizer_json(given) else VOCAB_TXT)
        if given:
            tokens = load_vocab(given)
            special_ids(tokens, source=f"vocab file {given}")
            with open_read(given) as fh:  # given may be gs://, s3://, ...
                atomic_write_bytes(out_path, fh.read())
            stats: dict[str, Any] = {"source": given}
        else:
            from beam_jobs.vocab import learn_vocab

            stats = learn_vocab(cfg.data, cfg.vocab, out_path, list(cfg.prepare.beam_args))
            tokens = load_vocab(out_path)
        summary = f"{len(tokens)} tokens" + ("" if given else " learned")
        return VocabOutputs(out_path, len(tokens), stats, summary).to_record()

    inputs = [given] if given else list(cfg.data.corpus)
    section = {"vocab_file": given} if given else {"data": to_dict(cfg.data), "vocab": to_dict(cfg.vocab)}
    return Stage("vocab", run, section, inputs=inputs, artifacts=lambda out: [out["vocab_file"]])


def phase_stage(stage: str, phase: int) -> str:
    """Stage name of a pretraining phase's data or training: "pretrain", "pretrain-phase2", ..."""
    return stage if phase == 1 else f"{stage}-phase{phase}"


def stage_command(name: str) -> str:
    """The command a stage belongs to: "pretrain-phase2" -> pretrain, "finetune:sentiment" -> finetune."""
    return name.split(":", 1)[0].split("-phase", 1)[0]


def last_pretrain_stage(cfg: Config) -> str:
    return phase_stage("pretrain", len(cfg.pretraining_phases()))


def _prepare(cfg: Config) -> list[Stage]:
    return [_prepare_phase(cfg, prepare, phase) for phase, (prepare, _) in enumerate(cfg.pretraining_phases(), 1)]


def _prepare_phase(cfg: Config, prepare, phase: int) -> Stage:
    def run(ctx: StageContext) -> dict[str, Any]:
        from beam_jobs.prepare import prepare_pretraining_data

        vocab_file = _outputs(ctx, "vocab", VocabOutputs).vocab_file
        data_dir = os.path.join(ctx.out_dir, "data")
        manifest = prepare_pretraining_data(cfg.data, prepare, vocab_file, data_dir, cfg.run.seed)
        if ctx.tracker is not None:
            ctx.tracker.metrics({f"data.{k}": v for k, v in manifest.counts.items()})
            ctx.tracker.metrics({f"skipped.{k}": v for k, v in manifest.skipped.items()})
        skipped = sum(manifest.skipped.values())
        # Dynamic data is written unmasked (the trainer masks every step): its rate is the config's, not a count.
        masked = (f"masked at {prepare.masked_lm_prob:.2f} by the trainer each step" if prepare.dynamic
                  else f"masked rate {manifest.counts.get('masked_rate', 0):.3f}")
        summary = f"{manifest.num_records} instances, {masked}, {skipped} input(s) skipped"
        return PrepareOutputs(data_dir, dataclasses.asdict(manifest) | {"config": None}, summary).to_record()

    inputs = list(cfg.data.corpus) + ([prepare.lexicon] if prepare.lexicon else [])
    section = {"data": to_dict(cfg.data), "prepare": to_dict(prepare), "seed": cfg.run.seed}
    return Stage(
        phase_stage("prepare", phase),
        run,
        section,
        inputs=inputs,
        upstream=["vocab"],
        artifacts=lambda out: [os.path.join(out["data_dir"], "manifest.json")],
    )


def _pretrain(cfg: Config) -> list[Stage]:
    return [_pretrain_phase(cfg, train, phase) for phase, (_, train) in enumerate(cfg.pretraining_phases(), 1)]


def _pretrain_phase(cfg: Config, train, phase: int) -> Stage:
    data_stage = phase_stage("prepare", phase)
    previous = phase_stage("pretrain", phase - 1) if phase > 1 else None

    def run(ctx: StageContext) -> dict[str, Any]:
        from bert_keras.pretrain import run_pretraining

        vocab_size = cfg.model.vocab_size or _outputs(ctx, "vocab", VocabOutputs).vocab_size
        on_log = None
        if ctx.tracker is not None:
            on_log = lambda step, metrics: ctx.tracker.metrics(metrics, step=step)  # noqa: E731
        result = run_pretraining(
            cfg.model,
            train,
            _outputs(ctx, data_stage, PrepareOutputs).data_dir,
            ctx.out_dir,
            vocab_size,
            cfg.run.seed,
            on_log=on_log,
            vocab_file=_outputs(ctx, "vocab", VocabOutputs).vocab_file,
            init_state=_outputs(ctx, previous, PretrainOutputs).checkpoint if previous else None,
        )
        # Held-out accuracy when there is a held-out split, else the last logged training accuracy, named so.
        held = result.get("eval_mlm_accuracy")
        acc, which = (held, "held-out") if held is not None else (result.get("mlm_accuracy"), "training")
        speed = result.get("train_sequences_per_second")
        result["summary"] = " ".join(
            part
            for part in (
                f"step {result.get('step')}",
                f"{which} MLM accuracy {acc:.3f}" if acc is not None else "",
                f"{speed:.1f} seq/s" if speed else "",
            )
            if part
        )
        return result

    # User-facing key names: a change is reported as e.g. "pretrain.steps (600 -> 1200)".
    section = {"model": to_dict(cfg.model), "pretrain": to_dict(train), "run.seed": cfg.run.seed}
    # The starting checkpoint's contents, hashed like any input (a directory: every file in it).
    inputs = [CheckpointSpec.parse(cfg.model.init_from).path] if cfg.model.init_from else []
    return Stage(
        phase_stage("pretrain", phase),
        run,
        section,
        inputs=inputs if phase == 1 else [],
        upstream=["vocab", data_stage] + ([previous] if previous else []),
        resumable=True,
        artifacts=lambda out: [p for p in (out.get("loss_curves"), out.get("encoder_weights")) if p],
    )


def _checkpoint_dir(spec: str | None) -> str | None:
    """The directory of an imported checkpoint (hf:DIR, google:DIR), which brings its own vocab; else None."""
    if not spec or spec in TASK_INIT_WORDS:
        return None
    parsed = CheckpointSpec.parse(spec)
    return parsed.path if parsed.imported else None


def _checkpoint_vocab(directory: str) -> str:
    """The checkpoint's vocab.txt, or its tokenizer.json (`bert_keras.tokenizer.checkpoint_vocab`)."""
    from bert_keras.tokenizer import checkpoint_vocab

    return checkpoint_vocab(directory)


def _weights_path(init: str) -> str | None:
    """The path a task's init reads (a checkpoint directory or bertpipe weights), None for pretrained/random."""
    return None if init in TASK_INIT_WORDS else CheckpointSpec.parse(init).path


def _finetune(cfg: Config, name: str, with_pretrain: bool):
    task = cfg.finetune[name]
    pretrain = last_pretrain_stage(cfg)
    checkpoint = _checkpoint_dir(task.init)
    if task.init == "pretrained" and not with_pretrain:
        raise UserError(
            f"finetune.{name}.init is 'pretrained' but run.stages has no pretrain stage: "
            "add it, or set the task's init to random, hf:DIR or google:DIR"
        )

    def run(ctx: StageContext) -> dict[str, Any]:
        from beam_jobs.finetune_data import prepare_task_data
        from bert_keras.finetune import run_finetune

        # An imported checkpoint brings its own vocab; otherwise the run's vocab stage made it.
        vocab_file = _checkpoint_vocab(checkpoint) if checkpoint else _outputs(ctx, "vocab", VocabOutputs).vocab_file
        data_dir = os.path.join(ctx.out_dir, "data")
        if cfg.prepare.beam_args:
            print(f"finetune:{name}: task data is converted in this process (labelled sets are small); "
                  "prepare.beam_args applies to the vocab and prepare jobs only", flush=True)
        manifests = prepare_task_data(task, vocab_file, cfg.data.lowercase, data_dir, cfg.run.seed,
                                      strip_accents=cfg.data.strip_accents)
        if task.init == "pretrained":
            init = _outputs(ctx, pretrain, PretrainOutputs).encoder_weights
        else:
            init = None if task.init == "random" else task.init  # a checkpoint spec
        result = run_finetune(
            name,
            task,
            cfg.model,
            vocab_file,
            cfg.data.lowercase,
            {split: os.path.join(data_dir, split) for split in manifests},
            init,
            ctx.out_dir,
            cfg.run.seed,
            tracker=ctx.tracker,
            strip_accents=cfg.data.strip_accents,
        )
        return result.to_record()

    upstream = ([] if checkpoint else ["vocab"]) + ([pretrain] if task.init == "pretrained" else [])
    inputs = [p for p in (task.train_file, task.dev_file, task.test_file, _weights_path(task.init)) if p]
    section = {  # user-facing key names: a change is reported as e.g. "finetune.sentiment.epochs (2 -> 3)"
        f"finetune.{name}": _teacher_keys(task),
        "model": to_dict(cfg.model),
        "data.lowercase": cfg.data.lowercase,
        "data.strip_accents": cfg.data.strip_accents,
        "run.seed": cfg.run.seed,
    }
    return Stage(f"finetune:{name}", run, section, inputs=inputs, upstream=upstream, resumable=True)


def _teacher_keys(task) -> dict[str, Any]:
    """The task's keys but its distill block, which is the distill stage's: changing it keeps the teacher."""
    return {k: v for k, v in to_dict(task).items() if k != "distill"}


def _distill(cfg: Config, name: str):
    """`distill:<task>`: the task's `distill` block trains a student of the fine-tuned model (its teacher)
    on the teacher's own train / dev / test records, by the same protocol (`run_finetune` with a teacher)."""
    task = cfg.finetune[name]
    distill = task.distill
    teacher_stage = f"finetune:{name}"

    def run(ctx: StageContext) -> dict[str, Any]:
        from bert_keras.finetune import MAIN, run_finetune
        from bert_keras.task_results import FinetuneResult
        from bert_keras.task_training import SPLITS

        teacher = _outputs(ctx, teacher_stage, FinetuneResult)
        data_dir = os.path.join(os.path.dirname(teacher.paths.runs), "data")  # the finetune stage's records
        # The teacher's baselines are the student's too (same splits): not refitted.
        update = {"baselines": [], "register_name": task.register_name and task.register_name + STUDENT_SUFFIX}
        update.update({k: v for k, v in (("epochs", distill.epochs), ("learning_rate", distill.learning_rate),
                                                   ("repeats", distill.repeats))
                       if v is not None})
        student_task = task.model_copy(update=update)
        result = run_finetune(name + STUDENT_SUFFIX, student_task, cfg.model, teacher.export.vocab_file,
                              teacher.export.lowercase, {split: os.path.join(data_dir, split) for split in SPLITS},
                              distill.init, ctx.out_dir, cfg.run.seed, tracker=ctx.tracker,
                              strip_accents=teacher.export.strip_accents, teacher=teacher.export, distill=distill)
        teacher_test, student_test = teacher.test[MAIN], result.test[MAIN]
        kept = student_test.mean / teacher_test.mean if teacher_test.mean else float("nan")
        result.summary = (f"{distill.layers}-layer student: {result.summary} | teacher {100 * teacher_test.mean:.2f}% "
                          f"| kept {100 * kept:.1f}% of the teacher's test {result.metric}")
        if ctx.tracker is not None:
            ctx.tracker.metrics({f"teacher.test_{result.metric}_mean": teacher_test.mean,
                                 f"test_{result.metric}_kept": kept})
            ctx.tracker.tags({"bertpipe.summary": result.summary})
        record = result.to_record()
        record["teacher"] = {"test": teacher_test.to_record(), "layers": teacher.export.encoder["config"]["num_layers"],
                             "weights": teacher.export.weights}
        record["kept"] = kept
        return record

    section = {f"finetune.{name}.distill": to_dict(distill), "model": to_dict(cfg.model), "run.seed": cfg.run.seed}
    return Stage(f"distill:{name}", run, section, upstream=[teacher_stage], resumable=True)


def export_task_model(result, out_dir: str, tracker=None, xla: bool = False,
                      precision: str = "float32") -> tuple[str, dict[str, Any] | None]:
    """Build, write and verify the raw-text SavedModel of one fine-tuned task (a `FinetuneResult`);
    with a tracker, log it to the active MLflow run as a pyfunc model, registered under the
    task's register_name (a new version each time). Returns (SavedModel dir, MLflow model or None)."""
    from bert_keras.export_finetuned import export_finetuned

    path = export_finetuned(result.export, out_dir, compiled=xla, precision=precision)
    if tracker is None:
        return path, None
    import pandas as pd

    from pipeline.mlflow_model import SavedModelPyfunc

    example = pd.DataFrame(result.export.input_example)
    wrapper = SavedModelPyfunc(serving_threads=False)  # the pipeline's TensorFlow is running: its threads stay
    wrapper.load_context(type("Context", (), {"artifacts": {"saved_model": path}})())
    return path, tracker.saved_model(path, result.task, result.export.register_name, example,
                                     wrapper.predict(None, example))


def _export(cfg: Config, tasks: list[str], with_pretrain: bool, students: list[str]):
    """Build every task's raw-text SavedModel from what its finetune stage recorded (and each of
    `students`' from its distill stage, as `<task>-student`), and the pretrained encoder's
    embedding SavedModel from what pretraining recorded."""

    pretrain = last_pretrain_stage(cfg)

    def run(ctx: StageContext) -> dict[str, Any]:
        from bert_keras.task_results import FinetuneResult

        models: dict[str, str] = {}
        registered: dict[str, dict[str, Any] | None] = {}
        with_embedding = bool(cfg.export.embedding and with_pretrain)
        total = len(tasks) + len(students) + int(with_embedding)
        from bert_keras.export import serving_precision

        precision = serving_precision(cfg.export.precision)

        def progress(name: str) -> None:  # each SavedModel takes seconds to minutes to trace, write and verify
            print(f"export: writing {name} ({len(models) + 1} of {total}, {precision})", flush=True)

        for name in tasks:
            progress(name)
            result = _outputs(ctx, f"finetune:{name}", FinetuneResult)
            models[name], registered[name] = export_task_model(result, os.path.join(ctx.out_dir, name), ctx.tracker,
                                                               cfg.export.xla, precision)
        for name in students:
            result = _outputs(ctx, f"distill:{name}", FinetuneResult)
            student = name + STUDENT_SUFFIX
            progress(student)
            models[student], registered[student] = export_task_model(result, os.path.join(ctx.out_dir, student),
                                                                     ctx.tracker, cfg.export.xla, precision)
        if with_embedding:
            from bert_keras.export_finetuned import export_embedding

            vocab, pretrained = _outputs(ctx, "vocab", VocabOutputs), _outputs(ctx, pretrain, PretrainOutputs)
            progress("embedding")
            models["embedding"] = export_embedding(pretrained.encoder, pretrained.encoder_weights, vocab.vocab_file,
                                                   cfg.data.lowercase, pretrained.seq_length,
                                                   os.path.join(ctx.out_dir, "embedding"), cfg.data.strip_accents)
        return ExportOutputs(models, registered, f"{len(models)} SavedModel(s): {', '.join(models)}").to_record()

    upstream = ((["vocab", pretrain] if with_pretrain else []) + [f"finetune:{t}" for t in tasks]
                + [f"distill:{t}" for t in students])
    section = {"export": to_dict(cfg.export), "tasks": tasks, "students": students, "data.lowercase": cfg.data.lowercase,
               "data.strip_accents": cfg.data.strip_accents}
    return Stage("export", run, section, upstream=upstream, artifacts=lambda out: list(out["models"].values()))


def build_stages(cfg: Config, until: str | None = None) -> list[Stage]:
    """The stages of `cfg.run.stages`, in pipeline order, up to and including `until`."""
    wanted = [s for s in STAGE_ORDER if s in cfg.run.stages]
    if until is not None:
        wanted = [s for s in STAGE_ORDER[: STAGE_ORDER.index(until) + 1] if s in wanted or s == until]
    builders = {"vocab": _vocab, "prepare": _prepare, "pretrain": _pretrain}
    with_pretrain = "pretrain" in cfg.run.stages
    stages: list[Stage] = _datasets(cfg)
    for name in wanted:
        if name in builders:
            built = builders[name](cfg)
            stages += built if isinstance(built, list) else [built]
        elif name == "finetune":
            stages += [_finetune(cfg, task, with_pretrain) for task in cfg.finetune]
        elif name == "distill":
            stages += [_distill(cfg, task) for task in _distilled(cfg, cfg.finetune)]
        elif name == "export":
            tasks = cfg.export.tasks if cfg.export.tasks is not None else list(cfg.finetune)
            unknown = [t for t in tasks if t not in cfg.finetune]
            if unknown:
                raise UserError(f"export.tasks names {', '.join(unknown)}, which the finetune section does not define")
            students = _distilled(cfg, tasks) if "distill" in wanted else []
            stages.append(_export(cfg, tasks, with_pretrain, students))
    return stages


def _distilled(cfg: Config, tasks) -> list[str]:
    """The tasks among `tasks` with a `distill` block."""
    return [t for t in tasks if getattr(cfg.finetune[t], "distill", None) is not None]
