"""Forward+backward+AdamW step: bertpipe's BertPretrainingModel vs keras-hub's BertMaskedLM.

Same dimensions, batch, optimizer and synthetic fixed-length batch for both,
measured in one run, plus a bf16/fp32 2048^3 matmul as the ceiling.

    .venv/bin/python bench/bench_model_step.py --precision mixed_bfloat16 --steps 3 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import schema as S  # noqa: E402

V, L, H, NH, I, SEQ, B, PRED = 30522, 4, 256, 4, 1024, 128, 32, 20  # noqa: E741 (BERT paper symbols)


def batch(rng):
    return {
        S.TOKEN_IDS: tf.constant(rng.integers(1000, V, (B, SEQ)), tf.int32),
        S.SEGMENT_IDS: tf.constant(np.repeat([[0] * 64 + [1] * 64], B, 0), tf.int32),
        S.PADDING_MASK: tf.ones((B, SEQ), tf.int32),
        S.MASK_POSITIONS: tf.constant(np.sort(rng.choice(SEQ, (B, PRED)), axis=1), tf.int32),
        S.MASK_IDS: tf.constant(rng.integers(1000, V, (B, PRED)), tf.int32),
        S.MASK_WEIGHTS: tf.ones((B, PRED), tf.float32),
        S.NSP_LABEL: tf.constant(rng.integers(0, 2, (B, 1)), tf.int32),
    }


def train_flops():
    per_token = 2 * (4 * H * H + 2 * H * I) + 2 * 2 * SEQ * H  # projections + QK^T and PV
    fwd = B * SEQ * L * per_token + B * PRED * 2 * (H * H + H * V)  # + MLM transform and tied output
    return 3 * fwd  # backward is about twice the forward


def timed(step, data, steps):
    t = time.perf_counter()
    for _ in range(steps):
        loss = step(data)
    float(loss)
    return (time.perf_counter() - t) / steps


def make_step(model, loss_fn):
    opt = keras.optimizers.AdamW(1e-4, weight_decay=0.01)

    @tf.function
    def step(data):
        with tf.GradientTape() as tape:
            loss = loss_fn(data, model(data, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def ours():
    from bert_keras.encoder import BertEncoder
    from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss

    model = BertPretrainingModel(BertEncoder(V, H, L, NH, I, max_position_embeddings=512))
    return make_step(model, lambda d, o: pretraining_loss(d, o)[0])


def keras_hub_mlm():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=V, num_layers=L, num_heads=NH, hidden_dim=H, intermediate_dim=I, max_sequence_length=512
    )
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_fn(d, logits):
        return ce(d[S.MASK_IDS], tf.cast(logits, tf.float32), sample_weight=d[S.MASK_WEIGHTS])

    def call_inputs(d):
        return {k: d[k] for k in (S.TOKEN_IDS, S.SEGMENT_IDS, S.PADDING_MASK, S.MASK_POSITIONS)}

    opt = keras.optimizers.AdamW(1e-4, weight_decay=0.01)

    @tf.function
    def step(data):
        with tf.GradientTape() as tape:
            loss = loss_fn(data, model(call_inputs(data), training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def matmul_rate(dtype, n=2048, reps=5):
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a)
    t = time.perf_counter()
    for _ in range(reps):
        r = f(a)
    r.numpy()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="mixed_bfloat16", choices=["float32", "mixed_bfloat16"])
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "keras_hub"], default=None)
    args = ap.parse_args()
    keras.mixed_precision.set_global_policy(args.precision)
    data = batch(np.random.default_rng(0))
    peak = matmul_rate(tf.bfloat16 if args.precision == "mixed_bfloat16" else tf.float32)
    print(f"matmul 2048^3 {args.precision}: {peak / 1e9:.0f} GFLOP/s")
    # The machine is shared and noisy: interleave short rounds of both models
    # and compare medians, so a burst of load hits both sides alike.
    steps = {name: factory() for name, factory in (("ours", ours), ("keras_hub", keras_hub_mlm)) if args.only in (None, name)}
    for step in steps.values():
        step(data), step(data)  # trace + warm up
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, data, args.steps))
    results = {}
    for name, ts in times.items():
        sec = float(np.median(ts))
        results[name] = B / sec
        print(f"{name}: {B / sec:.1f} seq/s, {train_flops() / sec / 1e9:.0f} GFLOP/s ({train_flops() / sec / peak:.0%} of matmul)")
    if len(results) == 2:
        ratios = [h / o for o, h in zip(times["ours"], times["keras_hub"], strict=True)]
        print(f"ratio ours/keras_hub: {results['ours'] / results['keras_hub']:.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
