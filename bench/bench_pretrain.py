"""Pretraining step throughput: bertpipe vs keras-hub BertMaskedLM, one run.

Same dimensions, batch and optimizer on both sides (4 layers, hidden 256,
4 heads, intermediate 1024, seq 128, batch 32, vocab 30,522, AdamW, 20
predictions), synthetic fixed-length batch, fp32 and mixed bf16. Prints
sequences/s, the ratio, and achieved FLOP/s against a 2048^3 matmul of the same
precision timed in the same alternating rounds (the ceiling), and writes
`bench/results/pretrain.json`.

Targets: `bf16_step_vs_keras_hub` >= 1.5 and `bf16_share_of_matmul_ceiling` >= 0.5
(AVX512-BF16; >= 0.4 with AMX, issue 19) where the CPU has native bf16; on a CPU
without it (AVX2) bf16 is emulated, float32 is the fast path, and the bf16 figures are
reported without a goal. The fp32 figures carry no goal.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_pretrain.py [--steps 10 --rounds 5 --jit]
        [--also pre-ln plain pre-ln-plain] [--dropout 0.0]

`--also` adds bertpipe variants to the same alternating rounds: pre-LN blocks
(`model.normalize_first`), the plain layers instead of the fused kernels (`train.kernels: plain`),
or both; each is printed with its ratio to classic bertpipe and recorded in the rows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from results import describe_machine, machine_info, target, write_results  # noqa: E402

from pipeline.contract import schema  # noqa: E402
from pipeline.contract.config import BertConfig, PretrainConfig  # noqa: E402

V, L, H, A, FF, S, B, P = 30522, 4, 256, 4, 1024, 128, 32, 20


def train_flops_per_sequence() -> float:
    """Matmul FLOPs of one training sequence (forward x 3 for forward + backward)."""
    per_token_layer = 2 * (4 * H * H + 2 * H * FF) + 2 * 2 * S * H  # projections + FFN + QK^T and AV
    mlm = P * 2 * (H * H + H * V)  # transform + tied output projection, masked positions only
    return 3 * (L * S * per_token_layer + mlm + 2 * H * H)  # + pooler


def matmul_runner(dtype):
    """The ceiling as one more contender: `run(n)` times 4n chained 2048^3 matmuls
    and returns FLOP/s, so it is measured in the same rounds as the steps."""
    a = tf.cast(tf.random.normal([2048, 2048], dtype=tf.float32), dtype)

    @tf.function
    def chain(x, n):
        for _ in tf.range(n):
            x = tf.matmul(x, a)
        return x

    def run(n: int) -> float:
        t = time.perf_counter()
        chain(a, tf.constant(4 * n)).numpy()  # ~0.1 s per window at the bf16 rate
        return 4 * n * 2 * 2048**3 / (time.perf_counter() - t)

    return run


def synthetic_batch(rng):
    tokens = rng.integers(1000, V, size=(B, S)).astype(np.int32)
    tokens[:, 0] = 101
    pos = np.sort(np.stack([rng.choice(np.arange(1, S), P, replace=False) for _ in range(B)]), axis=1).astype(np.int32)
    return {schema.TOKEN_IDS: tokens, schema.SEGMENT_IDS: np.zeros((B, S), np.int32),
            schema.PADDING_MASK: np.ones((B, S), np.int32), schema.MASK_POSITIONS: pos,
            schema.MASK_IDS: np.take_along_axis(tokens, pos, 1), schema.MASK_WEIGHTS: np.ones((B, P), np.float32),
            schema.NSP_LABEL: rng.integers(0, 2, size=(B, 1)).astype(np.int32)}


VARIANTS = {"pre-ln": dict(normalize_first=True), "plain": dict(fused_kernels=False),
            "pre-ln-plain": dict(normalize_first=True, fused_kernels=False)}


def bertpipe_runner(policy: str, batch, jit: bool = False, dropout: float = 0.1, normalize_first: bool = False,
                    fused_kernels: bool = True):
    """A function timing `n` training steps of bertpipe's trainer (its real step)."""
    from bert_keras.encoder import build_encoder
    from bert_keras.optimization import build_optimizer
    from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
    from bert_keras.trainer import LoopSettings, Trainer

    keras.mixed_precision.set_global_policy(policy)
    cfg = PretrainConfig(batch_size=B, steps=1000, jit_compile=jit)
    model_cfg = BertConfig(hidden_size=H, num_layers=L, num_heads=A, intermediate_size=FF, max_position_embeddings=512,
                           dropout=dropout, attention_dropout=dropout, normalize_first=normalize_first)
    model = BertPretrainingModel(build_encoder(model_cfg, V, fused_kernels=fused_kernels))
    opt = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    trainer = Trainer(model, pretraining_loss, opt, tf.distribute.get_strategy(), tempfile.mkdtemp(),
                      LoopSettings.from_config(cfg), log_fn=lambda s: None)
    iterator = iter(trainer.distribute(tf.data.Dataset.from_tensors(batch).repeat()))
    step = trainer.step_function()

    def run(n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            # The loop reads the loss every step (NaN check); progress is the schedule's share of the run.
            float(step(iterator, tf.constant(min(1.0, i / max(n, 1)), tf.float32))[0])
        return n * B / (time.perf_counter() - t)

    return run


def keras_hub_runner(policy: str, batch):
    import keras_hub

    keras.mixed_precision.set_global_policy(policy)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=V, num_layers=L, num_heads=A, hidden_dim=H,
                                             intermediate_dim=FF, max_sequence_length=512)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=["accuracy"])
    x = {"token_ids": batch[schema.TOKEN_IDS], "segment_ids": batch[schema.SEGMENT_IDS],
         "padding_mask": batch[schema.PADDING_MASK], "mask_positions": batch[schema.MASK_POSITIONS]}
    ds = tf.data.Dataset.from_tensors((x, batch[schema.MASK_IDS], batch[schema.MASK_WEIGHTS])).repeat()

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    timer = StepTimes()

    def run(n: int) -> float:
        # Timed from the end of the first step to the end of the last: a `fit` call itself
        # costs seconds of set-up (every other call retraced its train function here,
        # halving a 10-step window's rate), which is not the peer's training speed.
        timer.ends = []
        model.fit(ds, steps_per_epoch=n + 1, epochs=1, verbose=0, callbacks=[timer])
        return n * B / (timer.ends[-1] - timer.ends[0])

    return run


def side_by_side(runners, steps: int, rounds: int) -> list[float]:
    """Alternate the contenders in short windows and keep each one's median, so a
    burst of load on a shared machine hits both rather than one."""
    for run in runners:
        run(2)  # trace and warm up
    rates = [[] for _ in runners]
    for _ in range(rounds):
        for i, run in enumerate(runners):
            rates[i].append(run(steps))
    return [float(np.median(r)) for r in rates]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="steps per timing window")
    parser.add_argument("--rounds", type=int, default=5, help="alternating windows per contender (median)")
    parser.add_argument("--jit", action="store_true", help="also time bertpipe with XLA")
    parser.add_argument("--also", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="also time these bertpipe variants in the same rounds")
    parser.add_argument("--dropout", type=float, default=0.1, help="bertpipe's hidden and attention dropout")
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"],
                        choices=["float32", "mixed_bfloat16"])  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    batch = synthetic_batch(np.random.default_rng(0))
    flops = train_flops_per_sequence()
    print(f"{flops / 1e9:.2f} GFLOP per training sequence; the ceiling is a 2048^3 matmul of the same precision, "
          "timed in the same alternating rounds (median)")
    print(f"{'precision':<16}{'keras-hub seq/s':>16}{'bertpipe seq/s':>16}{'ratio':>8}"
          f"{'bertpipe GFLOP/s':>18}{'ceiling GFLOP/s':>17}{'% of matmul':>13}")
    rows = []
    for policy in args.precision:
        runners = [keras_hub_runner(policy, batch), bertpipe_runner(policy, batch, dropout=args.dropout),
                   matmul_runner(tf.bfloat16 if policy == "mixed_bfloat16" else tf.float32)]
        extra = (["XLA"] if args.jit else []) + args.also
        for name in extra:
            options = dict(jit=True) if name == "XLA" else VARIANTS[name]
            runners.append(bertpipe_runner(policy, batch, dropout=args.dropout, **options))
        hub, ours, ceiling, *others = side_by_side(runners, args.steps, args.rounds)
        rate = ours * flops
        print(f"{policy:<16}{hub:>16.1f}{ours:>16.1f}{ours / hub:>7.2f}x{rate / 1e9:>18.0f}{ceiling / 1e9:>17.0f}"
              f"{rate / ceiling:>12.0%}", flush=True)
        for name, other in zip(extra, others, strict=True):
            print(f"{policy + ' +' + name:<16}{'':>16}{other:>16.1f}{other / hub:>7.2f}x"
                  f"   ({other / ours:.3f}x classic bertpipe)", flush=True)
        rows.append({"precision": policy, "keras_hub_seq_per_s": hub, "bertpipe_seq_per_s": ours,
                     "ratio": ours / hub, "bertpipe_gflop_per_s": rate / 1e9, "ceiling_gflop_per_s": ceiling / 1e9,
                     "share_of_ceiling": rate / ceiling, "dropout": args.dropout,
                     **{f"bertpipe_{name.lower().replace('-', '_')}_seq_per_s": other
                        for name, other in zip(extra, others, strict=True)}})
    write_results("pretrain", rows, targets(rows, machine_info()["matrix_isa"]),
                  notes=f"{L} layers, hidden {H}, {A} heads, seq {S}, batch {B}, vocab {V}, AdamW; "
                        f"{args.steps} steps per window, {args.rounds} alternating rounds (median)")


# The share of the bf16 matmul ceiling each CPU kind must reach (issue 19); None: no native bf16.
CEILING_GOAL = {"AMX-BF16": ">= 0.4", "AVX512-BF16": ">= 0.5"}


def targets(rows: list[dict], isa: str) -> list[dict]:
    out = []
    for row in rows:
        bf16 = row["precision"] == "mixed_bfloat16"
        short = "bf16" if bf16 else "fp32"
        native = bf16 and isa in CEILING_GOAL
        out.append(target(f"{short}_step_vs_keras_hub", round(row["ratio"], 3), ">= 1.5" if native else None,
                          what=f"pretraining step, {row['precision']}, 4L/256/4H, seq 128, batch 32",
                          peer=f"keras-hub BertMaskedLM {row['keras_hub_seq_per_s']:.1f} seq/s",
                          bertpipe=f"{row['bertpipe_seq_per_s']:.1f} seq/s"))
        out.append(target(f"{short}_share_of_matmul_ceiling", round(row["share_of_ceiling"], 3),
                          CEILING_GOAL.get(isa) if native else None, what=f"same, share of the {short} matmul ceiling",
                          bertpipe=f"{row['bertpipe_gflop_per_s']:.0f} of {row['ceiling_gflop_per_s']:.0f} GFLOP/s"))
    return out


if __name__ == "__main__":
    main()
