"""The long-document part of bench_modernbert.py: ModernBERT reading a whole section in one 2,048-token window vs
classic BERT's chunk + pool, on the same real documents, fine-tuned from the same pretraining budget.

Documents: the first SECTION_WORDS words of every State of the Union speech of the train and test presidents
(`data/sotu_tasks/splits.json`: the split of the sotu tasks, so no test president's speech is ever trained or
pretrained on), labelled by era (the sotu `era` task's four periods). Train: the train presidents' speeches (dev:
15% of them by speech, what chooses each repeat's checkpoint); test: the test presidents', scored once per repeat.

Contenders, each through bertpipe's own CLI (`finetune` then `export`, `repeats` runs, TF-IDF beside them):
  modernbert_2048   `classification`, max_seq_length 2,048: the section in one window (RoPE, window 128, global
                    attention every 3rd layer); encoder: the pretraining-value bench's `modernbert` run
  bert_chunk_pool   `long_document`, windows of 128 (BERT's position table was pretrained at 128) every 126 pieces
                    (no overlap), up to 16 windows = 2,016 pieces, attention pooling; encoder: that bench's `best`
                    run (the budget recipe, same size, same tokens)
  modernbert_2048_ext  as modernbert_2048, from that `modernbert` run continued for 16% more tokens on 2,048-token
                    windows (EXTEND: ModernBERT's own recipe extends its context at the end of pretraining; the
                    128-token BERT has no such phase to take), then fine-tuned the same way
Seconds per document: the exported SavedModels (raw text in, probabilities out) on the test sections one at a
time and in batches of 8, alternating in rounds in this process (median); plus fine-tuning seconds per training
document-epoch from each run's record.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import yaml

SECTION_WORDS = 1500  # about 1,900 pieces of the bench's 8k WordPiece vocab: inside both contenders' 2,0xx
TASK = "era_sections"
CHUNK = {"type": "long_document", "max_seq_length": 128, "doc_stride": 126, "max_chunks": 16, "pooling": "attention"}
WHOLE = {"type": "classification", "max_seq_length": 2048}
# The `modernbert_2048_ext` contender: ModernBERT's own recipe extends the context after the short-sequence phase
# (1,024 -> 8,192 tokens over its last ~15% of tokens); here the 128-token run continues for 16% of its 20.48 M
# tokens on 2,048-token windows of the same corpus (MLM only, 30% dynamic masks, the recipe's schedule and rate).
EXTEND = {"tokens": 3_276_800,  # 200 steps of 8 x 2,048
          "prepare": {"max_seq_length": 2048, "objective": "mlm", "masked_lm_prob": 0.3, "dynamic": True,
                      "masking": "whole_word", "num_shards": 4, "holdout_fraction": 0.05},
          "pretrain": {"batch_size": 8, "schedule": "triangle", "decay_ratio": 0.25, "learning_rate": 1e-3,
                       "warmup_ratio": 0.0, "clip_norm": 0.5, "weight_decay": 0.01, "dropout": 0.0,
                       "attention_dropout": 0.0, "nsp": False, "eval_every": 50, "eval_steps": 4,
                       "eval_batch_size": 8, "log_every": 25, "checkpoint_every": 50, "packing": True}}


def build_sections(out_dir: str, tasks_dir: str, quick: bool) -> dict[str, str]:
    """WORK/era_sections/{train,test}.jsonl: one section per speech of the train / test presidents."""
    from beam_jobs.sotu_tasks import TASKS, president_of, read_speeches, sotu_dir

    with open(os.path.join(tasks_dir, "splits.json"), encoding="utf-8") as fh:
        split = json.load(fh)["presidents"]
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for speech in read_speeches(sotu_dir()):
        part = split[president_of(speech)]
        if part not in rows:
            continue
        words = " ".join(speech["paragraphs"]).split()[:SECTION_WORDS]
        rows[part].append({"text": " ".join(words), "label": TASKS["era"](speech), "speech": speech["fileid"],
                           "president": president_of(speech), "words": len(words)})
    if quick:  # a smoke run: a spread of a few speeches per part
        rows = {k: v[:: max(1, len(v) // 24)][:24] for k, v in rows.items()}
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for part, part_rows in rows.items():
        paths[part] = os.path.join(out_dir, f"{part}.jsonl")
        with open(paths[part], "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part_rows)
    return paths


def run_config(work: str, value_work: str, name: str, start: str, files: dict, model: dict, task: dict, args,
               extend: bool = False) -> str:
    """The bertpipe config of one contender (vocab given, finetune + export), written to WORK/<name>.yaml.
    `extend`: first continue `start`'s pretraining at 2,048 tokens (EXTEND), then fine-tune that encoder."""
    cfg = {
        "run": {"seed": 0, "experiment": "bertpipe-modernbert-long", "stages": ["vocab", "finetune", "export"]},
        "data": {"corpus": os.path.join(args.tasks_dir, "pretrain_corpus", "*.txt"), "documents": "file",
                 "lowercase": True, "strip_accents": True},
        "vocab": {"vocab_file": os.path.join(value_work, "classic", "vocab", "vocab.txt")},
        "model": model,
        "finetune": {TASK: {**task, "train_file": files["train"], "test_file": files["test"], "split_field": "speech",
                            "dev_fraction": 0.15, "epochs": args.long_epochs, "batch_size": 8, "eval_batch_size": 8,
                            "learning_rate": args.long_lr, "warmup_ratio": 0.1, "weight_decay": 0.01,
                            "repeats": 1 if args.quick else args.repeats, "baselines": ["tfidf"],
                            "init": os.path.join(value_work, start, "pretrain", "encoder.weights.h5")}},
    }
    if extend:
        cfg["run"]["stages"] = ["vocab", "prepare", "pretrain", "finetune", "export"]
        cfg["model"] = {**model, "init_from": os.path.join(value_work, start, "pretrain")}
        cfg["prepare"] = {**EXTEND["prepare"], "dupe_factor": 1}
        tokens = EXTEND["tokens"] // 16 if args.quick else EXTEND["tokens"]
        cfg["pretrain"] = {**EXTEND["pretrain"], "budget": f"{tokens} tokens"}
        cfg["finetune"][TASK]["init"] = "pretrained"
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def serving_seconds(saved: dict[str, str], texts: list[str], rounds: int) -> dict[str, dict]:
    """Per contender: median seconds per document one at a time, and at batches of 8, over alternating rounds."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the exported tokenizer's ops)

    fns = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in saved.items()}
    for fn in fns.values():  # trace / warm up both shapes outside the timing
        fn(text=tf.constant(texts[:1]))
        fn(text=tf.constant(texts[:8]))
    one, eight = {n: [] for n in fns}, {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            began = time.perf_counter()
            for text in texts:
                fn(text=tf.constant([text]))
            one[name].append((time.perf_counter() - began) / len(texts))
            began = time.perf_counter()
            for i in range(0, len(texts), 8):
                fn(text=tf.constant(texts[i:i + 8]))
            eight[name].append((time.perf_counter() - began) / len(texts))
    return {n: {"s_per_doc_single": round(statistics.median(one[n]), 4),
                "s_per_doc_batch8": round(statistics.median(eight[n]), 4)} for n in fns}


def long_documents(args) -> tuple[list[dict], list[dict]]:
    """Run (or resume) both contenders; rows and the long-document targets."""
    from bench_pretraining_value import MODERNBERT_SIZES, SIZES, bertpipe_run
    from results import target

    work = os.path.join(args.work, "long")
    value_work = args.value_work
    for start in ("best", "modernbert"):
        if not os.path.exists(os.path.join(value_work, start, "pretrain", "encoder.weights.h5")):
            raise SystemExit(f"--long-documents fine-tunes the pretraining-value bench's `{start}` encoder: none in "
                             f"{value_work}/{start}; run bench/bench_pretraining_value.py --starts classic best "
                             f"modernbert --work {value_work} first")
    files = build_sections(os.path.join(work, TASK), args.tasks_dir, args.quick)
    contenders = {"modernbert_2048": ("modernbert", MODERNBERT_SIZES[args.size], WHOLE, False),
                  "bert_chunk_pool": ("best", {**SIZES[args.size][0], "normalize_first": True}, CHUNK, False),
                  "modernbert_2048_ext": ("modernbert", MODERNBERT_SIZES[args.size], WHOLE, True)}
    records = {}
    for name, (start, model, task, extend) in contenders.items():
        result_path = os.path.join(work, name, "finetune", TASK, "finetune_result.json")
        if not os.path.exists(os.path.join(work, name, "export", TASK)):
            print(f"long documents: {name} ({'2,048-token pretraining, ' if extend else ''}fine-tune + export) ...",
                  flush=True)
            bertpipe_run(run_config(work, value_work, name, start, files, model, task, args, extend), work, name)
        with open(result_path, encoding="utf-8") as fh:
            records[name] = json.load(fh)
    with open(files["test"], encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    timed = ("modernbert_2048", "bert_chunk_pool")  # the extended run is the same architecture: the same speed
    speed = serving_seconds({n: os.path.join(work, n, "export", TASK) for n in timed}, texts,
                            1 if args.quick else args.rounds)
    rows = []
    for name, rec in records.items():
        main = rec["test"]["main"]
        runs = rec["runs"]
        train_docs = rec["records"]["train"]
        per_doc_epoch = [r["train_seconds"] / (train_docs * args.long_epochs) for r in runs]
        rows.append({"contender": name, "task": f"{TASK} ({SECTION_WORDS} words a document)",
                     "test_accuracy_mean": round(100 * main["mean"], 2), "test_accuracy_std": round(100 * main["std"], 2),
                     "test_accuracy_runs": [round(100 * v, 2) for v in main["runs"]],
                     "documents": rec["records"], "skipped": rec.get("skipped"),
                     "train_s_per_doc_epoch": round(float(np.mean(per_doc_epoch)), 4), **speed.get(name, {})})
        if contenders[name][3]:  # the 2,048-token pretraining it continued with
            with open(os.path.join(work, name, "pretrain", "pretrain_result.json"), encoding="utf-8") as fh:
                extended = json.load(fh)
            rows[-1].update(extra_pretrain_tokens=extended["step"] * extended["global_batch_size"] * extended["seq_length"],
                            extra_pretrain_heldout_mlm_loss=round(extended.get("eval_mlm_loss") or 0, 4))
    tfidf = records["modernbert_2048"]["test"].get("tfidf")
    if tfidf:
        rows.append({"contender": "tfidf", "test_accuracy_mean": round(100 * tfidf["mean"], 2),
                     "test_accuracy_std": round(100 * tfidf["std"], 2)})
    by = {r["contender"]: r for r in rows}
    mb, bert, ext = by["modernbert_2048"], by["bert_chunk_pool"], by["modernbert_2048_ext"]
    gap = round(mb["test_accuracy_mean"] - bert["test_accuracy_mean"], 2)
    noise = round(max(mb["test_accuracy_std"], bert["test_accuracy_std"]), 2)
    targets = [
        target("long_doc_accuracy_vs_chunk_pool_points", gap, ">= 0",
               what=f"ModernBERT one 2,048 window minus BERT chunk + pool (16 x 128), era of {SECTION_WORDS}-word "
                    f"sotu sections, both pretrained on the same 20.48 M tokens, test points, mean of "
                    f"{len(mb['test_accuracy_runs'])} (larger std {noise}"
                    + (f"; TF-IDF {by['tfidf']['test_accuracy_mean']:.2f}" if "tfidf" in by else "")
                    + f"; ModernBERT after {ext['extra_pretrain_tokens']:,} more pretraining tokens at 2,048: "
                      f"{ext['test_accuracy_mean']:.2f} ± {ext['test_accuracy_std']:.2f})",
               peer=f"BERT chunk+pool {bert['test_accuracy_mean']:.2f} ± {bert['test_accuracy_std']:.2f}",
               bertpipe=f"ModernBERT {mb['test_accuracy_mean']:.2f} ± {mb['test_accuracy_std']:.2f}"),
        target("long_doc_accuracy_ext_vs_chunk_pool_points",
               round(ext["test_accuracy_mean"] - bert["test_accuracy_mean"], 2), ">= 0",
               what=f"ModernBERT after a 2,048-token pretraining phase ({ext['extra_pretrain_tokens']:,} more tokens, "
                    f"16% of the equal budget; BERT's 128-token windows have no such phase) minus BERT chunk + pool, "
                    f"test points, mean of {len(ext['test_accuracy_runs'])} (larger std "
                    f"{max(ext['test_accuracy_std'], bert['test_accuracy_std']):.2f})",
               peer=f"BERT chunk+pool {bert['test_accuracy_mean']:.2f} ± {bert['test_accuracy_std']:.2f}",
               bertpipe=f"ModernBERT, extended {ext['test_accuracy_mean']:.2f} ± {ext['test_accuracy_std']:.2f}"),
        target("long_doc_seconds_per_doc_vs_chunk_pool", round(mb["s_per_doc_single"] / bert["s_per_doc_single"], 3),
               "< 1", what="exported SavedModels, raw text, one test section a request (median of alternating "
                           f"rounds); batches of 8: {mb['s_per_doc_batch8']:.3f} vs {bert['s_per_doc_batch8']:.3f} "
                           f"s/doc; fine-tuning {mb['train_s_per_doc_epoch']:.3f} vs "
                           f"{bert['train_s_per_doc_epoch']:.3f} s per document-epoch",
               peer=f"BERT chunk+pool {bert['s_per_doc_single']:.3f} s/doc",
               bertpipe=f"ModernBERT {mb['s_per_doc_single']:.3f} s/doc"),
    ]
    return rows, targets
