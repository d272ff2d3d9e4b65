"""`bertpipe predict`: JSONL in, one prediction a line out, through the real CLI entry point."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from bert_keras.export import export_task
from pipeline.cli import main
from tests.export_models import LABELS, REPO, SEQ, VOCAB, tiny_task_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    export_task(tiny_task_model("classification"), "classification", VOCAB, True, LABELS, SEQ, str(root / "cls"))
    export_task(tiny_task_model("pair", 3), "pair", VOCAB, True, ["contradiction", "entailment", "neutral"], SEQ,
                str(root / "pair"))
    return root


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_predict_scores_every_line_like_the_signature(models, tmp_path):
    reviews = [json.loads(line) for line in open(f"{REPO}/data/reviews/test.jsonl", encoding="utf-8")][:40]
    odd = ["", "   ", "word " * 20000, "lone surrogate \udcff here", "Café naïve"]
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as fh:
        for r in reviews:
            fh.write((json.dumps(r) + "\n").encode())
        for i, text in enumerate(odd):
            fh.write((json.dumps({"id": f"odd{i}", "text": text}) + "\n").encode())
        fh.write(b'{"id": "raw", "text": "raw \xff\xfe bytes"}\n\n')  # invalid UTF-8 in the file, a blank line
    out = tmp_path / "out" / "pred.jsonl"
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out),
                 "--batch-size", "16"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == len(reviews) + len(odd) + 1
    assert [r["id"] for r in rows] == [r["id"] for r in reviews] + [f"odd{i}" for i in range(len(odd))] + ["raw"]
    assert [r["line"] for r in rows] == list(range(1, len(rows) + 1))
    serve = tf.saved_model.load(str(models / "cls")).signatures["serving_default"]
    want = serve(text=tf.constant([r["text"] for r in reviews]))
    np.testing.assert_allclose([r["probabilities"] for r in rows[: len(reviews)]], want["probabilities"].numpy(), atol=1e-6)
    assert [r["label"] for r in rows[: len(reviews)]] == [x.decode() for x in want["label"].numpy()]
    assert all(r["label"] in LABELS and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)


def test_predict_pair_reads_the_training_files_fields(models, tmp_path):
    out = tmp_path / "snli.jsonl"
    assert main(["predict", "--model", str(models / "pair"), "--input", f"{REPO}/data/snli/snli_sample.jsonl",
                 "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 3 and all(len(r["probabilities"]) == 3 for r in rows)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "fine"}', "not json at all"], "line 2 of .* is not JSON"),
        (['{"text": "fine"}', '{"id": 7}', '{"text": "x"}'], "line 2 of .* lacks field 'text'"),
        (['{"text": 5}'], "line 1 of .*: field 'text' must be a JSON string"),
        (['["a list"]'], "line 1 of .* is a JSON list"),
    ],
)
def test_bad_lines_are_one_line_errors_and_leave_no_output(models, tmp_path, capsys, lines, message):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out.write_text("previous\n")
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("bertpipe: error: ") and re.search(message, last)
    assert out.read_text() == "previous\n"  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temp file left


def test_missing_model_or_input_is_a_user_error(models, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    assert main(["predict", "--model", str(tmp_path), "--input", str(src), "--output", str(tmp_path / "o")]) == 1
    assert "is not a SavedModel" in capsys.readouterr().err
    assert main(["predict", "--model", str(models / "cls"), "--input", str(tmp_path / "nope.jsonl"),
                 "--output", str(tmp_path / "o")]) == 1
    assert "not found" in capsys.readouterr().err
