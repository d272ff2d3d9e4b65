"""The fine-tuning stage's library side: the evaluation protocol around `train_task`.

`run_finetune` is what `bertpipe finetune` calls after the task's data job
(`beam_jobs.finetune_data.prepare_task_data`, which writes train, dev and test).
- Starts: the task's `init`; with `compare_random_init`, random init as well.
- Repeats: each start is fine-tuned `repeats` times, seeds seed, seed+1, ...; each
  run chooses its checkpoint on dev and is scored once on test (`task_training.py`).
- Baselines (`baselines`, TF-IDF for the classification types): fit on train, their
  setting chosen on dev, scored once on test, per seed as well (`baselines.py`).
- Dev also chooses which repeat of the main start is reported in `reports/` and
  exported: the best on dev by `best_metric`, never the best on test.
The result (`FinetuneResult`) holds every run, each start's mean ± std on test and
dev, the summary line, and what the export stage needs (`ExportSpec`). Given a
`pipeline.tracking.Tracker`, metrics and reports go to the active MLflow run.

Each run writes its run.json (`RunScore`) last, in its own directory under runs/;
a rerun after a kill skips finished runs and resumes the unfinished one from its checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from bert_keras import reports
from bert_keras.starting_weights import encoder_spec
from bert_keras.task_results import BaselineRun, ExportSpec, FinetunePaths, FinetuneResult, RunScore, Spread
from bert_keras.task_training import LOWER_IS_BETTER, SPLITS, train_task
from bert_keras.tasks import TASKS
from bert_keras.tasks.base import load_examples
from pipeline.contract import atomic, schema
from pipeline.contract.config import ModelConfig, TaskConfig, to_dict

MAIN, RANDOM_INIT = "main", "random_init"
RUN_RECORD, TASK_WEIGHTS = "run.json", "task_model.weights.h5"
SHOWN = {RANDOM_INIT: "random init"}  # start -> its name in the summary line


def run_finetune(name: str, task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, lowercase: bool,
                 data_dirs: dict[str, str], init: str | None, out_dir: str, seed: int, tracker=None,
                 log_fn: Callable[[str], None] = print, strip_accents: bool | None = None, teacher=None,
                 distill=None) -> FinetuneResult:
    """Fine-tune task `name` by the protocol above; returns its typed result.

    `data_dirs`: {"train", "dev", "test"} -> directories written by `prepare_task_data`.
    `init`: the pretrained encoder weights file (`encoder.weights.h5` from
    `run_pretraining`, or its directory), "hf:DIR" / "google:DIR", or None /
    "random" for random init. With `teacher` (an `ExportSpec`) and `distill` (a `DistillConfig`)
    the runs are students of that teacher (`bert_keras.distill`), `init` their start
    (first, spread or random), and compare_random_init adds random-init students.
    """
    start = time.perf_counter()
    kind = TASKS[task.type]
    metric = kind.headline[0][0]
    starts = [(MAIN, init)]
    if task.compare_random_init and init not in (None, "", "random"):
        starts.append((RANDOM_INIT, "random" if teacher is not None else None))
    seeds = [seed + i for i in range(task.repeats)]
    runs: dict[str, list[RunScore]] = {}
    chief = True  # multi-worker: every worker trains (collectives), only the chief writes files and logs
    for label, start_init in starts:
        runs[label] = []
        for i, run_seed in enumerate(seeds):
            run_dir = os.path.join(out_dir, "runs", f"{label}-seed{run_seed}")
            log_fn(f"fine-tuning {name} ({task.type}) from {start_init or 'random init'}, seed {run_seed} "
                   f"({i + 1} of {len(seeds)})")
            prefix = ("" if label == MAIN else f"{label}.") + (f"repeat{i}." if i else "")
            score, chief = _one_run(label, task, model_cfg, vocab_file, data_dirs, start_init, run_dir, run_seed,
                                    _forward(tracker, prefix), log_fn, teacher=teacher, distill=distill)
            runs[label].append(score)
    baselines = _baselines(task, data_dirs, seeds, log_fn)
    chosen = _choose(runs[MAIN], task.best_metric)
    manifests = {split: schema.read_manifest(data_dirs[split]) for split in SPLITS}
    labels = list(manifests["train"].labels)

    test = {label: Spread.of([r.test[metric] for r in rs]) for label, rs in runs.items()}
    test.update({b: Spread.of([r.test[metric] for r in rs]) for b, rs in baselines.items()})
    dev = {label: Spread.of([r.dev[metric] for r in rs if r.dev]) for label, rs in runs.items() if rs[0].dev}
    dev.update({b: Spread.of([r.dev[metric] for r in rs]) for b, rs in baselines.items() if rs[0].dev})
    examples = {split: load_examples(data_dirs[split]) for split in SPLITS}
    allow_null = kind.allow_no_answer(ex for split in examples.values() for ex in split.values())
    export = ExportSpec(
        task_type=task.type, task=to_dict(task), labels=labels, max_seq_length=task.max_seq_length,
        options=kind.export_options(task, allow_null), encoder=chosen.encoder, dropout=model_cfg.task_dropout,
        weights=chosen.weights, vocab_file=vocab_file, lowercase=lowercase, strip_accents=strip_accents,
        register_name=task.register_name,
        input_example=kind.input_example(list(examples["test"].values())[:2]),
    )
    result = FinetuneResult(
        task=name, type=task.type, init=init or "random", metric=metric, chosen_by=chosen.chosen_by,
        runs=runs[MAIN], random_init=runs.get(RANDOM_INIT, []), baselines=baselines, test=test, dev=dev,
        chosen_seed=chosen.seed, labels=labels, records={s: m.num_records for s, m in manifests.items()},
        skipped={s: m.skipped for s, m in manifests.items()},
        paths=FinetunePaths(reports={}, runs=os.path.join(out_dir, "runs")), export=export, summary="",
        wall_seconds=0.0,
    )
    result.summary = summary_line(result)
    if chief:
        result.paths.reports = _task_reports(result, os.path.join(out_dir, "reports"))
    result.wall_seconds = round(time.perf_counter() - start, 2)
    if tracker is not None and chief:
        _track(tracker, task, result)
    if chief:
        atomic.atomic_write_text(os.path.join(out_dir, "finetune_result.json"),
                          json.dumps(result.to_record(), indent=2, default=str) + "\n")
    log_fn(f"{name}: {result.summary}")
    return result


def _forward(tracker, prefix: str):
    if tracker is None:
        return None
    return lambda step, metrics: tracker.metrics({f"{prefix}{k}": v for k, v in metrics.items() if k != "step"},
                                                 step=step)


def _one_run(label: str, task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, data_dirs: dict[str, str],
             init: str | None, run_dir: str, seed: int, on_metrics, log_fn, teacher=None,
             distill=None) -> tuple[RunScore, bool]:
    """One start and seed, trained and scored; a finished one (its run.json) is read back, not retrained.
    Returns the score and whether this worker is the chief."""
    record_path = os.path.join(run_dir, RUN_RECORD)
    if atomic.exists(record_path):
        score = RunScore.from_record(json.loads(atomic.read_text(record_path)), record_path)
        log_fn(f"seed {seed}: finished before (test {', '.join(f'{k} {v:.4g}' for k, v in score.test.items())})")
        return score, True
    run = train_task(task, model_cfg, vocab_file, data_dirs, init, run_dir, seed, on_metrics, log_fn,
                     teacher=teacher, distill=distill)
    weights = os.path.join(run_dir, TASK_WEIGHTS)
    report_paths = {}
    if run.chief:
        run.model.save_weights(weights)
        report_paths = TASKS[task.type].write_reports(run.test, run.dev, run.history, run.evals, run.labels,
                                                      os.path.join(run_dir, "reports"))
    score = RunScore.of(
        run, start=label, seed=seed, dev=run.dev.metrics if run.dev else {}, test=run.test.metrics,
        details={k: v for k, v in run.test.details.items() if k not in ("predictions", "contexts")},
        weights=weights, reports=report_paths, encoder=encoder_spec(run.model.encoder),
    )
    score.train_seconds = round(score.train_seconds, 2)
    if run.chief:
        atomic.atomic_write_text(record_path, json.dumps(score.to_record(), indent=2, default=str) + "\n")
    return score, run.chief


def _choose(runs: list[RunScore], metric: str) -> RunScore:
    """The repeat dev ranks first by best_metric (ties: the lower seed); without dev, the first seed."""
    if not runs[0].dev:
        return runs[0]
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(runs, key=lambda r: (sign * r.dev[metric], -r.seed))


def _baselines(task: TaskConfig, data_dirs: dict[str, str], seeds: list[int], log_fn) -> dict[str, list[BaselineRun]]:
    names = getattr(task, "baselines", [])
    if not names:
        return {}
    from bert_keras.baselines import tfidf_baseline

    kind = TASKS[task.type]
    labels = schema.read_manifest(data_dirs["train"]).labels
    index = {name: i for i, name in enumerate(labels)}
    splits = {}
    for split in SPLITS:
        rows = [r for _, r in sorted(load_examples(data_dirs[split]).items())]
        splits[split] = ([kind.baseline_input(r) for r in rows], [index[r["label"]] for r in rows])
    out = {}
    for name in names:  # the config admits "tfidf" only, for now
        out[name] = tfidf_baseline(*splits["train"], *splits["dev"], *splits["test"], labels, task.best_metric, seeds)
        log_fn(f"baseline {name}: test " + ", ".join(f"{r.test[kind.headline[0][0]]:.4g}" for r in out[name])
               + f" ({out[name][0].chosen_by})")
    return out


# ---- what people read -----------------------------------------------------------------------
def _shown(kind, spread: Spread) -> str:
    scale = 1 if kind.percent else 100
    if len(spread.runs) > 1:
        return f"{scale * spread.mean:.1f} ± {scale * spread.std:.1f}%"
    return f"{scale * spread.mean:.2f}%"


def summary_line(result: FinetuneResult) -> str:
    """e.g. "test accuracy 71.2 ± 1.3% (3 runs; chosen on dev) | random init 55.0 ± 2.1% | tfidf 68.4 ± 0.0%"."""
    kind = TASKS[result.type]
    shown = dict(kind.headline)[result.metric]
    n = len(result.runs)
    how = "chosen on dev" if result.runs[0].dev else "last step, no dev split"
    parts = [f"test {shown} {_shown(kind, result.test[MAIN])} ({n} run{'s' * (n > 1)}; {how})"]
    parts += [f"{SHOWN.get(start, start)} {_shown(kind, spread)}" for start, spread in result.test.items()
              if start != MAIN]
    return " | ".join(parts)


def _task_reports(result: FinetuneResult, directory: str) -> dict[str, str]:
    """The chosen run's reports, copied to `directory`, plus every run's scores (scores.json, runs.csv)."""
    atomic.makedirs(directory)
    paths = {}
    for key, path in result.chosen.reports.items():
        paths[key] = atomic.copy_file(path, os.path.join(directory, os.path.basename(path)))
    rows = [{"start": r.start, "seed": r.seed, **{f"dev_{k}": v for k, v in r.dev.items()},
             **{f"test_{k}": v for k, v in r.test.items()}} for r in result.runs + result.random_init]
    rows += [{"start": name, "seed": r.seed, **{f"dev_{k}": v for k, v in r.dev.items()},
              **{f"test_{k}": v for k, v in r.test.items()}} for name, rs in result.baselines.items() for r in rs]
    columns = sorted({k for row in rows for k in row} - {"start", "seed"})
    paths["runs_csv"] = reports.write_runs_table([{"start": r["start"], "seed": r["seed"],
                                                   **{c: r.get(c, "") for c in columns}} for r in rows],
                                                 os.path.join(directory, "runs.csv"))
    paths["scores"] = os.path.join(directory, "scores.json")
    scores = {"summary": result.summary, "metric": result.metric, "chosen_by": result.chosen_by,
              "chosen_seed": result.chosen_seed, "test": result.to_record()["test"], "dev": result.to_record()["dev"]}
    atomic.atomic_write_text(paths["scores"], json.dumps(scores, indent=2) + "\n")
    return paths


def _track(tracker, task: TaskConfig, result: FinetuneResult) -> None:
    """Per run: dev_* and test_* at step = repeat index; per start: the headline's mean and std."""
    for prefix, rs in (("", result.runs), (f"{RANDOM_INIT}.", result.random_init),
                       *((f"{b}.", rs) for b, rs in result.baselines.items())):
        for i, r in enumerate(rs):
            tracker.metrics({**{f"{prefix}dev_{k}": v for k, v in r.dev.items()},
                             **{f"{prefix}test_{k}": v for k, v in r.test.items()}}, step=i)
    for start, spread in result.test.items():
        prefix = "" if start == MAIN else f"{start}."
        tracker.metrics({f"{prefix}test_{result.metric}_mean": spread.mean, f"{prefix}test_{result.metric}_std": spread.std})
    for path in result.paths.reports.values():
        tracker.artifact(path, "reports")
    tracker.dict_artifact(result.to_record(), "finetune_result.json")
    tracker.tags({"bertpipe.task_type": task.type, "bertpipe.summary": result.summary,
                  "bertpipe.chosen_by": result.chosen_by})
