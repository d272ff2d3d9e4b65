"""Short-text training, where packing pays: movie-review snippets at max length 128.

bertpipe packs the reviews (mean ~27 wordpieces with [CLS]/[SEP]) into shared
rows; keras-hub's BertTextClassifier with its standard preprocessor pads every
review to 128. Same encoder size (4 layers, hidden 256, 4 heads, intermediate
1024), 32 reviews per optimizer step on both sides (bertpipe: the rows those 32
reviews pack into), AdamW with the same warmup/decay schedule, the same precision
(`--precision auto`: what bertpipe's `precision: auto` picks on this CPU, mixed bf16
where it has native bf16, float32 else), random init, same epochs. Prints reviews/s and
held-out accuracy, and writes `bench/results/short_text.json` (target
`short_text_speed_vs_keras_hub` >= 3).

Preprocessing (tokenizing, padding / packing) runs once before the clock on
both sides, so the figures compare training steps.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/bench_short_text.py [--epochs 1] [--limit 0] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from results import describe_machine, target, write_results  # noqa: E402

from pipeline.contract import schema  # noqa: E402
from pipeline.contract.config import BertConfig, TrainConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "data", "vocab", "bert-base-uncased-vocab.txt")
SEQ, BATCH, MAX_INST = 128, 32, 16
MODEL = BertConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_position_embeddings=512)


def load(name: str, limit: int):
    with open(os.path.join(ROOT, "data", "reviews", name), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    rows = rows[:limit] if limit else rows
    return [r["text"] for r in rows], np.array([int(r["label"] == "positive") for r in rows], np.int32)


def unpacked_rows(texts, labels):
    from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids

    vocab = load_vocab(VOCAB)
    ids = special_ids(vocab)
    pieces = make_tokenizer(vocab).tokenize(tf.constant(texts)).to_list()
    n = len(texts)
    out = {schema.TOKEN_IDS: np.zeros((n, SEQ), np.int32), schema.SEGMENT_IDS: np.zeros((n, SEQ), np.int32),
           schema.PADDING_MASK: np.zeros((n, SEQ), np.int32), schema.LABEL: labels[:, None],
           schema.EXAMPLE_ID: np.arange(n, dtype=np.int32)[:, None]}
    for i, p in enumerate(pieces):
        toks = [ids.cls, *p[: SEQ - 2], ids.sep]
        out[schema.TOKEN_IDS][i, : len(toks)] = toks
        out[schema.PADDING_MASK][i, : len(toks)] = 1
    return out


def schedule(steps: int):
    from bert_keras.optimization import make_schedule

    return make_schedule(TrainConfig(learning_rate=1e-4, warmup_ratio=0.1), steps)


def bertpipe(train, test, epochs: int, seed: int, policy: str):
    from bert_keras.encoder import build_encoder
    from bert_keras.optimization import build_optimizer
    from bert_keras.packing import pack_window
    from bert_keras.task_models import SequenceClassifier, classification_loss
    from bert_keras.trainer import LoopSettings, Trainer

    rng = np.random.default_rng(seed)
    n = len(train[schema.LABEL])
    batches = []
    for _ in range(epochs):  # 32 reviews per step, packed into as few rows as they fit
        order = rng.permutation(n)
        for s in range(0, n - BATCH + 1, BATCH):
            window = {k: v[order[s: s + BATCH]] for k, v in train.items()}
            batches.append(pack_window(window, seq_length=SEQ, max_instances=MAX_INST, max_predictions=0, rng=rng))
    rows = sum(b[schema.TOKEN_IDS].shape[0] for b in batches)
    padding = 1 - sum((b[schema.PADDING_MASK] > 0).sum() for b in batches) / (rows * SEQ)
    spec = {k: tf.TensorSpec([None, *v.shape[1:]], tf.as_dtype(v.dtype)) for k, v in batches[0].items()}
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec).prefetch(4)

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    model = SequenceClassifier(build_encoder(MODEL, 30522), 2)
    cfg = TrainConfig(batch_size=BATCH, learning_rate=1e-4, warmup_ratio=0.1, log_every=10**6,
                      checkpoint_every=10**6)
    opt = build_optimizer(cfg, len(batches), model.trainable_variables)
    trainer = Trainer(model, classification_loss(), opt, tf.distribute.get_strategy(), tempfile.mkdtemp(),
                      LoopSettings.from_config(cfg), log_fn=lambda s: None)
    t = time.perf_counter()
    trainer.fit(ds, len(batches), rows_per_step=BATCH)
    seconds = time.perf_counter() - t
    test_ds = tf.data.Dataset.from_tensor_slices({**test, schema.CLS_POSITIONS: np.zeros_like(test[schema.LABEL]),
                                                  schema.CLS_WEIGHTS: np.ones(test[schema.LABEL].shape, np.float32)})
    acc = trainer.evaluate(test_ds.batch(64))["accuracy"]
    return len(batches) * BATCH / seconds, acc, padding, rows / len(batches)


def keras_hub(texts, labels, test_texts, test_labels, epochs: int, seed: int, policy: str):
    import keras_hub

    from bert_keras.tokenizer import load_vocab

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=load_vocab(VOCAB), lowercase=True)
    pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=SEQ)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=30522, num_layers=4, num_heads=4, hidden_dim=256,
                                             intermediate_dim=1024, max_sequence_length=512)
    model = keras_hub.models.BertTextClassifier(backbone, 2, preprocessor=None)
    steps = epochs * (len(texts) // BATCH)
    model.compile(optimizer=keras.optimizers.AdamW(schedule(steps), weight_decay=0.01, epsilon=1e-6),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    # The standard preprocessor (pads to 128), run once and cached so only training is timed.
    train = tf.data.Dataset.from_tensor_slices((texts, labels)).shuffle(len(texts), seed=seed)
    train = train.batch(BATCH, drop_remainder=True).map(pre).cache()
    for _ in train:
        pass
    test = tf.data.Dataset.from_tensor_slices((test_texts, test_labels)).batch(64).map(pre).cache()
    t = time.perf_counter()
    model.fit(train.prefetch(4), epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t
    acc = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    return steps * BATCH / seconds, acc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training reviews")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_bfloat16"])
    args = parser.parse_args()
    from bert_keras.distribute import resolve_precision

    policy = resolve_precision(args.precision)
    print(f"machine: {describe_machine()}; precision {policy}")
    texts, labels = load("train.jsonl", args.limit)
    test_texts, test_labels = load("test.jsonl", 0)
    train, test = unpacked_rows(texts, labels), unpacked_rows(test_texts, test_labels)
    lengths = train[schema.PADDING_MASK].sum(1)
    print(f"{len(texts)} training reviews, {len(test_texts)} test; mean {lengths.mean():.1f} tokens per review "
          f"incl. [CLS]/[SEP]; padding at 128: {1 - lengths.mean() / SEQ:.1%}; {args.epochs} epoch(s), {policy}")
    ours, our_acc, padding, rows = bertpipe(train, test, args.epochs, args.seed, policy)
    print(f"bertpipe packed : {ours:6.1f} reviews/s, test accuracy {our_acc:.3f} "
          f"({rows:.1f} rows per 32 reviews, padding {padding:.1%})", flush=True)
    hub, hub_acc = keras_hub(texts, labels, test_texts, test_labels, args.epochs, args.seed, policy)
    print(f"keras-hub padded: {hub:6.1f} reviews/s, test accuracy {hub_acc:.3f}")
    print(f"ratio: {ours / hub:.2f}x reviews/s, accuracy {our_acc - hub_acc:+.3f}")
    pad_128 = float(1 - lengths.mean() / SEQ)
    write_results("short_text", [
        {"side": "keras-hub", "padding": "to 128", "reviews_per_s": hub, "test_accuracy": hub_acc,
         "padding_fraction": pad_128},
        {"side": "bertpipe", "padding": "packed", "reviews_per_s": ours, "test_accuracy": our_acc,
         "padding_fraction": float(padding), "rows_per_32_reviews": float(rows)},
    ], [
        target("short_text_speed_vs_keras_hub", round(ours / hub, 3), ">= 3",
               what=f"short texts (movie reviews, {args.epochs} epoch, {policy}), packing vs padding to 128",
               peer=f"keras-hub BertTextClassifier {hub:.1f} reviews/s, acc {hub_acc:.3f}",
               bertpipe=f"{ours:.1f} reviews/s, acc {our_acc:.3f} (padding {pad_128:.0%} -> {padding:.0%})"),
        target("short_text_accuracy_diff", round(float(our_acc - hub_acc), 4), None,
               what="same, test accuracy bertpipe - keras-hub (one seed)"),
    ], notes=f"{len(texts)} training reviews, {len(test_texts)} test, seed {args.seed}")


if __name__ == "__main__":
    main()
