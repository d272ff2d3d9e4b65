"""The whole pipeline from the command line, on tiny slices of the shipped data with a tiny BERT."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.harness import bertpipe, stage_statuses

pytestmark = pytest.mark.slow


def _versions(run):
    return MlflowClient(f"sqlite:///{run}/mlflow.db").search_model_versions("name='e2e-sentiment'")


def test_run_then_rerun_then_change_one_task(tiny_run):
    assert stage_statuses(tiny_run.first) == {
        s: "ran" for s in ("vocab", "prepare", "pretrain", "finetune:sentiment", "export")}
    assert "mlflow ui --backend-store-uri sqlite:///" in tiny_run.first.stdout
    registered = len(_versions(tiny_run.run_dir))
    assert registered == 1  # the first run registered its model (tiny_run's consumers leave it unchanged)

    second = bertpipe("run", "--config", tiny_run.config, cwd=tiny_run.root)
    assert set(stage_statuses(second).values()) == {"cached"}

    third = bertpipe("run", "--config", tiny_run.config, "--set", "finetune.sentiment.learning_rate=5.0e-4",
                     cwd=tiny_run.root)
    assert stage_statuses(third) == {
        "vocab": "cached", "prepare": "cached", "pretrain": "cached", "finetune:sentiment": "ran", "export": "ran",
    }
    # The changed-learning-rate run registered a new version; the cached rerun did not.
    assert len(_versions(tiny_run.run_dir)) == registered + 1


def test_outputs_manifest_and_mlflow(tiny_run):
    run = Path(tiny_run.run_dir)
    manifest = json.loads((run / "prepare" / "data" / "manifest.json").read_text())
    assert manifest["kind"] == "pretrain_static" and sum(manifest["shards"].values()) == manifest["counts"]["instances"]
    assert manifest["vocab_size"] == len((run / "vocab" / "vocab.txt").read_text().splitlines())

    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    stages = {r.data.tags.get("bertpipe.stage") for r in runs if r.data.tags.get("bertpipe.kind") == "stage"}
    assert {"vocab", "prepare", "pretrain", "finetune:sentiment", "export"} <= stages
    pretrain = next(r for r in runs if r.data.tags.get("bertpipe.stage") == "pretrain")
    assert client.get_metric_history(pretrain.info.run_id, "loss")
    versions = client.search_model_versions("name='e2e-sentiment'")
    assert len(versions) >= 1  # the first run's (test_run_then_rerun... checks that a changed run adds one)


def test_exported_model_answers_raw_text_in_a_fresh_process(tiny_run):
    model = Path(tiny_run.run_dir) / "export" / "sentiment"
    code = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf, tensorflow_text  # noqa: F401  (registers the tokenizer ops)
        m = tf.saved_model.load({str(model)!r})
        assert not {{n.split(".")[0] for n in sys.modules}} & {{"pipeline", "bert_keras", "beam_jobs"}}
        out = m.signatures["serving_default"](text=tf.constant(["a wonderful, moving film", "", "dull"]))
        print(json.dumps([x.decode() for x in out["label"].numpy().tolist()]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    labels = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(labels) == 3 and set(labels) <= {"negative", "positive"}


def test_predict_command_scores_a_jsonl_file(tiny_run, tmp_path):
    src = Path(tiny_run.root) / "test.jsonl"
    out = tmp_path / "scored.jsonl"  # not inside the shared run
    bertpipe("predict", "--model", Path(tiny_run.run_dir) / "export" / "sentiment", "--input", src, "--output", out,
             timeout=300)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(src.read_text().splitlines())
    assert all(r["label"] in ("negative", "positive") and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)
