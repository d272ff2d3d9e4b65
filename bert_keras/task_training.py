"""One fine-tuning run: a task's records + starting weights -> a trained, evaluated model.

`train_task` wires the pieces: strategy and precision (`distribute.py`), the
task records (`data.py`, packing for short classification rows), the task model
and loss (`tasks.py`), AdamW with warmup (`optimization.py`) and the one
training loop (`trainer.py`). Around the trainer's evaluation hook it adds what
Hugging Face Trainer users expect: evaluation every N steps or once per epoch,
keeping the best weights by `best_metric` (restored at the end), and early
stopping after `early_stopping_patience` evaluations without improvement.
Reports, export and MLflow are the stage's business (`finetune.py`).

Rerunning the same call resumes from the latest checkpoint (and from the best
weights / early-stopping state in `best.json`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import keras
import numpy as np

from bert_keras import data, distribute, packing
from bert_keras.evaluate import EvalResult, evaluate_classification, evaluate_qa, load_qa_examples
from bert_keras.optimization import build_optimizer
from bert_keras.starting_weights import apply_init, build_encoder_for
from bert_keras.tasks import balanced_class_weights, build_task_model, loss_for
from bert_keras.tokenizer import load_vocab
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_write_text
from pipeline.contract.config import ModelConfig, TaskConfig
from pipeline.contract.errors import ConfigError, ContractError, UserError

KINDS = {"classification": schema.CLASSIFICATION, "pair": schema.CLASSIFICATION,
         "qa": schema.QUESTION_ANSWERING, "long_document": schema.LONG_DOCUMENT}
BEST_WEIGHTS, BEST_STATE, EVAL_HISTORY = "best.weights.h5", "best.json", "eval_history.jsonl"
LOWER_IS_BETTER = ("loss",)
HEADLINE = {"qa": ("f1", "exact_match")}  # task type -> metrics quoted in the summary; default accuracy, macro_f1


class _EarlyStop(Exception):
    """Raised from the evaluation hook to end training early (the trainer has no stop flag)."""


# ---- data ---------------------------------------------------------------------------
def _label_counts(data_dir: str, manifest, num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for batch in data.make_dataset(data_dir, manifest, which="all", batch_size=1024, training=False):
        np.add.at(counts, batch[schema.LABEL].numpy().reshape(-1), 1)
    return counts


def _instances_per_row(ds, batches: int = 4) -> float:
    rows = real = 0
    for batch in ds.take(batches):
        weights = batch[schema.CLS_WEIGHTS].numpy()
        rows += weights.shape[0]
        real += float(weights.sum())
    return real / max(rows, 1)


def _metric_name(task: TaskConfig) -> str:
    name = task.best_metric.removeprefix("eval_")
    if task.type == "qa" and name == "accuracy":
        return "f1"  # the default best_metric means "the task's main score"
    known = ("f1", "exact_match", "loss") if task.type == "qa" else ("accuracy", "macro_f1", "loss")
    if name not in known:
        raise ConfigError(f"best_metric {task.best_metric!r} is not computed for {task.type} tasks; use one of {', '.join(known)}")
    return name


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


# ---- one training run ------------------------------------------------------------------
def train_task(task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, data_dirs: dict[str, str],
               init: str | None, out_dir: str, seed: int, on_metrics: Callable[[int, dict], None] | None = None,
               log_fn: Callable[[str], None] = print) -> dict:
    """Train and evaluate one model; returns metrics, details, paths and the model itself ("model")."""
    kind = KINDS[task.type]
    vocab = load_vocab(vocab_file)
    manifests = {}
    for split in ("train", "eval"):
        if split not in data_dirs:
            raise ContractError(f"fine-tuning data for split {split!r} missing: run the data step first")
        manifests[split] = data.open_manifest(data_dirs[split], vocab_size=len(vocab), kinds=(kind,),
                                              vocab_file=vocab_file)
    train_m, eval_m = manifests["train"], manifests["eval"]
    for split, m in manifests.items():
        if m.num_records == 0:
            skipped = ", ".join(f"{k} {v}" for k, v in m.skipped.items()) or "none"
            raise UserError(f"task data in {data_dirs[split]} has no {split} records (skipped: {skipped}): "
                            "check the task's files and fields")
    labels = list(train_m.labels)
    if eval_m.labels != train_m.labels:
        raise ContractError(f"train and eval data of this task have different label sets ({labels} vs {eval_m.labels})")
    metric = _metric_name(task)

    strategy = distribute.choose_strategy(task)
    previous_policy = keras.mixed_precision.global_policy().name
    policy = distribute.set_precision(distribute.resolve_precision(task.precision, strategy))
    global_batch = distribute.global_batch_size(task.batch_size, strategy, task.accumulation_steps)
    log_fn(distribute.describe(strategy, task.batch_size, task.accumulation_steps, policy))
    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)

    class_weights = None
    if task.type != "qa":
        counts = _label_counts(data_dirs["train"], train_m, len(labels))
        if (counts > 0).sum() < 2:
            raise UserError(f"training data of this task holds only one class ({labels[int(counts.argmax())]}): "
                            "a classifier needs at least two")
        if task.class_weights == "balanced":
            class_weights = balanced_class_weights(counts)
            log_fn("class weights: " + ", ".join(f"{n} {w:.3g}" for n, w in zip(labels, class_weights, strict=True)))

    pack = None
    if task.packing and task.type in ("classification", "pair"):
        def pack(rows):
            return packing.pack_dataset(rows, seq_length=train_m.seq_length, max_instances=task.pack_max_instances,
                                        seed=seed)
    per_row = 1.0
    if pack is not None:
        per_row = _instances_per_row(data.make_dataset(data_dirs["train"], train_m, which="all",
                                                       batch_size=task.batch_size, training=True, seed=seed, pack=pack))
    steps_per_epoch = max(1, math.ceil(train_m.num_records / per_row / global_batch))
    total = max(1, round(task.epochs * steps_per_epoch))
    eval_every = task.eval_every or steps_per_epoch

    with strategy.scope():
        encoder, pending = build_encoder_for(init, model_cfg, len(vocab))
        model = build_task_model(task.type, encoder, len(labels), task.pooling, model_cfg.dropout)
        eval_ds = data.make_dataset(data_dirs["eval"], eval_m, which="all", batch_size=task.eval_batch_size,
                                    training=False, deterministic=True, drop_remainder=False)
        model(next(iter(eval_ds)), training=False)  # build every layer before loading / optimizer creation
        loaded = apply_init(model, encoder, init, pending)
        optimizer = build_optimizer(task, total, model.trainable_variables, loss_scale=policy == "mixed_float16")
    log_fn(f"starting weights: {loaded}; {total} steps ({steps_per_epoch} per epoch), evaluation every {eval_every}")

    allow_null = False
    if task.type == "qa":
        examples = load_qa_examples(data_dirs["eval"])
        allow_null = any(ex.get("is_impossible") for ex in examples.values()) or any(
            ex.get("is_impossible") for ex in load_qa_examples(data_dirs["train"]).values())

        def run_eval() -> EvalResult:
            return evaluate_qa(model, eval_ds, examples, allow_null)
    else:
        def run_eval() -> EvalResult:
            return evaluate_classification(model, eval_ds, labels, vocab)

    trainer = Trainer(model, loss_for(task.type, class_weights), optimizer, strategy, out_dir,
                      LoopSettings.from_config(task), on_log=on_metrics, log_fn=log_fn)
    restored = trainer.restore()
    state_path, best_path = os.path.join(out_dir, BEST_STATE), os.path.join(out_dir, BEST_WEIGHTS)
    state = {"metric": metric, "best": None, "best_step": None, "bad_evals": 0, "stopped_at": None}
    if restored and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as fh:
            state.update(json.load(fh))
    evals = _read_evals(os.path.join(out_dir, EVAL_HISTORY), restored, trainer.chief)
    cache: dict[str, EvalResult] = {}

    def evaluate_now() -> dict:
        step = int(trainer.step.numpy())
        result = run_eval()
        record = {"step": step, "epoch": round(step / steps_per_epoch, 3), **result.metrics}
        evals.append(record)
        if trainer.chief:
            with open(os.path.join(out_dir, EVAL_HISTORY), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        value = result.metrics[metric]
        if _better(metric, value, state["best"]):
            state.update(best=value, best_step=step, bad_evals=0)
            cache["best"] = result
            if trainer.chief:
                model.save_weights(best_path)
        else:
            state["bad_evals"] += 1
        if trainer.chief:
            atomic_write_text(state_path, json.dumps(state) + "\n")
        return {**result.metrics, "epoch": record["epoch"]}

    def eval_hook() -> dict:
        out = evaluate_now()
        if task.early_stopping_patience and state["bad_evals"] >= task.early_stopping_patience:
            state["stopped_at"] = int(trainer.step.numpy())
            if trainer.chief:
                atomic_write_text(state_path, json.dumps(state) + "\n")
            raise _EarlyStop
        return out

    start = time.perf_counter()
    steps = state["stopped_at"] or total
    try:
        # The same seed on every resume: the checkpoint holds the input's position in it.
        result = trainer.fit(lambda ctx: _train_ds(data_dirs["train"], train_m, task, seed, ctx, pack),
                             steps, rows_per_step=global_batch, eval_fn=eval_hook, eval_every=eval_every)
        final_step, history = result.step, result.history
    except _EarlyStop:
        trainer.save()
        final_step = state["stopped_at"]
        history = _read_jsonl(os.path.join(out_dir, "history.jsonl"))
        log_fn(f"early stopping at step {final_step}: no {metric} improvement in "
               f"{task.early_stopping_patience} evaluations (best {state['best']:.4g} at step {state['best_step']})")
    seconds = time.perf_counter() - start
    if not evals or evals[-1]["step"] != final_step:
        metrics = {f"eval_{k}": v for k, v in evaluate_now().items()}
        if on_metrics is not None and trainer.chief:
            on_metrics(final_step, metrics)
    if os.path.exists(best_path) and state["best_step"] != final_step:
        model.load_weights(best_path)  # keep the best, as measured by best_metric
        log_fn(f"restored the best weights (step {state['best_step']}, {metric} {state['best']:.4g})")
    best = cache.get("best") or run_eval()  # after a resume the best result is recomputed from its weights
    trainer.close()
    distribute.set_precision(previous_policy)  # don't leak the policy into later models of this process
    return {
        "model": model, "labels": labels, "eval": best, "history": history, "evals": evals,
        "best_step": state["best_step"], "final_step": final_step, "stopped_early": state["stopped_at"] is not None,
        "train_seconds": seconds, "steps_per_epoch": steps_per_epoch, "global_batch_size": global_batch,
        "precision": policy, "strategy": type(strategy).__name__, "starting_weights": loaded,
        "train_records": train_m.num_records, "eval_records": eval_m.num_records,
        "skipped": {"train": train_m.skipped, "eval": eval_m.skipped},
        "allow_null": allow_null, "chief": trainer.chief,
        "class_weights": None if class_weights is None else dict(zip(labels, map(float, class_weights), strict=True)),
    }


def _train_ds(data_dir, manifest, task: TaskConfig, seed: int, input_context, pack):
    batch = task.batch_size * task.accumulation_steps
    return data.make_dataset(data_dir, manifest, which="all", batch_size=batch, training=True, seed=seed,
                             input_context=input_context, pack=pack)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip().endswith("}")]


def _read_evals(path: str, restored: int, chief: bool) -> list[dict]:
    """Evaluations up to the restored step (later ones belong to a killed run)."""
    rows = [r for r in _read_jsonl(path) if r["step"] <= restored]
    if chief:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
