import os

import pytest
from mlflow.tracking import MlflowClient

from pipeline.contract.errors import UserError
from pipeline.runner import Stage, run_stages
from pipeline.tracking import Tracker, resolve_tracking_uri
from tests.mlflow_server import free_port, mlflow_server


def _tiny_pipeline(tmp_path):
    def make(ctx):
        path = os.path.join(ctx.out_dir, "vocab.txt")
        with open(path, "w") as fh:
            fh.write("[PAD]\n[UNK]\n")
        ctx.tracker.metrics({"loss": 2.0}, step=1)
        ctx.tracker.metrics({"loss": 1.0}, step=2)
        return {"file": path}

    return [Stage("vocab", make, {"size": 2}, artifacts=lambda out: [out["file"]])]


def _check_runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("bertpipe.kind") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("bertpipe.kind") == "stage"]
    assert len(parent) == 1 and len(stages) == 1
    stage = stages[0]
    assert stage.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    assert stage.data.params["size"] == "2"
    assert parent[0].data.params["run.seed"] == "0"
    assert "bertpipe.version.tensorflow" in parent[0].data.tags
    history = client.get_metric_history(stage.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    names = {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert {"vocab.txt", "stage.json"} <= names
    return client, stage


def test_default_uri_is_local_sqlite_in_the_work_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(None, str(tmp_path)) == "http://127.0.0.1:1"
    assert resolve_tracking_uri("sqlite:///x.db", str(tmp_path)) == "sqlite:///x.db"


def test_local_store_holds_parent_and_nested_runs(tmp_path):
    work = str(tmp_path / "work")
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", work)
    tracker = Tracker(uri, "t-local", work)
    with tracker.pipeline_run("bertpipe run", {"run": {"seed": 0}}):
        run_stages(_tiny_pipeline(tmp_path), work, tracker=tracker)
    _, stage = _check_runs(uri, "t-local")
    # Artifacts of the local store land in the work dir, not in ./mlruns of the caller.
    assert stage.info.artifact_uri.startswith("file://" + os.path.abspath(work))
    assert tracker.summary() is None


@pytest.mark.slow
def test_real_mlflow_server_receives_runs_over_http_and_a_dead_server_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with mlflow_server(str(tmp_path)) as (url, proc):
        work = str(tmp_path / "work")
        tracker = Tracker(url, "t-server", work)
        with tracker.pipeline_run("bertpipe run", {"run": {"seed": 0}}):
            run_stages(_tiny_pipeline(tmp_path), work, tracker=tracker)
        client, stage = _check_runs(url, "t-server")
        # Artifacts went through the server into its artifact root.
        assert os.listdir(os.path.join(str(tmp_path), "artifacts"))

        # The server dies mid-run: logging is counted, the work goes on.
        tracker2 = Tracker(url, "t-server", work)
        with tracker2.pipeline_run("second", {}):
            proc.terminate()
            proc.wait(timeout=20)
            tracker2.metrics({"loss": 1.0}, step=3)
            tracker2.artifact(stage_file := os.path.join(work, "vocab", "stage.json"))
            assert os.path.exists(stage_file)
        # metrics, artifact and the end of the run: counted, and said in one line.
        assert len(tracker2.failures) == 3
        assert tracker2.summary().startswith("MLflow: 3 logging call(s) failed")


def test_unreachable_server_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    tracker = Tracker(f"http://127.0.0.1:{free_port()}", "t", str(tmp_path))
    with pytest.raises(UserError) as err:
        tracker.check_reachable()
    assert "is not usable" in str(err.value) and "\n" not in str(err.value)
