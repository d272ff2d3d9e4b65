"""One fine-tuning run: a task's records + starting weights -> a trained model, chosen on dev, scored on test.

`train_task` wires the pieces: strategy and precision (`distribute.py`), the
task records (`data.py`, packing for short classification rows), the task type's
model, loss and evaluation (`bert_keras.tasks`), AdamW with warmup
(`optimization.py`) and the one training loop (`trainer.py`). Around the
trainer's evaluation hook it adds what Hugging Face Trainer users expect, on the
dev split only: evaluation every N steps or once per epoch, keeping the best
weights by `best_metric` (restored at the end), and early stopping after
`early_stopping_patience` evaluations without improvement. Without a dev split
(`dev_fraction: 0`) the last step's weights are kept. Then, once, the kept
weights are scored on test. Repeats, baselines, reports and MLflow are
`finetune.py`'s business.

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
from bert_keras.evaluate import EvalResult
from bert_keras.optimization import build_optimizer
from bert_keras.starting_weights import apply_init, build_encoder_for
from bert_keras.task_models import balanced_class_weights
from bert_keras.task_results import TaskRun
from bert_keras.tasks import TASKS, EvalContext
from bert_keras.tasks.base import load_examples
from bert_keras.tokenizer import load_vocab
from bert_keras.trainer import LoopSettings, Trainer, read_step_log
from pipeline.contract import atomic, schema
from pipeline.contract.config import ModelConfig, TaskConfig
from pipeline.contract.errors import ContractError, UserError

SPLITS = ("train", "dev", "test")  # what beam_jobs.finetune_data writes
BEST_WEIGHTS, BEST_STATE, EVAL_HISTORY = "best.weights.h5", "best.json", "eval_history.jsonl"
LOWER_IS_BETTER = ("loss",)


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


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


# ---- one training run ------------------------------------------------------------------
@distribute.restores_precision
def train_task(task: TaskConfig, model_cfg: ModelConfig, vocab_file: str, data_dirs: dict[str, str],
               init: str | None, out_dir: str, seed: int, on_metrics: Callable[[int, dict], None] | None = None,
               log_fn: Callable[[str], None] = print, teacher=None, distill=None) -> TaskRun:
    """Train and evaluate one model; returns the run with the trained model in it.

    With `teacher` (the fine-tuned model's `ExportSpec`) and `distill` (its `DistillConfig`), the
    model is a smaller student trained on the teacher's soft targets and the labels
    (`bert_keras.distill`); `init` is then the student's start (first, spread or random)."""
    kind = TASKS[task.type]
    vocab = load_vocab(vocab_file)
    use_dev = task.dev_fraction > 0
    manifests = {}
    for split in SPLITS:
        if split not in data_dirs:
            raise ContractError(f"fine-tuning data for split {split!r} missing: rerun the task's data step")
        manifests[split] = data.open_manifest(data_dirs[split], vocab_size=len(vocab), kinds=(kind.record_kind,),
                                              vocab_file=vocab_file)
    train_m = manifests["train"]
    for split, m in manifests.items():
        if m.num_records == 0 and (split != "dev" or use_dev):
            skipped = ", ".join(f"{k} {v}" for k, v in m.skipped.items()) or "none"
            hint = " or raise dev_fraction" if split == "dev" else ""
            raise UserError(f"task data in {data_dirs[split]} has no {split} records (skipped: {skipped}): "
                            f"check the task's files and fields{hint}")
    labels = list(train_m.labels)
    for split, m in manifests.items():
        if m.labels != train_m.labels:
            raise ContractError(f"train and {split} data of this task have different label sets ({labels} vs {m.labels})")
    metric = task.best_metric  # validated against the type's metrics by the config

    strategy = distribute.choose_strategy(task)
    policy = distribute.set_precision(distribute.resolve_precision(task.precision, strategy))
    global_batch = distribute.global_batch_size(task.batch_size, strategy, task.accumulation_steps)
    log_fn(distribute.describe(strategy, task.batch_size, task.accumulation_steps, policy))
    atomic.makedirs(out_dir)
    keras.utils.set_random_seed(seed)

    class_weights = None
    if kind.has_labels:
        counts = _label_counts(data_dirs["train"], train_m, len(labels))
        if (counts > 0).sum() < 2:
            raise UserError(f"training data of this task holds only one class ({labels[int(counts.argmax())]}): "
                            "a classifier needs at least two")
        if task.class_weights == "balanced":
            class_weights = balanced_class_weights(counts)
            log_fn("class weights: " + ", ".join(f"{n} {w:.3g}" for n, w in zip(labels, class_weights, strict=True)))

    pack = None
    if task.packing and kind.record_kind == schema.CLASSIFICATION:  # rows of one [CLS] instance can share a row
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

    def split_ds(split: str):
        return data.make_dataset(data_dirs[split], manifests[split], which="all", batch_size=task.eval_batch_size,
                                 training=False, deterministic=True, drop_remainder=False)

    loss_fn = kind.loss(class_weights)
    with strategy.scope():
        fused_kernels = distribute.use_fused_kernels(task.kernels, strategy)
        sample = next(iter(split_ds("train")))
        if teacher is None:
            encoder, pending = build_encoder_for(init, model_cfg, len(vocab), fused_kernels=fused_kernels)
            model = kind.build_model(task, encoder, len(labels), model_cfg.task_dropout)
            model(sample, training=False)  # build every layer before loading / optimizer creation
            loaded = apply_init(model, encoder, init, pending)
            trained = model
        else:
            from bert_keras.distill import build_student, distillation_loss

            model, trained, loaded = build_student(kind, task, teacher, distill, init, len(labels), model_cfg.task_dropout,
                                                   sample, fused_kernels=fused_kernels)
            loss_fn = distillation_loss(loss_fn, distill.temperature, distill.alpha)
        optimizer = build_optimizer(task, total, model.trainable_variables, loss_scale=policy == "mixed_float16")
    dev_words = f"dev evaluation every {eval_every}" if use_dev else "no dev split: the last step is kept"
    log_fn(f"starting weights: {loaded}; {total} steps ({steps_per_epoch} per epoch), {dev_words}")

    examples = {split: load_examples(data_dirs[split]) for split in SPLITS}
    allow_null = kind.allow_no_answer(ex for split in examples.values() for ex in split.values())
    dev_ds = split_ds("dev") if use_dev else None
    dev_ctx = EvalContext(labels, vocab, examples["dev"], allow_null)

    def run_eval() -> EvalResult:  # dev only: the test split is scored once, below, after the choice
        return kind.evaluate(model, dev_ds, dev_ctx)

    trainer = Trainer(trained, loss_fn, optimizer, strategy, out_dir,
                      LoopSettings.from_config(task), on_log=on_metrics, log_fn=log_fn)
    restored = trainer.restore()
    state_path, best_path = os.path.join(out_dir, BEST_STATE), os.path.join(out_dir, BEST_WEIGHTS)
    state = {"metric": metric, "best": None, "best_step": None, "bad_evals": 0, "stopped_at": None}
    if restored and atomic.exists(state_path):
        state.update(json.loads(atomic.read_text(state_path)))
    evals = read_step_log(os.path.join(out_dir, EVAL_HISTORY), restored, trainer.chief)
    cache: dict[str, EvalResult] = {}

    def evaluate_now() -> dict:
        step = int(trainer.step.numpy())
        result = run_eval()
        record = {"step": step, "epoch": round(step / steps_per_epoch, 3), "split": "dev", **result.metrics}
        evals.append(record)
        if trainer.chief:
            atomic.append_text(os.path.join(out_dir, EVAL_HISTORY), json.dumps(record) + "\n")
        value = result.metrics[metric]
        if _better(metric, value, state["best"]):
            state.update(best=value, best_step=step, bad_evals=0)
            cache["best"] = result
            if trainer.chief:
                model.save_weights(best_path)
        else:
            state["bad_evals"] += 1
        if trainer.chief:
            atomic.atomic_write_text(state_path, json.dumps(state) + "\n")
        return {**result.metrics, "epoch": record["epoch"]}

    def eval_hook() -> dict:
        out = evaluate_now()
        if task.early_stopping_patience and state["bad_evals"] >= task.early_stopping_patience:
            state["stopped_at"] = int(trainer.step.numpy())
            if trainer.chief:
                atomic.atomic_write_text(state_path, json.dumps(state) + "\n")
            raise _EarlyStop
        return out

    start = time.perf_counter()
    steps = state["stopped_at"] or total
    try:
        # The same seed on every resume: the checkpoint holds the input's position in it.
        result = trainer.fit(lambda ctx: _train_ds(data_dirs["train"], train_m, task, seed, ctx, pack),
                             steps, rows_per_step=global_batch, eval_fn=eval_hook if use_dev else None,
                             eval_every=eval_every)
        final_step, history = result.step, result.history
    except _EarlyStop:
        trainer.save()
        final_step = state["stopped_at"]
        history = read_step_log(os.path.join(out_dir, "history.jsonl"), final_step, chief=False)
        log_fn(f"early stopping at step {final_step}: no dev {metric} improvement in "
               f"{task.early_stopping_patience} evaluations (best {state['best']:.4g} at step {state['best_step']})")
    seconds = time.perf_counter() - start
    dev = None
    if use_dev:
        if not evals or evals[-1]["step"] != final_step:
            metrics = {f"eval_{k}": v for k, v in evaluate_now().items()}
            if on_metrics is not None and trainer.chief:
                on_metrics(final_step, metrics)
        if atomic.exists(best_path) and state["best_step"] != final_step:
            model.load_weights(best_path)  # keep the best, as measured on dev by best_metric
            log_fn(f"restored the best weights (step {state['best_step']}, dev {metric} {state['best']:.4g})")
        dev = cache.get("best") or run_eval()  # after a resume the best result is recomputed from its weights
    # The one evaluation on test: the chosen weights, after every choice is made.
    test = kind.evaluate(model, split_ds("test"), EvalContext(labels, vocab, examples["test"], allow_null))
    log_fn("test: " + " ".join(f"{k} {v:.4g}" for k, v in test.metrics.items()))
    trainer.close()
    return TaskRun(
        model=model, labels=labels, dev=dev, test=test,
        chosen_by=f"dev {metric}" if use_dev else "last step (no dev split)", history=history, evals=evals,
        best_step=state["best_step"] if use_dev else final_step, final_step=final_step,
        stopped_early=state["stopped_at"] is not None, train_seconds=seconds, steps_per_epoch=steps_per_epoch,
        global_batch_size=global_batch, precision=policy, strategy=type(strategy).__name__, starting_weights=loaded,
        records={split: m.num_records for split, m in manifests.items()},
        skipped={split: m.skipped for split, m in manifests.items()}, allow_null=allow_null, chief=trainer.chief,
        class_weights=None if class_weights is None else dict(zip(labels, map(float, class_weights), strict=True)),
    )


def _train_ds(data_dir, manifest, task: TaskConfig, seed: int, input_context, pack):
    batch = task.batch_size * task.accumulation_steps
    return data.make_dataset(data_dir, manifest, which="all", batch_size=batch, training=True, seed=seed,
                             input_context=input_context, pack=pack)


