"""A fine-tuned tiny classifier, registered in a SQLite MLflow store, served by `mlflow models serve`."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from beam_jobs.finetune_data import prepare_task_data
from bert_keras.finetune import run_finetune
from pipeline.contract.config import BertConfig, task_config
from pipeline.stages import export_task_model
from pipeline.tracking import Tracker
from tests.mlflow_server import free_port, wait_until_up

TINY = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
NAME = "sentiment-tiny"


def post(url, payload, timeout=60):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_registered_model_serves_raw_text_over_http(tmp_path, data_dir):
    import mlflow

    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    with open(os.path.join(data_dir, "reviews", "test.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    rows = [r for r in rows if r["label"] == "positive"][:60] + [r for r in rows if r["label"] == "negative"][:60]
    train = tmp_path / "reviews.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = task_config(type="classification", train_file=str(train), max_seq_length=32, batch_size=16, epochs=1,
                      precision="float32", register_name=NAME, log_every=2)  # test and dev carved from the file
    prepare_task_data(task, vocab, True, str(tmp_path / "data"), 0)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(store, "serve-test", str(tmp_path))
    with tracker.pipeline_run("pipeline", {}):
        with tracker.stage_run("finetune:sentiment", {}) as run_id:
            out = run_finetune("sentiment", task, TINY, vocab, True,
                               {s: str(tmp_path / "data" / s) for s in ("train", "dev", "test")}, None, str(tmp_path / "run"), 0,
                               tracker=tracker)
        # The export stage builds the SavedModel from the finetune stage's record and registers it.
        with tracker.stage_run("export", {}) as export_run_id:
            saved_model, registered = export_task_model(out, str(tmp_path / "export" / "sentiment"), tracker)
            # A second registration of the same name is a new version.
            again = tracker.saved_model(saved_model, "model", NAME, None, None)
    assert tracker.failures == []
    assert registered["version"] == 1 and again["version"] == 2

    # MLflow holds the fine-tuning run's metrics (dev and test apart, the TF-IDF baseline beside) and
    # report artifacts, and the export run's model version.
    client = mlflow.MlflowClient(store)
    run = client.get_run(run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(out.chosen.test["accuracy"])
    assert run.data.metrics["dev_accuracy"] == pytest.approx(out.chosen.dev["accuracy"])
    assert run.data.metrics["test_accuracy_mean"] == pytest.approx(out.test["main"].mean)
    assert run.data.metrics["tfidf.test_accuracy"] == pytest.approx(out.baselines["tfidf"][0].test["accuracy"])
    assert run.data.tags["bertpipe.summary"] == out.summary and run.data.tags["bertpipe.chosen_by"] == "dev accuracy"
    assert "eval_accuracy" in run.data.metrics and "loss" in run.data.metrics
    reports = {os.path.basename(a.path) for a in client.list_artifacts(run_id, "reports")}
    assert {"confusion_matrix.png", "per_class.json", "per_class.csv", "learning_curves.png",
            "predictions_sample.jsonl", "scores.json", "runs.csv"} <= reports
    assert client.get_model_version(NAME, "1").run_id == export_run_id
    # Logged from code: the model directory holds no pickle to load.
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", tracking_uri=store)
    files = [f for _, _, names in os.walk(local) for f in names]
    assert "mlflow_model.py" in files and not [f for f in files if f.endswith((".pkl", ".pickle"))]

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
         "--host", "127.0.0.1", "-p", str(port)],
        # The server execs `uvicorn` by name: put this venv's bin first on PATH.
        env={**os.environ, "MLFLOW_TRACKING_URI": store,
             "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True,  # its workers share our process group id, so one killpg ends them all
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/ping", server, str(tmp_path / "serve.log"), timeout=180, poll=1)
        texts = ["A gorgeous, moving film with a wonderful cast.", "Dull, lifeless and far too long.", ""]
        answer = post(url + "/invocations", {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        predictions = answer["predictions"]
        assert len(predictions) == 3
        for p in predictions:
            assert p["label"] in ("negative", "positive")
            assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
