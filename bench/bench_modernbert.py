"""ModernBERT training step vs classic bertpipe BERT vs keras-hub BertMaskedLM, seq 128 and 1,024.

All three at the classic bench's size (4 layers, hidden 256, 4 heads, vocab 30,522, AdamW)
on synthetic full rows, 4,096 tokens per batch (32 x 128, 4 x 1,024) and 15% of the tokens
predicted (20 at 128, 154 at 1,024), each family at its own defaults otherwise:
- ModernBERT: GeGLU intermediate 384 (ModernBERT-base's 1.5 x hidden), no dropout, sliding
  window 128 in layers 1 and 2, global attention in 0 and 3 (every third from 0), MLM only;
- bertpipe BERT: full attention in every layer, intermediate 1,024, dropout 0.1, MLM + NSP;
- keras-hub BertMaskedLM: BERT of the same size through `model.fit`.
bertpipe's two run through the trainer's real step. Precision: the CPU's fast path
(`bert_keras.distribute.resolve_precision("auto")`: mixed bf16 where the CPU has bf16 matrix
instructions, else float32), or --precision. Contenders alternate in short windows (median).

Each line also shows BERT's training FLOPs over ModernBERT's (`train_flops`): the ratio a
step bound by its matmuls would reach. Also checks HF parity (a random transformers ModernBertForMaskedLM loaded into bertpipe, max
|logit difference| on padded rows longer than the window) and writes
bench/results/modernbert.<isa>.json (one file per CPU kind: the precision differs).

--value-work DIR adds `time_to_classic_loss_ratio`: the tokens bertpipe's ModernBERT needs to reach the classic
BERT recipe's final held-out MLM loss over the classic's, both pretrained by bench_pretraining_value.py on sotu for
the same token budget (its `modernbert` and `classic` starts in DIR). One held-out set for both: the classic's final
checkpoint is rescored on ModernBERT's fixed 15%-masked held-out windows (heldout_rescore.py). Tokens, not seconds:
ModernBERT costs less per token (the step rows), so its seconds ratio is lower still; both are reported. --long-documents adds the long-document comparison
(bench/modernbert_long.py: ModernBERT in one 2,048 window vs BERT chunk + pool, accuracy and seconds per document),
fine-tuning DIR's `modernbert` and `best` encoders.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_modernbert.py [--steps 3 --rounds 3 --seqs 128 1024]
    PYTHONPATH=$PWD .venv/bin/python bench/bench_pretraining_value.py --starts classic best modernbert \\
        --size small --tokens 20480000 --work /tmp/pretraining-value      # once, quiet (about 35 minutes)
    PYTHONPATH=$PWD .venv/bin/python bench/bench_modernbert.py --value-work /tmp/pretraining-value --long-documents
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
from bench_pretrain import side_by_side  # noqa: E402
from results import REPO, describe_machine, target, write_results  # noqa: E402

from pipeline.contract import schema  # noqa: E402
from pipeline.contract.config import BertConfig, PretrainConfig  # noqa: E402

V, L, H, A, FF, MB_FF, TOKENS = 30522, 4, 256, 4, 1024, 384, 4096


def synthetic_batch(rng, seq: int):
    batch, preds = TOKENS // seq, round(0.15 * seq)
    tokens = rng.integers(1000, V, size=(batch, seq)).astype(np.int32)
    tokens[:, 0] = 101
    pos = np.sort(np.stack([rng.choice(np.arange(1, seq), preds, replace=False) for _ in range(batch)]), axis=1)
    pos = pos.astype(np.int32)
    return {schema.TOKEN_IDS: tokens, schema.SEGMENT_IDS: np.zeros((batch, seq), np.int32),
            schema.PADDING_MASK: np.ones((batch, seq), np.int32), schema.MASK_POSITIONS: pos,
            schema.MASK_IDS: np.take_along_axis(tokens, pos, 1), schema.MASK_WEIGHTS: np.ones(pos.shape, np.float32),
            schema.NSP_LABEL: rng.integers(0, 2, size=(batch, 1)).astype(np.int32)}


def train_flops(seq: int, family: str) -> float:
    """Matmul FLOPs of one training sequence (forward x 3 for forward + backward), to set the
    measured ratio beside the ratio of work: projections, feed-forward, attention scores and
    values (ModernBERT's local layers score 192 keys a query, its blocked window), the MLM head."""
    preds = round(0.15 * seq)
    mlm = preds * 2 * (H * H + H * V)
    if family == "bert":
        per_layer = [2 * (4 * H * H + 2 * H * FF) + 2 * 2 * seq * H] * L
    else:
        from bert_keras.modernbert.attention import layer_types_every
        from bert_keras.modernbert.masks import LocalWindow

        window = LocalWindow(64)
        keys = {"full_attention": seq, "sliding_attention": window.keys if window.banded(seq) else seq}
        per_layer = [2 * (4 * H * H + 3 * H * MB_FF) + 2 * 2 * keys[kind] * H for kind in layer_types_every(L, 3)]
    return 3 * (seq * sum(per_layer) + mlm)


def trainer_runner(model, loss_fn, batch):
    """n training steps of bertpipe's trainer -> sequences/s."""
    from bert_keras.optimization import build_optimizer
    from bert_keras.trainer import LoopSettings, Trainer

    cfg = PretrainConfig(batch_size=len(batch[schema.TOKEN_IDS]), steps=1000)
    opt = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    trainer = Trainer(model, loss_fn, opt, tf.distribute.get_strategy(), tempfile.mkdtemp(),
                      LoopSettings.from_config(cfg), log_fn=lambda s: None)
    iterator = iter(trainer.distribute(tf.data.Dataset.from_tensors(batch).repeat()))
    step = trainer.step_function()
    rows = len(batch[schema.TOKEN_IDS])

    def run(n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            float(step(iterator, tf.constant(min(1.0, i / max(n, 1)), tf.float32))[0])  # (iterator, progress)
        return n * rows / (time.perf_counter() - t)

    return run


def modernbert_runner(batch, seq: int):
    from bert_keras.modernbert.encoder import ModernBertEncoder
    from bert_keras.modernbert.heads import ModernBertMaskedLM
    from bert_keras.pretraining_model import mlm_only_loss

    encoder = ModernBertEncoder(V, hidden_size=H, intermediate_size=MB_FF, num_hidden_layers=L, num_attention_heads=A,
                                max_position_embeddings=max(seq, 512))
    return trainer_runner(ModernBertMaskedLM(encoder), mlm_only_loss, batch)


def bert_runner(batch, seq: int):
    from bert_keras.encoder import build_encoder
    from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss

    cfg = BertConfig(hidden_size=H, num_layers=L, num_heads=A, intermediate_size=FF, max_position_embeddings=max(seq, 512))
    return trainer_runner(BertPretrainingModel(build_encoder(cfg, V)), pretraining_loss, batch)


def keras_hub_runner(batch, seq: int):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(vocabulary_size=V, num_layers=L, num_heads=A, hidden_dim=H,
                                             intermediate_dim=FF, max_sequence_length=max(seq, 512))
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=["accuracy"])
    x = {k: batch[getattr(schema, k.upper())] for k in ("token_ids", "segment_ids", "padding_mask", "mask_positions")}
    ds = tf.data.Dataset.from_tensors((x, batch[schema.MASK_IDS], batch[schema.MASK_WEIGHTS])).repeat()
    rows = len(batch[schema.TOKEN_IDS])

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    timer = StepTimes()

    def run(n: int) -> float:
        timer.ends = []  # from the end of the first step to the end of the last (bench_pretrain: fit's set-up)
        model.fit(ds, steps_per_epoch=n + 1, epochs=1, verbose=0, callbacks=[timer])
        return n * rows / (timer.ends[-1] - timer.ends[0])

    return run


def hf_parity() -> float:
    """Max |logit difference| between transformers' eager ModernBertForMaskedLM and bertpipe's load of it."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from bert_keras.modernbert.weights import load_hf_checkpoint

    torch.manual_seed(0)
    cfg = ModernBertConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                           num_attention_heads=4, local_attention=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           cls_token_id=1, sep_token_id=2, attn_implementation="eager")
    hf = ModernBertForMaskedLM(cfg).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 500, size=(4, 200))
    mask = np.ones_like(ids)
    mask[1, 120:] = mask[3, 40:] = 0
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model, _ = load_hf_checkpoint(tmp)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = model({schema.TOKEN_IDS: ids.astype(np.int32), schema.PADDING_MASK: mask.astype(np.int32),
                  schema.MASK_POSITIONS: np.tile(np.arange(200, dtype=np.int32), (4, 1))})["mlm_logits"].numpy()
    return float(np.abs(ours - ref)[mask.astype(bool)].max())


def main() -> None:
    from bert_keras.distribute import precision_scope, resolve_precision, set_precision

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3, help="steps per timing window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per contender (median)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_bfloat16"])
    parser.add_argument("--no-keras-hub", action="store_true", help="skip the keras-hub contender")
    parser.add_argument("--value-work", help="bench_pretraining_value.py's WORK with its classic and modernbert runs")
    parser.add_argument("--long-documents", action="store_true", help="also the long-document comparison")
    parser.add_argument("--size", default="small", help="bench_pretraining_value.py's --size of those runs")
    parser.add_argument("--work", default="/tmp/bench-modernbert", help="long-document runs (resumable)")
    parser.add_argument("--tasks-dir", default=os.path.join(REPO, "data", "sotu_tasks"))
    parser.add_argument("--repeats", type=int, default=3, help="long documents: fine-tuning repeats")
    parser.add_argument("--long-epochs", type=float, default=6, help="long documents: fine-tuning epochs")
    parser.add_argument("--long-lr", type=float, default=5e-4, help="long documents: peak learning rate (the "
                        "pretraining-value bench's rate for this size)")
    parser.add_argument("--quick", action="store_true", help="long documents: a smoke run (few documents, 1 repeat)")
    args = parser.parse_args()
    if args.long_documents and not args.value_work:
        parser.error("--long-documents needs --value-work (the pretrained encoders it fine-tunes)")
    policy = set_precision(resolve_precision(args.precision))
    print(describe_machine(), f"| precision {policy}")
    with precision_scope("float32"):  # parity is an fp32 figure, whatever the training steps run in
        parity = hf_parity()
    print(f"HF parity: max |MLM logit difference| {parity:.2e}")
    names = ["modernbert", "bertpipe_bert"] + ([] if args.no_keras_hub else ["keras_hub_bert"])
    builders = {"modernbert": modernbert_runner, "bertpipe_bert": bert_runner, "keras_hub_bert": keras_hub_runner}
    rows, ratios = [], {}
    print(f"{'seq':>6}{'batch':>7}" + "".join(f"{n + ' seq/s':>22}" for n in names) + f"{'MB/BERT':>9}")
    for seq in args.seqs:
        batch = synthetic_batch(np.random.default_rng(0), seq)
        rates = side_by_side([builders[n](batch, seq) for n in names], args.steps, args.rounds)
        for name, rate in zip(names, rates, strict=True):
            rows.append({"contender": name, "seq": seq, "batch": len(batch[schema.TOKEN_IDS]), "precision": policy,
                         "seq_per_s": round(rate, 3), "tokens_per_s": round(rate * seq, 1)})
        ratios[seq] = rates[0] / rates[1]
        work = train_flops(seq, "bert") / train_flops(seq, "modernbert")  # BERT's FLOPs / ModernBERT's
        rows.append({"seq": seq, "bert_flops_over_modernbert_flops": round(work, 3)})
        print(f"{seq:>6}{len(batch[schema.TOKEN_IDS]):>7}" + "".join(f"{r:>22.2f}" for r in rates)
              + f"{ratios[seq]:>8.2f}x   (FLOP ratio {work:.2f}x)", flush=True)
    targets = [target("hf_parity_max_abs", parity, "<= 1e-4", what="ModernBERT vs transformers' eager "
                      "ModernBertForMaskedLM, max abs MLM logit difference, fp32", peer="transformers 5",
                      bertpipe=f"{parity:.1e}")]
    by = {(r.get("contender"), r["seq"]): r for r in rows}
    for seq in ratios:
        mb, bert = by[("modernbert", seq)], by[("bertpipe_bert", seq)]
        hub = by.get(("keras_hub_bert", seq))
        peer = f"bertpipe BERT {bert['tokens_per_s']:,.0f} tok/s" + (
            f"; keras-hub BertMaskedLM {hub['tokens_per_s']:,.0f}" if hub else "")
        targets.append(target(f"seq{seq}_tokens_per_s_vs_bert", round(ratios[seq], 3), ">= 2" if seq == 1024 else None,
                              what=f"ModernBERT training step, {policy}, 4L/256/4H, seq {seq}, {TOKENS} tokens a batch "
                                   f"(FLOP ratio {train_flops(seq, 'bert') / train_flops(seq, 'modernbert'):.2f}x)",
                              peer=peer, bertpipe=f"{mb['tokens_per_s']:,.0f} tok/s"))
    if args.value_work:
        from pretraining_value_report import curve_of, time_to_classic_loss

        curves = {s: c for s in ("classic", "modernbert") if (c := curve_of(args.value_work, s)) is not None}
        if set(curves) != {"classic", "modernbert"}:
            raise SystemExit(f"--value-work {args.value_work}: no finished classic and modernbert pretraining runs")
        from heldout_rescore import context_ablation, rescore

        shared = os.path.join(args.value_work, "modernbert", "prepare", "data")  # ModernBERT's held-out windows
        reach = time_to_classic_loss(curves, "modernbert", rescore(os.path.join(args.value_work, "classic"), shared))
        for start, curve in curves.items():
            # The leak check beside each loss: with the context replaced by random tokens it must rise.
            ablation = context_ablation(os.path.join(args.value_work, start), shared)
            rows.append({"pretraining_run": start, "tokens": curve["final_tokens"],
                         "train_seconds": round(curve["train_seconds"], 1),
                         "heldout_mlm_loss_own_set": round(curve["final_loss"], 4),
                         "heldout_mlm_loss_shared_set": round(ablation["loss"], 4),
                         "context_ablated_loss_shared_set": round(ablation["context_ablated_loss"], 4)})
        # Tokens, the conservative figure: ModernBERT costs less per token than the classic BERT (the step rows),
        # and the seconds of runs that shared the machine differently do not compare (they are in the rows).
        value = reach["tokens_ratio"] if reach["tokens_ratio"] is not None else "not reached"
        bound = (f" (reached by its first held-out evaluation, at {value:.0%} of the tokens: the ratio is at most "
                 "this)") if reach["upper_bound"] else ""
        targets.append(target("time_to_classic_loss_ratio", value, "<= 0.5",
                              what=f"ModernBERT's tokens to the classic BERT recipe's final held-out MLM loss "
                                   f"({reach['classic_final_loss']:.3f}, rescored on ModernBERT's held-out windows, "
                                   f"15% masks; {reach['classic_own_set_loss']:.3f} on its own pair layout) / the "
                                   f"classic's {curves['classic']['final_tokens']:,} tokens of sotu{bound}",
                              peer=f"classic BERT final {reach['classic_final_loss']:.3f}",
                              bertpipe=f"ModernBERT final {reach['final_loss']:.3f}"))
    if args.long_documents:
        from modernbert_long import long_documents

        rows_l, targets_l = long_documents(args)
        rows += rows_l
        targets += targets_l
    write_results("modernbert", rows, targets, per_machine=True,
                  notes=f"precision {policy}; {TOKENS} tokens per batch; {args.steps} steps per window, "
                        f"{args.rounds} alternating rounds (median)")


if __name__ == "__main__":
    main()
