"""The pretraining stage: MLM + NSP from a data job's shards to an encoder.

Wires the pieces together: strategy and precision (`distribute.py`), the input
pipeline with packing and dynamic masking (`data.py`, `packing.py`,
`dynamic_masking.py`), the optimizer (`optimization.py`) and the one training
loop (`trainer.py`). Rerunning the same call resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from bert_keras import data, distribute, dynamic_masking, packing
from bert_keras.optimization import build_optimizer
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from bert_keras.starting_weights import apply_init, build_encoder_for
from bert_keras.tokenizer import load_vocab
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_write_text
from pipeline.contract.config import ModelConfig, PretrainConfig

ENCODER_WEIGHTS = "encoder.weights.h5"
LOSS_CURVES = "loss_curves.png"


def _input_fns(manifest, data_dir, cfg: PretrainConfig, seed: int, rows_per_replica: int):
    """(train dataset_fn, packer or None, masker or None)."""
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


def save_loss_curves(history: list[dict], path: str) -> str | None:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_pretraining(model_cfg: ModelConfig, train_cfg: PretrainConfig, data_dir: str, out_dir: str,
                    vocab_size: int, seed: int, on_log: Callable[[int, dict], None] | None = None,
                    log_fn: Callable[[str], None] = print) -> dict:
    """Pretrain (or resume) and return final metrics, artifact paths and the loss history."""
    manifest = data.open_manifest(data_dir, vocab_size=vocab_size, seq_length=model_cfg.max_position_embeddings,
                                  kinds=data.PRETRAIN_KINDS)
    strategy = distribute.choose_strategy(train_cfg)
    policy = distribute.set_precision(distribute.resolve_precision(train_cfg.precision, strategy))
    accum = train_cfg.accumulation_steps
    global_batch = distribute.global_batch_size(train_cfg.batch_size, strategy, accum)
    log_fn(distribute.describe(strategy, train_cfg.batch_size, accum, policy))
    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)

    with strategy.scope():
        # model.init_from (hf:DIR / google:DIR): continued pretraining; the checkpoint sets the sizes.
        encoder, pending = build_encoder_for(model_cfg.init_from, model_cfg, vocab_size)
        model = BertPretrainingModel(encoder)
        optimizer = build_optimizer(train_cfg, train_cfg.steps, model.trainable_variables,
                                    loss_scale=policy == "mixed_float16")
    trainer = Trainer(model, pretraining_loss, optimizer, strategy, out_dir, LoopSettings.from_config(train_cfg),
                      on_log=on_log, log_fn=log_fn)
    start = trainer.restore()
    if start == 0 and model_cfg.init_from:  # a resumed run already holds its own weights
        log_fn("starting weights: " + apply_init(model, encoder, model_cfg.init_from, pending))
    pack, mask = _input_fns(manifest, data_dir, train_cfg, seed, train_cfg.batch_size * accum)
    # A resumed run reshuffles with a new seed instead of replaying the first batches.
    data_seed = seed + 1_000_003 * start

    def train_fn(input_context):
        return data.make_dataset(data_dir, manifest, which="train", batch_size=train_cfg.batch_size * accum,
                                 training=True, seed=data_seed, input_context=input_context, pack=pack, mask=mask)

    padding = {}
    if pack is not None and start == 0:
        plain = data.make_dataset(data_dir, manifest, which="train", batch_size=train_cfg.batch_size, training=True,
                                  seed=seed)
        packed = data.make_dataset(data_dir, manifest, which="train", batch_size=train_cfg.batch_size,
                                   training=True, seed=seed, pack=pack)
        rows = 8 * train_cfg.batch_size
        padding = {"padding_fraction_unpacked": data.padding_fraction(plain, rows),
                   "padding_fraction_packed": data.padding_fraction(packed, rows)}
        log_fn(f"packing: padding {padding['padding_fraction_unpacked']:.1%} of token slots unpacked, "
               f"{padding['padding_fraction_packed']:.1%} packed")

    result = trainer.fit(train_fn, train_cfg.steps, rows_per_step=global_batch)

    eval_metrics = {}
    if train_cfg.eval_steps and data.holdout_records(manifest) >= train_cfg.eval_batch_size:
        eval_batch = train_cfg.eval_batch_size * strategy.num_replicas_in_sync
        tf.random.set_seed(seed)  # dynamic masking of held-out rows: same masks each time
        eval_ds = data.make_dataset(data_dir, manifest, which="eval", batch_size=eval_batch, training=False,
                                    deterministic=True, drop_remainder=True,
                                    mask=mask if manifest.kind == schema.PRETRAIN_DYNAMIC else None)
        eval_metrics = {f"eval_{k}": v for k, v in trainer.evaluate(eval_ds, train_cfg.eval_steps).items()}
        log_fn("held-out: " + " ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
        if on_log is not None and trainer.chief:
            on_log(result.step, eval_metrics)

    encoder_path = os.path.join(out_dir, ENCODER_WEIGHTS)
    curves = None
    if trainer.chief:
        encoder.save_weights(encoder_path)
        curves = save_loss_curves(result.history, os.path.join(out_dir, LOSS_CURVES))
    trainer.close()
    final = {
        "step": result.step, "resumed_from": result.resumed_from, **result.metrics, **eval_metrics, **padding,
        "train_sequences_per_second": result.sequences_per_second, "global_batch_size": global_batch,
        "replicas": strategy.num_replicas_in_sync, "strategy": type(strategy).__name__, "precision": policy,
        "checkpoint": result.checkpoint, "encoder_weights": encoder_path if trainer.chief else None,
        "loss_curves": curves, "history": result.history,
    }
    if trainer.chief:
        atomic_write_text(os.path.join(out_dir, "pretrain_result.json"), json.dumps(final, indent=2, default=str) + "\n")
    return final
