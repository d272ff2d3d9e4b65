"""A finished pretraining run's final MLM loss on another run's held-out set: one set for every run compared.

Every run scores the fixed held-out documents of its own prepare stage (`holdout/`, static 15% whole-word masks),
and the documents are the same for every run (chosen by content hash). The *instances* are not: an MLM + NSP run
(the classic recipe) lays them out as sentence pairs with random next segments, an MLM-only run as plain windows
(810 vs 619 instances of the same 7 speeches in the pretraining-value bench). A loss level compared across the two
layouts is not quite the same measurement, so the time-to-classic-loss targets rescore the classic run's final
checkpoint on the MLM-only runs' held-out set, the set their curves were measured on (`rescore`), and use that
level. Checked by rescoring an MLM-only run on its own set: it gives back its recorded final loss.

The result is cached beside the run as `pretrain/heldout_rescored.json`, keyed by the data directory.
"""

from __future__ import annotations

import json
import os

CACHE = "heldout_rescored.json"


def _restored(run_dir: str, data_dir: str):
    """(model, its held-out batches of `data_dir`, the run's precision): `run_dir`'s final pretraining checkpoint
    rebuilt as the run built it, and the held-out batches its own evaluation reads (same size and count)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    from pydantic import TypeAdapter

    from bert_keras import data, distribute, families
    from bert_keras.optimization import build_optimizer
    from bert_keras.pretrain import encoder_overrides
    from bert_keras.starting_weights import build_encoder_for
    from pipeline.contract.config import PretrainConfig
    from pipeline.contract.model_config import ModelSection

    with open(os.path.join(run_dir, "pretrain", "stage.json"), encoding="utf-8") as fh:
        stage = json.load(fh)["config"]
    model_cfg = TypeAdapter(ModelSection).validate_python(stage["model"])
    train_cfg = PretrainConfig.model_validate(stage["pretrain"])
    with open(os.path.join(run_dir, "pretrain", "pretrain_result.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    own = data.open_manifest(os.path.join(run_dir, "prepare", "data"))
    manifest = data.open_manifest(data_dir, vocab_size=own.vocab_size)
    if manifest.vocab_sha256 != own.vocab_sha256:
        raise SystemExit(f"{data_dir} was written with another vocab than {run_dir}: no common held-out set")
    held = data.heldout_split(data_dir, manifest)
    policy = result.get("precision") or distribute.resolve_precision(train_cfg.precision)
    with distribute.precision_scope(policy):
        # The run's own encoder arguments (its kernels choice sets the layer structure the checkpoint holds).
        encoder, _ = build_encoder_for(None, model_cfg, own.vocab_size,
                                       **encoder_overrides(train_cfg, tf.distribute.get_strategy()))
        model = families.for_encoder(encoder).build_pretraining_model(encoder, nsp="nsp" in result.get(
            "objectives", ["mlm"]))
        ds = data.make_dataset(held.data_dir, held.manifest, which=held.which, batch_size=train_cfg.eval_batch_size,
                               training=False, deterministic=True, drop_remainder=True)
        batches = list(ds.take(train_cfg.eval_steps))
        model(batches[0], training=False)  # creates the variables the checkpoint fills
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "pretrain", "checkpoints"))
        before = [v.numpy().copy() for v in model.weights]
        # Keras 3 layers do not track their sublayers' variables as checkpoint dependencies: the trainer's checkpoint
        # reaches them through the optimizer's variable list, so they are restored the way Trainer.restore does.
        optimizer = build_optimizer(train_cfg, result["step"], model.trainable_variables)
        optimizer.build(model.trainable_variables)
        tf.train.Checkpoint(model=model, optimizer=optimizer).read(latest).expect_partial() \
            .assert_existing_objects_matched()
        # (a zero-initialised bias no gradient reached, the unused pooler's in MLM only, reads back as it was)
        stale = [v.path for v, b in zip(model.weights, before, strict=True) if (v.numpy() == b).all() and b.any()]
        if stale:
            raise SystemExit(f"{latest}: {len(stale)} of {len(before)} weights not restored ({stale[0]}, ...)")
    return model, batches, policy


def _mean_mlm_loss(model, batches, policy: str) -> float:
    from bert_keras import distribute
    from bert_keras.pretraining_model import mlm_only_loss

    with distribute.precision_scope(policy):
        losses = [float(mlm_only_loss(b, model(b, training=False))[0]) for b in batches]
    return sum(losses) / len(losses)


def rescore(run_dir: str, data_dir: str) -> float:
    """MLM loss of `run_dir`'s final pretraining checkpoint on `data_dir`'s held-out split, as the run's own
    held-out evaluation computes it (same batch size and steps, the run's precision)."""
    cache = os.path.join(run_dir, "pretrain", CACHE)
    cached = json.load(open(cache, encoding="utf-8")) if os.path.exists(cache) else {}
    if data_dir in cached:
        return cached[data_dir]
    from pipeline.contract.atomic import atomic_write_text

    loss = _mean_mlm_loss(*_restored(run_dir, data_dir))
    cached[data_dir] = loss
    atomic_write_text(cache, json.dumps(cached, indent=1))
    return loss


def context_ablation(run_dir: str, data_dir: str, seed: int = 0) -> dict[str, float]:
    """A leak check of a held-out figure: the loss as measured, and again with every token but the masked positions
    and the special tokens replaced by random ids. A model that reads its context falls to about the unigram
    entropy without it; one that still scores low has seen its answers some other way."""
    import numpy as np

    from pipeline.contract import schema

    model, batches, policy = _restored(run_dir, data_dir)
    manifest = schema.read_manifest(data_dir)
    with open(manifest.vocab_file, encoding="utf-8") as fh:
        pieces = [line.rstrip("\n") for line in fh]
    special = np.array([p.startswith("[") and p.endswith("]") for p in pieces])  # [PAD] [CLS] [MASK] [unused3] ...
    ordinary = np.flatnonzero(~special)
    rng = np.random.default_rng(seed)
    ablated = []
    for b in batches:
        b = {k: v.numpy() for k, v in b.items()}
        tokens = b[schema.TOKEN_IDS]
        keep = special[tokens]
        np.put_along_axis(keep, b[schema.MASK_POSITIONS], True, axis=1)  # the masked positions, as they were
        b[schema.TOKEN_IDS] = np.where(keep, tokens, rng.choice(ordinary, size=tokens.shape)).astype(tokens.dtype)
        ablated.append(b)
    return {"loss": _mean_mlm_loss(model, batches, policy),
            "context_ablated_loss": _mean_mlm_loss(model, ablated, policy)}
