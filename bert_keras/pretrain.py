"""The pretraining stage: MLM + NSP (or MLM only) from a data job's shards to an encoder.

Wires the pieces together: strategy and precision (`distribute.py`), the input
pipeline with packing and dynamic masking (`data.py`, `packing.py`,
`dynamic_masking.py`), the optimizer and its schedule over steps or a budget
(`optimization.py`) and the one training loop (`trainer.py`). Rerunning the same
call resumes from the latest checkpoint; with a longer length it continues. A
later phase starts from the previous phase's checkpoint (`init_state`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from bert_keras import data, distribute, dynamic_masking, families, packing
from bert_keras.optimization import build_optimizer, current_lr, make_schedule
from bert_keras.pretraining_model import pretraining_loss
from bert_keras.reports import save_figure
from bert_keras.starting_weights import apply_init, build_encoder_for, encoder_spec
from bert_keras.tokenizer import load_vocab
from bert_keras.trainer import LoopSettings, Trainer, read_step_log
from pipeline.contract import atomic, schema
from pipeline.contract.config import ModelConfig, PretrainConfig
from pipeline.contract.errors import ContractError

ENCODER_WEIGHTS = "encoder.weights.h5"
LOSS_CURVES = "loss_curves.png"
HELDOUT = "heldout.jsonl"  # held-out MLM loss and accuracy against step and training seconds (eval_every)


def input_fns(manifest, cfg: PretrainConfig, seed: int):
    """(packer or None, masker or None): the functions `data.make_dataset` applies to the rows,
    packing (`cfg.packing`) and, for dynamic-masking data, the per-step masking."""
    mask = None
    pred = manifest.max_predictions
    if manifest.kind == schema.PRETRAIN_DYNAMIC:
        spec = dynamic_masking.spec_from_manifest(manifest)
        pred = spec.max_predictions
    pack = None
    if cfg.packing:
        pred = packing.packed_predictions(pred, cfg.pack_max_instances)

        def pack(rows):
            return packing.pack_dataset(rows, seq_length=manifest.seq_length, max_instances=cfg.pack_max_instances,
                                        max_predictions=pred, seed=seed)
    if manifest.kind == schema.PRETRAIN_DYNAMIC:
        vocab = dynamic_masking.masking_vocab(load_vocab(manifest.vocab_file), f"vocab {manifest.vocab_file}")
        mask = dynamic_masking.masker(dataclasses.replace(spec, max_predictions=pred), vocab)
    return pack, mask


def save_loss_curves(history: list[dict], path: str, heldout: list[dict] = ()) -> str | None:
    rows = [h for h in history if "loss" in h]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "mlm_loss", "nsp_loss"):
        if key in rows[0]:
            ax1.plot(steps, [h[key] for h in rows], label=key)
    if heldout and "eval_mlm_loss" in heldout[0]:
        ax1.plot([h["step"] for h in heldout], [h["eval_mlm_loss"] for h in heldout], "o-", label="held-out mlm_loss")
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    ax1.legend()
    for key in ("mlm_accuracy", "nsp_accuracy"):
        if key in rows[0]:
            ax2.plot(steps, [h[key] for h in rows], label=key)
    ax2.set_xlabel("step")
    ax2.set_title("training accuracy")
    ax2.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def uses_nsp(train_cfg: PretrainConfig, manifest: schema.DataManifest, data_dir: str) -> bool:
    """pretrain.nsp, or unset: whether the data holds NSP pairs (manifest nsp)."""
    if train_cfg.nsp is None:
        return manifest.nsp
    if train_cfg.nsp and not manifest.nsp:
        raise ContractError(f"pretrain.nsp is true but the data in {data_dir} has no NSP pairs (MLM-only data): "
                            "unset pretrain.nsp, or prepare data with sentence pairs")
    return train_cfg.nsp


def encoder_overrides(train_cfg: PretrainConfig, strategy) -> dict:
    """Encoder arguments pretraining sets over the model's: its own dropout rates, when given
    (fine-tuning builds the encoder from `model.*` again), and the kernels (`train.kernels`)."""
    rates = {k: getattr(train_cfg, k) for k in ("dropout", "attention_dropout") if getattr(train_cfg, k) is not None}
    return {**rates, "fused_kernels": distribute.use_fused_kernels(train_cfg.kernels, strategy)}


@distribute.restores_precision
def run_pretraining(model_cfg: ModelConfig, train_cfg: PretrainConfig, data_dir: str, out_dir: str,
                    vocab_size: int, seed: int, on_log: Callable[[int, dict], None] | None = None,
                    log_fn: Callable[[str], None] = print, vocab_file: str | None = None,
                    init_state: str | None = None) -> dict:
    """Pretrain (or resume) and return final metrics, artifact paths and the loss history.

    `vocab_file`: the vocab in use; data written with another is refused. `init_state`:
    a checkpoint of the previous pretraining phase, whose encoder, heads and optimizer
    this run continues from (when it has no checkpoint of its own yet).
    """
    manifest = data.open_manifest(data_dir, vocab_size=vocab_size, seq_length=model_cfg.max_position_embeddings,
                                  kinds=data.PRETRAIN_KINDS, vocab_file=vocab_file)
    strategy = distribute.choose_strategy(train_cfg)
    policy = distribute.set_precision(distribute.resolve_precision(train_cfg.precision, strategy))
    accum = train_cfg.accumulation_steps
    global_batch = distribute.global_batch_size(train_cfg.batch_size, strategy, accum)
    log_fn(distribute.describe(strategy, train_cfg.batch_size, accum, policy))
    atomic.makedirs(out_dir)
    keras.utils.set_random_seed(seed)
    length = train_cfg.length()
    # A token budget counts sequence slots, so it is a step count; a time budget is not.
    steps = None if length.unit == "seconds" else (
        train_cfg.steps if length.unit == "steps" else length.steps(global_batch * manifest.seq_length))
    if length.unit != "steps":
        log_fn(f"budget {train_cfg.budget}: " + (f"{steps} steps of {global_batch} x {manifest.seq_length} tokens"
                                                 if steps else "training stops when it is spent") +
               f", the {train_cfg.schedule} schedule runs over it (pretrain.steps is not used)")

    nsp = uses_nsp(train_cfg, manifest, data_dir)
    with strategy.scope():
        # model.init_from (hf:DIR / google:DIR): continued pretraining; the checkpoint sets the sizes.
        encoder, pending = build_encoder_for(model_cfg.init_from, model_cfg, vocab_size,
                                             **encoder_overrides(train_cfg, strategy))
        family = families.for_encoder(encoder)
        if nsp and not family.nsp and train_cfg.nsp is None:  # MLM-only families read pair data as MLM data
            nsp = False
        if not nsp:
            log_fn("objective: MLM only (no NSP head)")
        model = family.build_pretraining_model(encoder, nsp=nsp)
        schedule = make_schedule(train_cfg, steps if length.unit == "steps" else None)
        optimizer = build_optimizer(train_cfg, steps, model.trainable_variables,
                                    loss_scale=policy == "mixed_float16", schedule=schedule)
    trainer = Trainer(model, pretraining_loss, optimizer, strategy, out_dir, LoopSettings.from_config(train_cfg),
                      on_log=on_log, log_fn=log_fn, schedule=schedule, seed=seed)
    start = trainer.restore()
    if start == 0 and init_state:  # a later phase: the previous phase's full state
        trainer.start_from(init_state)
        log_fn(f"continuing from the previous phase's state {init_state} (encoder, heads, optimizer)")
    elif start == 0 and model_cfg.init_from:  # a resumed run already holds its own weights
        log_fn("starting weights: " + apply_init(model, encoder, model_cfg.init_from, pending))
    pack, mask = input_fns(manifest, train_cfg, seed)
    held = data.heldout_split(data_dir, manifest)
    training_split = data.train_split(manifest)

    def train_fn(input_context):
        # The same seed on every resume: the checkpoint holds the input's position in it.
        return data.make_dataset(data_dir, manifest, which=training_split, batch_size=train_cfg.batch_size * accum,
                                 training=True, seed=seed, input_context=input_context, pack=pack, mask=mask)

    padding = {}
    if pack is not None and start == 0:
        plain = data.make_dataset(data_dir, manifest, which=training_split, batch_size=train_cfg.batch_size,
                                  training=True, seed=seed)
        packed = data.make_dataset(data_dir, manifest, which=training_split, batch_size=train_cfg.batch_size,
                                   training=True, seed=seed, pack=pack)
        rows = 8 * train_cfg.batch_size
        padding = {"padding_fraction_unpacked": data.padding_fraction(plain, rows),
                   "padding_fraction_packed": data.padding_fraction(packed, rows)}
        log_fn(f"packing: padding {padding['padding_fraction_unpacked']:.1%} of token slots unpacked, "
               f"{padding['padding_fraction_packed']:.1%} packed")

    eval_ds = None
    if train_cfg.eval_steps and data.holdout_records(held.manifest, held.which) >= train_cfg.eval_batch_size:
        eval_batch = train_cfg.eval_batch_size * strategy.num_replicas_in_sync
        tf.random.set_seed(seed)  # dynamic masking of held-out rows: same masks each time
        # The fixed held-out documents (holdout/) are masked statically at 15%: every run, whatever its
        # masking rate, is scored on the same masks.
        eval_ds = data.make_dataset(held.data_dir, held.manifest, which=held.which, batch_size=eval_batch,
                                    training=False, deterministic=True, drop_remainder=True,
                                    mask=mask if held.manifest.kind == schema.PRETRAIN_DYNAMIC else None)
        log_fn(f"held-out evaluation: {held.data_dir}" + (" (fixed held-out documents, static masks at 15%)"
                                                          if held.fixed else f" ({held.which} split of the data)"))
    heldout_path = os.path.join(out_dir, HELDOUT)
    heldout = read_step_log(heldout_path, start, trainer.chief)

    def evaluate_heldout() -> dict:
        at = trainer.clock.spent()  # training time so far; the evaluation's own time is not counted
        metrics = trainer.evaluate(eval_ds, train_cfg.eval_steps)
        heldout.append({"step": int(trainer.step.numpy()), "train_seconds": at,
                        **{f"eval_{k}": v for k, v in metrics.items()}})
        if trainer.chief:
            atomic.append_text(heldout_path, json.dumps(heldout[-1]) + "\n")
        return metrics

    every_steps, every_seconds = train_cfg.eval_cadence()
    result = trainer.fit(train_fn, steps, rows_per_step=global_batch, budget_seconds=length.seconds,
                         eval_fn=evaluate_heldout if eval_ds is not None else None, eval_every=every_steps,
                         eval_every_seconds=every_seconds,
                         data_error=lambda err: data.corrupt_shard(data_dir, manifest) or
                         f"the training data in {data_dir} is corrupt ({str(err).strip().splitlines()[0]})")

    eval_metrics = {}
    if eval_ds is not None:
        eval_metrics = {f"eval_{k}": v for k, v in trainer.evaluate(eval_ds, train_cfg.eval_steps).items()}
        log_fn("held-out: " + " ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
        if on_log is not None and trainer.chief:
            on_log(result.step, eval_metrics)

    encoder_path = os.path.join(out_dir, ENCODER_WEIGHTS)
    curves = None
    if trainer.chief:
        encoder.save_weights(encoder_path)
        curves = save_loss_curves(result.history, os.path.join(out_dir, LOSS_CURVES), heldout)
    trainer.close()
    final = {
        "step": result.step, "resumed_from": result.resumed_from, **result.metrics, **eval_metrics, **padding,
        "train_sequences_per_second": result.sequences_per_second, "global_batch_size": global_batch,
        "replicas": strategy.num_replicas_in_sync, "strategy": type(strategy).__name__, "precision": policy,
        "objectives": "mlm+nsp" if nsp else "mlm", "family": family.name,
        # The classic encoder's switches; a family without them records None.
        "fused_kernels": getattr(encoder, "fused_kernels", None), "dropout": getattr(encoder, "dropout", None),
        "attention_dropout": encoder.attention_dropout,
        "train_seconds": result.train_seconds, "budget": train_cfg.budget, "learning_rate_final": current_lr(optimizer),
        "checkpoint": result.checkpoint, "encoder_weights": encoder_path if trainer.chief else None,
        # What the export rebuilds the encoder from (its architecture; an hf: start brings its own).
        "encoder": encoder_spec(encoder), "seq_length": manifest.seq_length,
        "loss_curves": curves, "history": result.history, "heldout": heldout,
        "heldout_data": held.data_dir if eval_ds is not None else None,
    }
    if trainer.chief:
        atomic.atomic_write_text(os.path.join(out_dir, "pretrain_result.json"),
                                 json.dumps(final, indent=2, default=str) + "\n")
    return final
