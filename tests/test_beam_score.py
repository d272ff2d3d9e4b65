"""Beam batch scoring with RunInference on the DirectRunner: same answers as the signature, bad lines set aside."""

from __future__ import annotations

import glob
import json

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.score import SignatureModelHandler, score_jsonl
from bert_keras.export import export_task
from tests.export_models import LABELS, REPO, SEQ, VOCAB, tiny_task_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "cls"
    export_task(tiny_task_model("classification"), "classification", VOCAB, True, LABELS, SEQ, str(out))
    return str(out)


def test_handler_batches_strings_through_the_signature(model_dir):
    texts = [("a fine film",), ("",), ("dull and slow",), ("\u00e9t\u00e9",), ("x " * 5000,)]
    handler = SignatureModelHandler(model_dir, ["text"], max_batch_size=2)
    assert handler.batch_elements_kwargs() == {"max_batch_size": 2}
    with test_pipeline.TestPipeline() as p:
        labels = (
            p
            | beam.Create(texts)
            | RunInference(handler)
            | beam.Map(lambda r: (r.example[0][:20], r.inference["label"], len(r.inference["probabilities"])))
        )
        serve = tf.saved_model.load(model_dir).signatures["serving_default"]
        want = serve(text=tf.constant([t[0] for t in texts]))["label"].numpy()
        assert_that(labels, equal_to([(t[0][:20], w.decode(), 2) for t, w in zip(texts, want, strict=True)]))


def test_score_jsonl_writes_predictions_and_sets_bad_lines_aside(model_dir, tmp_path):
    reviews = [json.loads(line) for line in open(f"{REPO}/data/reviews/test.jsonl", encoding="utf-8")][:30]
    src = tmp_path / "in-0.jsonl"
    with open(src, "wb") as fh:
        for r in reviews:
            fh.write((json.dumps({"id": r["id"], "text": r["text"]}) + "\n").encode())
        fh.write(b'{"id": 1001, "text": "raw \xff bytes"}\n')
        fh.write(b'{"id": 1002, "text": "   "}\n')
        fh.write(b"not json\n")
        fh.write(b'{"id": 1003, "body": "wrong field"}\n')
    counts = score_jsonl(model_dir, str(tmp_path / "in-*.jsonl"), str(tmp_path / "out" / "pred"),
                         ["--runner=DirectRunner"], max_batch_size=8)
    assert counts == {"scored": len(reviews) + 2, "invalid": 2}
    rows = [json.loads(line) for path in glob.glob(str(tmp_path / "out" / "pred-0*.jsonl")) for line in open(path)]
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == sorted([r["id"] for r in reviews] + [1001, 1002])
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    want = serve(text=tf.constant([r["text"] for r in reviews]))["probabilities"].numpy()
    np.testing.assert_allclose([by_id[r["id"]]["probabilities"] for r in reviews], want, atol=1e-6)
    invalid = [json.loads(line) for path in glob.glob(str(tmp_path / "out" / "pred-invalid*.jsonl")) for line in open(path)]
    reasons = sorted(r["error"] for r in invalid)
    assert len(reasons) == 2 and "lacks field 'text'" in reasons[0] and "not JSON" in reasons[1]
