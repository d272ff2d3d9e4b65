"""Subprocess entry points of the distribution and resume tests (no tests here).

They run in fresh processes because logical CPU devices and TF_CONFIG must be
set before TensorFlow initializes, and SIGKILL needs a process to kill.

    python -m tests.test_distribute_worker mirrored DATA OUT [xla]
    python -m tests.test_distribute_worker multi_worker DATA OUT   (TF_CONFIG set)
    python -m tests.test_distribute_worker pretrain DATA OUT STEPS
    python -m tests.test_distribute_worker finetune TASK_JSON OUT       (TASK_JSON: task config + data dirs)
"""

from __future__ import annotations

import json
import os
import sys

STEPS = 3


def _train(strategy_name: str, data_dir: str, out_dir: str, per_replica: int, jit: bool = False, accum: int = 1):
    import numpy as np

    from bert_keras import data, distribute
    from pipeline.contract.config import PretrainConfig
    from tests.test_trainer import make_trainer

    cfg = PretrainConfig(batch_size=per_replica // accum, steps=STEPS, learning_rate=1e-3, warmup_steps=1, log_every=1,
                         checkpoint_every=100, clip_norm=0.5, strategy=strategy_name, precision="float32",
                         jit_compile=jit, accumulation_steps=accum)
    strategy = distribute.choose_strategy(cfg)
    manifest = data.open_manifest(data_dir)

    def dataset_fn(ctx):
        return data.make_dataset(data_dir, manifest, which="all", batch_size=ctx.get_per_replica_batch_size(8),
                                 training=False, deterministic=True, drop_remainder=True, input_context=ctx).repeat()

    trainer = make_trainer(out_dir, cfg, strategy=strategy)
    result = trainer.fit(dataset_fn, STEPS, rows_per_step=8)
    trainer.close()
    weights = [v.numpy() for v in trainer.model.trainable_variables]
    return strategy.num_replicas_in_sync, [h["loss"] for h in result.history], weights, np, trainer.xla_scope


def main(argv: list[str]) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    mode, data_dir, out_dir = argv[:3]
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        # "xla": both under jit_compile, the mirrored one with two micro-batches per replica too.
        jit = argv[3:] == ["xla"]
        results = {}
        for name, per_replica, accum in (("mirrored", 4, 2 if jit else 1), ("default", 8, 1)):  # global batch 8
            replicas, losses, weights, np, scope = _train(name, data_dir, os.path.join(out_dir, name), per_replica,
                                                          jit, accum)
            np.savez(os.path.join(out_dir, f"{name}.npz"), *weights)
            results[name] = {"replicas": replicas, "losses": losses, "xla_scope": scope}
        print("RESULT " + json.dumps(results), flush=True)
    elif mode == "mirrored_resume":
        import numpy as np

        from bert_keras import data, distribute
        from pipeline.contract.config import PretrainConfig
        from tests.test_trainer import make_trainer

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        cfg = PretrainConfig(batch_size=4, steps=6, learning_rate=1e-3, schedule="constant", warmup_steps=0,
                             log_every=1, checkpoint_every=3, strategy="mirrored", precision="float32")
        strategy = distribute.choose_strategy(cfg)
        manifest = data.open_manifest(data_dir)

        def dataset_fn(ctx):  # shuffled, repeated training input
            return data.make_dataset(data_dir, manifest, which="all", batch_size=ctx.get_per_replica_batch_size(8),
                                     training=True, seed=0, input_context=ctx)

        runs = {}
        for name, lengths in (("one_run", (6,)), ("resumed", (3, 6))):
            losses = []
            for steps in lengths:  # a new trainer each time, as after a kill
                trainer = make_trainer(os.path.join(out_dir, name), cfg, strategy=strategy)
                trainer.log_fn = print
                result = trainer.fit(dataset_fn, steps, rows_per_step=8)
                losses += [h["loss"] for h in result.history[len(losses):]]
            runs[name] = (losses, result.resumed_from)
            np.savez(os.path.join(out_dir, f"{name}.npz"), *[v.numpy() for v in trainer.model.trainable_variables])
        print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "resumed_from": runs["resumed"][1],
                                      "one_run_losses": runs["one_run"][0], "resumed_losses": runs["resumed"][0]}),
              flush=True)
    elif mode == "multi_worker":
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        replicas, losses, weights, np, _ = _train("auto", data_dir, out_dir, 4)
        np.savez(os.path.join(out_dir, f"worker{task}.npz"), *weights)
        print("RESULT " + json.dumps({"replicas": replicas, "losses": losses}), flush=True)
    elif mode == "pretrain":
        from bert_keras.pretrain import run_pretraining
        from pipeline.contract.config import PretrainConfig
        from tests.test_trainer import TINY

        # Dropout on: a resumed run must draw the masks the uninterrupted one drew.
        model = TINY.model_copy(update={"dropout": 0.1, "attention_dropout": 0.1})
        cfg = PretrainConfig(batch_size=8, steps=int(argv[3]), log_every=1, checkpoint_every=5, keep_checkpoints=2,
                             eval_steps=1, eval_batch_size=4, precision="float32", learning_rate=1e-3)
        result = run_pretraining(model, cfg, data_dir, out_dir, vocab_size=30522, seed=0)
        print("RESULT " + json.dumps({k: v for k, v in result.items() if k not in ("history", "heldout")}),
              flush=True)
    elif mode == "finetune":
        from bert_keras.task_training import train_task
        from pipeline.contract.config import task_config
        from tests.test_data import VOCAB
        from tests.test_trainer import TINY

        with open(data_dir, encoding="utf-8") as fh:
            spec = json.load(fh)
        model = TINY.model_copy(update={"dropout": 0.1, "attention_dropout": 0.1, "max_position_embeddings": 128})
        out = train_task(task_config(**spec["task"]), model, VOCAB, spec["data_dirs"], None, out_dir, 0)
        print("RESULT " + json.dumps({"final_step": out.final_step, "best_step": out.best_step}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
