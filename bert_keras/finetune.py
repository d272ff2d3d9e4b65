"""The fine-tuning stage: train a task (`task_training.py`), report, export, track.

`run_finetune` is what `bertpipe finetune` calls after the task's data job
(`beam_jobs.finetune_data.prepare_task_data`). It trains from the given
starting weights; with `compare_random_init` it trains a second model from
random init with the same settings, so the summary shows what pretraining
bought. The main model is written as reports under `<out_dir>/reports/`, a
raw-text SavedModel (`bert_keras.export.export_task`) under
`<out_dir>/saved_model/`, and, given a `pipeline.tracking.Tracker`, logged to
the active MLflow run and registered as a pyfunc model under
`task.register_name` (a new version each run).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from bert_keras.task_training import train_task
from bert_keras.tasks import TASKS
from pipeline.contract.atomic import atomic_write_text
from pipeline.contract.config import ModelConfig, TaskConfig, to_dict


def run_finetune(name: str, task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, lowercase: bool,
                 data_dirs: dict[str, str], init: str | None, out_dir: str, seed: int, tracker=None,
                 log_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune task `name`; returns final eval metrics, paths, and a one-line "summary".

    `data_dirs`: {"train": dir, "eval": dir} written by `prepare_task_data`.
    `init`: the pretrained encoder weights file (`encoder.weights.h5` from
    `run_pretraining`, or its directory), "hf:DIR" / "google:DIR", or None /
    "random" for random init.
    """
    start = time.perf_counter()

    def forward(prefix: str):
        if tracker is None:
            return None
        return lambda step, metrics: tracker.metrics(
            {f"{prefix}{k}": v for k, v in metrics.items() if k != "step"}, step=step)

    log_fn(f"fine-tuning {name} ({task.type}) from {init or 'random init'}")
    main = train_task(task, model_cfg, vocab_file, data_dirs, init, os.path.join(out_dir, "model"), seed,
                      forward(""), log_fn)
    # Multi-worker: every worker trains (collectives), only the chief writes files and logs.
    chief = main["chief"]
    report_paths = {}
    if chief:
        report_paths = TASKS[task.type].write_reports(main["eval"], main["history"], main["evals"], main["labels"],
                                                      os.path.join(out_dir, "reports"))
    model_weights = os.path.join(out_dir, "task_model.weights.h5")
    if chief:
        main["model"].save_weights(model_weights)
    saved_model = export(main, task, vocab_file, lowercase, os.path.join(out_dir, "saved_model")) if chief else None

    random_init = None
    if task.compare_random_init and init not in (None, "", "random"):
        log_fn(f"fine-tuning {name} again from random init (compare_random_init)")
        random_init = train_task(task, model_cfg, vocab_file, data_dirs, None, os.path.join(out_dir, "random_init"),
                                 seed, forward("random_init."), log_fn)

    result: dict[str, Any] = {
        "task": name, "type": task.type, "init": init or "random",
        "metrics": main["eval"].metrics, "details": _jsonable_details(main["eval"].details),
        "best_step": main["best_step"], "final_step": main["final_step"], "stopped_early": main["stopped_early"],
        "train_seconds": round(main["train_seconds"], 2), "global_batch_size": main["global_batch_size"],
        "precision": main["precision"], "strategy": main["strategy"], "starting_weights": main["starting_weights"],
        "train_records": main["train_records"], "eval_records": main["eval_records"], "skipped": main["skipped"],
        "class_weights": main["class_weights"], "labels": main["labels"],
        "paths": {"saved_model": saved_model, "task_weights": model_weights, "reports": report_paths,
                  "checkpoints": os.path.join(out_dir, "model", "checkpoints")},
    }
    if random_init is not None:
        result["random_init"] = {"metrics": random_init["eval"].metrics, "best_step": random_init["best_step"],
                                 "train_seconds": round(random_init["train_seconds"], 2)}
    result["summary"] = summary_line(task.type, result["metrics"],
                                     random_init["eval"].metrics if random_init is not None else None)
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    if tracker is not None and chief:
        result["registered_model"] = _track(tracker, task, result, report_paths, saved_model, main)
    if chief:
        atomic_write_text(os.path.join(out_dir, "finetune_result.json"), json.dumps(result, indent=2, default=str) + "\n")
    log_fn(f"{name}: {result['summary']}")
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


# ---- export and tracking -------------------------------------------------------------------
def export(run: dict, task: TaskConfig, vocab_file: str, lowercase: bool, out_dir: str) -> str:
    from bert_keras.export import export_task

    options = TASKS[task.type].export_options(task, run["allow_null"])
    return export_task(run["model"], task.type, vocab_file, lowercase, run["labels"], task.max_seq_length, out_dir,
                       extra_assets={"task_config.json": to_dict(task)}, **options)


def input_example(run: dict, task: TaskConfig):
    """Two real eval inputs as a DataFrame with the serving signature's columns."""
    import pandas as pd

    return pd.DataFrame(TASKS[task.type].input_example(list(run["eval_examples"].values())[:2]))


def _track(tracker, task: TaskConfig, result: dict, report_paths: dict, saved_model: str, run: dict):
    tracker.metrics({f"final_{k}": v for k, v in result["metrics"].items()}, step=result["final_step"])
    if "random_init" in result:
        tracker.metrics({f"random_init.final_{k}": v for k, v in result["random_init"]["metrics"].items()})
    for path in report_paths.values():
        tracker.artifact(path, "reports")
    tracker.dict_artifact({k: v for k, v in result.items() if k != "paths"}, "finetune_result.json")
    tracker.tags({"bertpipe.task_type": task.type, "bertpipe.summary": result["summary"]})
    from pipeline.mlflow_model import SavedModelPyfunc

    example = input_example(run, task)
    wrapper = SavedModelPyfunc()
    wrapper.load_context(type("Context", (), {"artifacts": {"saved_model": saved_model}})())
    output = wrapper.predict(None, example)
    return tracker.saved_model(saved_model, "model", task.register_name, example, output)
