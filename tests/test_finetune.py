"""Each task type trains and evaluates end to end on shipped real data (tiny models, few steps)."""

import collections
import json
import os

import numpy as np
import pytest

from beam_jobs.finetune_data import prepare_task_data
from bert_keras.export_finetuned import export_finetuned
from bert_keras.finetune import run_finetune
from pipeline.contract.config import task_config
from tests.harness import read_jsonl, tiny_model_config, write_jsonl

TINY = tiny_model_config(dropout=0.0, attention_dropout=0.0)
FAST = dict(precision="float32", log_every=1, checkpoint_every=1000, warmup_ratio=0.0, eval_batch_size=64)


def finetune(tmp_path, task, vocab, init=None, model=TINY, name="task"):
    dirs = prepare_task_data(task, vocab, True, str(tmp_path / "data"), 0)
    data_dirs = {split: str(tmp_path / "data" / split) for split in dirs}
    return run_finetune(name, task, model, vocab, True, data_dirs, init, str(tmp_path / "run"), 0)


def losses(result_dir, run="main-seed0"):
    with open(os.path.join(result_dir, "runs", run, "history.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line)["loss"] for line in fh]


def check_reported_metrics(out, labels):
    """Test accuracy and the confusion matrix agree with the per-example test predictions written to disk."""
    with open(out.paths.reports["predictions_sample"], encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    test = out.chosen.test
    assert len(rows) == test["examples"] == out.records["test"]  # small test sets are written whole
    assert test["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert out.test["main"].runs == [test["accuracy"]]
    pairs = collections.Counter((r["label"], r["predicted"]) for r in rows)
    cm = out.chosen.details["confusion_matrix"]
    assert cm == [[pairs[(t, p)] for p in labels] for t in labels]
    # Errors first in the sample.
    correct = [r["correct"] for r in rows]
    assert correct == sorted(correct)


def test_sentiment_classification_trains_and_reports(tmp_path, data_dir):
    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    reviews = os.path.join(data_dir, "reviews")
    # 64 positive + 32 negative reviews for training (balanced class weights), 24 + 24 to evaluate.
    def pos(r):
        return r["label"] == "positive"

    def neg(r):
        return r["label"] == "negative"

    train = write_jsonl(tmp_path / "train.jsonl", read_jsonl(f"{reviews}/train.jsonl", 64, pos)
                        + read_jsonl(f"{reviews}/train.jsonl", 32, neg))
    test = write_jsonl(tmp_path / "test.jsonl", read_jsonl(f"{reviews}/test.jsonl", 24, pos)
                       + read_jsonl(f"{reviews}/test.jsonl", 24, neg))
    # A random-init tiny BERT plateaus for ~100 steps on these reviews before its loss falls: 240 steps.
    task = task_config(type="classification", train_file=train, test_file=test, max_seq_length=48, batch_size=16,
                      epochs=40, eval_every=60, learning_rate=1e-3, class_weights="balanced", **FAST)
    out = finetune(tmp_path, task, vocab)
    loss = losses(tmp_path / "run")
    assert np.mean(loss[-10:]) < 0.75 * np.mean(loss[:10])  # it learns (memorizes) its training reviews
    # 'balanced': n / (classes * count) over the training split (the 96 reviews less the dev ones)
    with open(tmp_path / "data" / "train" / "examples.jsonl", encoding="utf-8") as fh:
        counts = collections.Counter(json.loads(line)["label"] for line in fh)
    n = sum(counts.values())
    assert n == 96 - out.records["dev"] and out.records["dev"] == round(0.1 * 96)
    assert out.chosen.class_weights == pytest.approx({k: n / (2 * c) for k, c in counts.items()})
    assert out.labels == ["negative", "positive"]
    check_reported_metrics(out, out.labels)
    assert out.summary.startswith("test accuracy ") and "(1 run; chosen on dev) | tfidf " in out.summary
    for key in ("confusion_matrix", "per_class_csv", "learning_curves", "predictions_sample", "runs_csv", "scores"):
        assert os.path.getsize(out.paths.reports[key]) > 0
    with open(out.paths.reports["per_class_json"], encoding="utf-8") as fh:
        assert sum(v["support"] for v in json.load(fh).values()) == 48  # the test set
    with open(out.paths.reports["dev_metrics"], encoding="utf-8") as fh:
        assert json.load(fh)["examples"] == out.records["dev"]
    with open(tmp_path / "run" / "runs" / "main-seed0" / "eval_history.jsonl", encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh]
    assert [e["step"] for e in evals] == [60, 120, 180, 240]  # eval_every=60
    assert {e["split"] for e in evals} == {"dev"} and {e["examples"] for e in evals} == {out.records["dev"]}
    # The export stage rebuilds the model from the result alone and checks the SavedModel answers like it.
    saved_model = export_finetuned(out.export, str(tmp_path / "export"))
    assert os.path.exists(os.path.join(saved_model, "saved_model.pb"))


def test_pair_classification_uses_both_segments(tmp_path, data_dir):
    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    snli = os.path.join(data_dir, "snli", "snli_sample.jsonl")
    # No dev split: all three pairs train, and the test set is the same three (memorized).
    task = task_config(type="pair", train_file=snli, test_file=snli, dev_fraction=0, max_seq_length=48, batch_size=3,
                      epochs=150, learning_rate=1e-3, **FAST)
    out = finetune(tmp_path, task, vocab)
    loss = losses(tmp_path / "run")
    assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:3])
    # The three SNLI pairs share text_a: only text_b (segment B) tells them apart, so
    # fitting all three means the model reads the second segment.
    assert out.chosen.test["accuracy"] == 1.0 and out.chosen_by == "last step (no dev split)"
    assert "(1 run; last step, no dev split)" in out.summary
    check_reported_metrics(out, ["contradiction", "entailment", "neutral"])
    with open(out.paths.reports["predictions_sample"], encoding="utf-8") as fh:
        assert all(r["text_b"] for r in map(json.loads, fh))


def test_extractive_qa_on_squad_sample(tmp_path, data_dir):
    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    squad = os.path.join(data_dir, "squad", "squad_sample.json")
    # Windows of 64 tokens with stride 24: every context is split into several windows.
    task = task_config(type="qa", train_file=squad, test_file=squad, dev_fraction=0, max_seq_length=64, doc_stride=24,
                      max_query_length=20, batch_size=8, epochs=40, learning_rate=1e-3, **FAST)
    out = finetune(tmp_path, task, vocab)
    loss = losses(tmp_path / "run")
    assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:3])
    assert out.records["test"] > 5  # more windows than questions
    with open(out.paths.reports["predictions_sample"], encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 5
    from bert_keras.metrics import score_answer

    em = [score_answer(r["predicted"], r["answers"])[0] for r in rows]
    f1 = [score_answer(r["predicted"], r["answers"])[1] for r in rows]
    test = out.chosen.test
    assert test["exact_match"] == pytest.approx(100 * np.mean(em))
    assert test["f1"] == pytest.approx(100 * np.mean(f1))
    assert test["f1"] >= 60.0  # trained on these very questions
    with open(squad, encoding="utf-8") as fh:
        contexts = [p["context"] for a in json.load(fh)["data"] for p in a["paragraphs"]]
    for r in rows:  # answers are character spans of the original context
        if r["predicted"]:
            assert any(c[r["char_start"]: r["char_start"] + len(r["predicted"])] == r["predicted"] for c in contexts)
    assert out.summary.startswith("test F1 ") and "tfidf" not in out.summary  # no baseline for QA


def test_long_document_classification_pools_chunks(tmp_path, data_dir):
    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    # Era of a State of the Union paragraph (before / after 1950): long paragraphs, 24 per era.
    rows = read_jsonl(os.path.join(data_dir, "sotu", "paragraphs.jsonl"), 10_000, keep=lambda r: len(r["text"]) > 600)
    for r in rows:
        r["era"] = "1900-1949" if r["year"] < 1950 else "1950-"
    picked = [r for r in rows if r["era"] == "1900-1949"][:24] + [r for r in rows if r["era"] == "1950-"][:24]
    train = write_jsonl(tmp_path / "docs.jsonl", picked)
    task = task_config(type="long_document", train_file=train, test_file=train, label_field="era",
                      max_seq_length=32, doc_stride=24, max_chunks=6, pooling="attention", batch_size=8, epochs=30,
                      eval_every=90, learning_rate=1e-3, **FAST)
    out = finetune(tmp_path, task, vocab)
    with open(tmp_path / "data" / "train" / "manifest.json", encoding="utf-8") as fh:
        manifest = json.load(fh)
    assert manifest["counts"]["chunks"] > 2 * manifest["counts"]["examples"]  # really several chunks each
    loss = losses(tmp_path / "run")
    assert np.mean(loss[-10:]) < 0.75 * np.mean(loss[:10])
    check_reported_metrics(out, out.labels)
