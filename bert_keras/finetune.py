"""The fine-tuning stage's library side: train a task (`task_training.py`), report, track.

`run_finetune` is what `bertpipe finetune` calls after the task's data job
(`beam_jobs.finetune_data.prepare_task_data`). It trains from the given
starting weights; with `compare_random_init` it trains a second model from
random init with the same settings, so the summary shows what pretraining
bought. The main model's reports go under `<out_dir>/reports/`, its weights to
`<out_dir>/task_model.weights.h5`, and what the export stage needs to rebuild
and export it into the result (`ExportSpec`); given a `pipeline.tracking.Tracker`,
metrics and reports are logged to the active MLflow run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from bert_keras.starting_weights import encoder_spec
from bert_keras.task_results import ExportSpec, FinetunePaths, FinetuneResult, Scores
from bert_keras.task_training import train_task
from bert_keras.tasks import TASKS
from pipeline.contract.atomic import atomic_write_text
from pipeline.contract.config import ModelConfig, TaskConfig, to_dict


def run_finetune(name: str, task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, lowercase: bool,
                 data_dirs: dict[str, str], init: str | None, out_dir: str, seed: int, tracker=None,
                 log_fn: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune task `name`; returns its typed result (scores, paths, a one-line summary).

    `data_dirs`: {"train": dir, "eval": dir} written by `prepare_task_data`.
    `init`: the pretrained encoder weights file (`encoder.weights.h5` from
    `run_pretraining`, or its directory), "hf:DIR" / "google:DIR", or None /
    "random" for random init.
    """
    start = time.perf_counter()
    kind = TASKS[task.type]

    def forward(prefix: str):
        if tracker is None:
            return None
        return lambda step, metrics: tracker.metrics(
            {f"{prefix}{k}": v for k, v in metrics.items() if k != "step"}, step=step)

    log_fn(f"fine-tuning {name} ({task.type}) from {init or 'random init'}")
    main = train_task(task, model_cfg, vocab_file, data_dirs, init, os.path.join(out_dir, "model"), seed,
                      forward(""), log_fn)
    # Multi-worker: every worker trains (collectives), only the chief writes files and logs.
    chief = main.chief
    report_paths = {}
    if chief:
        report_paths = kind.write_reports(main.eval, main.history, main.evals, main.labels,
                                          os.path.join(out_dir, "reports"))
    model_weights = os.path.join(out_dir, "task_model.weights.h5")
    if chief:
        main.model.save_weights(model_weights)
    export = ExportSpec(
        task_type=task.type, task=to_dict(task), labels=main.labels, max_seq_length=task.max_seq_length,
        options=kind.export_options(task, main.allow_null), encoder=encoder_spec(main.model.encoder),
        dropout=model_cfg.dropout, weights=model_weights, vocab_file=vocab_file, lowercase=lowercase,
        register_name=task.register_name, input_example=kind.input_example(list(main.examples.values())[:2]),
    )

    random_init = None
    if task.compare_random_init and init not in (None, "", "random"):
        log_fn(f"fine-tuning {name} again from random init (compare_random_init)")
        run = train_task(task, model_cfg, vocab_file, data_dirs, None, os.path.join(out_dir, "random_init"),
                         seed, forward("random_init."), log_fn)
        random_init = Scores(run.eval.metrics, run.best_step, round(run.train_seconds, 2))

    result = FinetuneResult(
        task=name, type=task.type, init=init or "random", metrics=main.eval.metrics,
        details=_jsonable_details(main.eval.details), best_step=main.best_step, final_step=main.final_step,
        stopped_early=main.stopped_early, train_seconds=round(main.train_seconds, 2),
        global_batch_size=main.global_batch_size, precision=main.precision, strategy=main.strategy,
        starting_weights=main.starting_weights, records=main.records, skipped=main.skipped,
        class_weights=main.class_weights, labels=main.labels,
        paths=FinetunePaths(model_weights, report_paths, os.path.join(out_dir, "model", "checkpoints")), export=export,
        summary=summary_line(task.type, main.eval.metrics, random_init.metrics if random_init else None),
        wall_seconds=0.0, random_init=random_init,
    )
    result.wall_seconds = round(time.perf_counter() - start, 2)
    if tracker is not None and chief:
        _track(tracker, task, result)
    if chief:
        atomic_write_text(os.path.join(out_dir, "finetune_result.json"),
                          json.dumps(result.to_record(), indent=2, default=str) + "\n")
    log_fn(f"{name}: {result.summary}")
    return result


def headline(task_type: str, metrics: dict) -> list[tuple[str, float]]:
    """(shown name, value in percent) of the type's headline metrics."""
    kind = TASKS[task_type]
    return [(shown, metrics[key] * (1 if kind.percent else 100)) for key, shown in kind.headline]


def summary_line(task_type: str, metrics: dict, random_metrics: dict | None = None) -> str:
    """e.g. "accuracy 84.46%, macro F1 84.40% (random init: accuracy 70.12%)"."""
    first = headline(task_type, metrics)
    line = ", ".join(f"{k} {v:.2f}%" for k, v in first)
    if random_metrics is not None:
        key, value = headline(task_type, random_metrics)[0]
        line += f" (random init: {key} {value:.2f}%)"
    return line


def _jsonable_details(details: dict) -> dict:
    return {k: v for k, v in details.items() if k not in ("predictions", "contexts")}


# ---- tracking ---------------------------------------------------------------------------
def _track(tracker, task: TaskConfig, result: FinetuneResult) -> None:
    tracker.metrics({f"final_{k}": v for k, v in result.metrics.items()}, step=result.final_step)
    if result.random_init is not None:
        tracker.metrics({f"random_init.final_{k}": v for k, v in result.random_init.metrics.items()})
    for path in result.paths.reports.values():
        tracker.artifact(path, "reports")
    tracker.dict_artifact({k: v for k, v in result.to_record().items() if k != "paths"}, "finetune_result.json")
    tracker.tags({"bertpipe.task_type": task.type, "bertpipe.summary": result.summary})
