"""Distillation: the soft-target loss against a numpy reference, the student's start, and the whole stage.

The slow test runs `bertpipe run` over vocab (given), finetune (a tiny 2-layer teacher),
distill (a 1-layer student) and export, then asks the student's SavedModel raw text in a
fresh process that imports only tensorflow and tensorflow_text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.distill import (
    copy_from_teacher,
    distillation_loss,
    select_layers,
    soft_target_loss,
    student_encoder_spec,
)
from bert_keras.starting_weights import encoder_spec, rebuild_encoder
from bert_keras.task_models import LOGITS, classification_loss
from bert_keras.tasks import TASKS
from pipeline.contract.errors import UserError
from pipeline.contract.schema import CLS_WEIGHTS, LABEL, PADDING_MASK, SEGMENT_IDS, TOKEN_IDS
from tests.export_models import tiny_task_model
from tests.harness import BERT_VOCAB, bertpipe, tiny_project

# Fixed logits: (batch 3, instances 2, classes 3) with one padding instance in the last row.
TEACHER = np.array([[[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]],
                    [[-3.0, 4.0, 1.0], [1.5, 1.5, -2.0]],
                    [[0.0, 0.0, 5.0], [9.0, -9.0, 0.0]]], np.float32)
STUDENT = np.array([[[1.0, 0.0, 0.0], [0.3, -0.2, 0.1]],
                    [[-1.0, 2.0, 0.5], [0.0, 1.0, -1.0]],
                    [[0.5, -0.5, 2.0], [-4.0, 4.0, 1.0]]], np.float32)
REAL = np.array([[1, 1], [1, 1], [1, 0]], np.float32)
LABELS = np.array([[0, 2], [1, 0], [2, 0]], np.int32)


def kl_reference(teacher, student, temperature, real):
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per instance, float64, averaged over real instances."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(np.float64(teacher) / temperature)
    q = softmax(np.float64(student) / temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    return temperature**2 * (kl * real).sum() / real.sum()


def ce_reference(student, labels, real):
    logq = student - np.log(np.exp(np.float64(student)).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logq, labels[..., None], -1)[..., 0]
    return (ce * real).sum() / real.sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
def test_soft_target_loss_equals_the_numpy_reference(temperature):
    got = float(soft_target_loss(TEACHER, STUDENT, temperature, REAL))
    assert got == pytest.approx(kl_reference(TEACHER, STUDENT, temperature, REAL), rel=1e-5)
    assert float(soft_target_loss(TEACHER, TEACHER, temperature, REAL)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_mixes_soft_and_hard_terms_by_alpha(alpha):
    temperature = 3.0
    loss_fn = distillation_loss(classification_loss(), temperature, alpha)
    batch = {LABEL: tf.constant(LABELS), CLS_WEIGHTS: tf.constant(REAL)}
    loss, metrics = loss_fn(batch, {LOGITS: tf.constant(STUDENT), "teacher_logits": tf.constant(TEACHER)})
    want = alpha * kl_reference(TEACHER, STUDENT, temperature, REAL) + (1 - alpha) * ce_reference(STUDENT, LABELS, REAL)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["teacher_agreement"]) == pytest.approx(3 / 5)  # argmax agrees on 3 of the 5 real instances


def test_distillation_loss_gradient_reaches_only_the_student_logits():
    student = tf.Variable(STUDENT)
    teacher = tf.Variable(TEACHER)
    loss_fn = distillation_loss(classification_loss(), 2.0, 0.5)
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = loss_fn({LABEL: tf.constant(LABELS), CLS_WEIGHTS: tf.constant(REAL)},
                          {LOGITS: student, "teacher_logits": tf.stop_gradient(teacher)})
    assert tape.gradient(loss, teacher) is None
    grad = tape.gradient(loss, student).numpy()
    assert np.abs(grad[2, 1]).max() == 0.0  # the padding instance gives nothing
    assert np.abs(grad[0, 0]).max() > 0


def test_layer_selection_first_and_spread():
    assert select_layers(6, 2, "first") == [0, 1]
    assert select_layers(6, 3, "spread") == [0, 2, 4]  # DistilBERT: one layer out of two
    assert select_layers(6, 2, "spread") == [0, 3]
    assert select_layers(12, 4, "spread") == [0, 3, 6, 9]
    with pytest.raises(UserError, match="distill.layers is 6 but the teacher has 6 layers"):
        select_layers(6, 6, "first")


def test_student_starts_from_the_teachers_first_layers_and_head():
    teacher = tiny_task_model("classification")  # 2 layers, hidden 32
    kind = TASKS["classification"]
    cfg = kind.config(type="classification", train_file="unused.jsonl")
    student = kind.build_model(cfg, rebuild_encoder(student_encoder_spec(encoder_spec(teacher.encoder), 1)), 2, 0.1)
    batch = {TOKEN_IDS: np.array([[101, 2307, 2143, 102, 0]], np.int32), SEGMENT_IDS: np.zeros((1, 5), np.int32),
             PADDING_MASK: np.array([[1, 1, 1, 1, 0]], np.int32)}
    student(batch, training=False)
    assert len(student.encoder.blocks) == 1
    copy_from_teacher(student, teacher, [1])
    for s, t in zip(student.encoder.blocks[0].weights, teacher.encoder.blocks[1].weights, strict=True):
        np.testing.assert_array_equal(s.numpy(), t.numpy())
    np.testing.assert_array_equal(student.head.weights[0].numpy(), teacher.head.weights[0].numpy())
    np.testing.assert_array_equal(student.encoder.token_embedding.embeddings.numpy(),
                                  teacher.encoder.token_embedding.embeddings.numpy())


# A fresh interpreter that cannot import bertpipe: the student must serve from tensorflow + tensorflow_text alone.
FRESH = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bert_keras", "pipeline", "beam_jobs", "keras_hub"):
            raise ImportError(f"{name} must not be needed to serve")
sys.meta_path.insert(0, Block())
import tensorflow as tf
import tensorflow_text  # noqa: F401
m = tf.saved_model.load(sys.argv[1])
out = m.signatures["serving_default"](text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({k: v.numpy().tolist() if v.dtype != tf.string else [x.decode() for x in v.numpy()]
                  for k, v in out.items()}))
"""


@pytest.mark.slow
def test_distilled_student_trains_exports_and_answers_raw_text_in_a_fresh_process(tmp_path):
    config = tiny_project(
        tmp_path, vocab={"vocab_file": BERT_VOCAB},
        run={"stages": ["vocab", "finetune", "distill", "export"]},
        finetune={"sentiment": {"init": "random", "repeats": 2, "dev_fraction": 0.2,
                                "distill": {"layers": 1, "temperature": 2.0, "alpha": 0.7, "epochs": 2}}})
    bertpipe("run", "--config", config)
    work = tmp_path / "run"
    record = json.loads((work / "distill" / "sentiment" / "stage.json").read_text())["outputs"]
    assert record["teacher"]["layers"] == 2
    assert [r["encoder"]["config"]["num_layers"] for r in record["runs"]] == [1, 1]  # 2 repeats, each a student
    assert all(r["starting_weights"].startswith("student of") for r in record["runs"])
    assert record["chosen_by"] == "dev accuracy"
    assert record["kept"] == pytest.approx(record["test"]["main"]["mean"] / record["teacher"]["test"]["mean"])
    assert "kept" in record["summary"] and "teacher" in record["summary"]

    exported = json.loads((work / "export" / "stage.json").read_text())["outputs"]["models"]
    assert set(exported) >= {"sentiment", "sentiment-student"}
    texts = ["a warm, funny and moving film", "dull, predictable and far too long", ""]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", FRESH, exported["sentiment-student"], json.dumps(texts)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(answer["label"]) == 3 and set(answer["label"]) <= {"negative", "positive"}
    np.testing.assert_allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-5)
    info = json.loads(open(os.path.join(exported["sentiment-student"], "assets.extra", "bertpipe_export.json")).read())
    assert info["labels"] == ["negative", "positive"]
    # ... and they are the in-memory student's answers on the SavedModel's own packed input
    from bert_keras.export_finetuned import rebuild_task_model
    from bert_keras.task_results import ExportSpec

    student = rebuild_task_model(ExportSpec.from_record(record["export"]))
    features = tf.saved_model.load(exported["sentiment-student"]).signatures["tokenize"](text=tf.constant(texts))
    logits = np.asarray(student(dict(features), training=False)[LOGITS], np.float64).reshape(3, -1)
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    from bert_keras.export import serving_precision
    from bert_keras.export_finetuned import VERIFY_ATOL

    assert info["precision"] == serving_precision("auto")  # bf16 matmuls on AMX CPUs: answers within bf16 rounding
    atol = 1e-5 if info["precision"] == "float32" else VERIFY_ATOL[info["precision"]]
    np.testing.assert_allclose(answer["probabilities"], want, atol=atol)
