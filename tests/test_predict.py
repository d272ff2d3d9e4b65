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
def test_strict_stops_at_a_bad_line_with_one_line_and_leaves_no_output(models, tmp_path, capsys, lines, message):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out.write_text("previous\n")
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out),
                 "--strict"]) == 1
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


def test_a_bad_fourth_line_is_set_aside_and_counted_and_the_three_good_predictions_are_kept(models, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out" / "pred.jsonl"
    good = [{"id": i, "text": t} for i, t in enumerate(["a moving film", "dull and long", "fine acting"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"id": 3, "text": "cut off\n')
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["line"] for r in rows] == [1, 2, 3]
    side = read_jsonl(tmp_path / "out" / "pred-invalid.jsonl")
    assert len(side) == 1 and side[0]["line"] == 4 and "is not JSON" in side[0]["error"]
    assert side[0]["text"].startswith('{"id": 3')
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.endswith(f"wrote 3 predictions to {out}; 1 invalid line(s) set aside in {tmp_path / 'out' / 'pred-invalid.jsonl'}")
    # A clean rerun of the same output leaves no stale side file behind.
    src.write_text("".join(json.dumps(r) + "\n" for r in good))
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out)]) == 0
    assert len(read_jsonl(out)) == 3 and not (tmp_path / "out" / "pred-invalid.jsonl").exists()


def test_lines_without_the_models_fields_are_set_aside_with_their_reason(models, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"text": "fine"}\n{"id": 7}\n{"text": 5}\n["a list"]\n{"text": "x"}\n')
    assert main(["predict", "--model", str(models / "cls"), "--input", str(src), "--output", str(out)]) == 0
    assert [r["line"] for r in read_jsonl(out)] == [1, 5]
    reasons = {r["line"]: r["error"] for r in read_jsonl(tmp_path / "out-invalid.jsonl")}
    assert set(reasons) == {2, 3, 4}
    assert "lacks field 'text'" in reasons[2] and "must be a JSON string" in reasons[3] and "JSON list" in reasons[4]
