"""`run.work_dir` on a filesystem other than the local disk: TensorFlow's built-in `ram://`, through
`tf.io.gfile` for checkpoints, TensorBoard, SavedModels and Keras weights, and through Beam's
FileSystems (tests/ram_fs.py, object-store rules) for the data jobs and the small files. The whole
pipeline runs there, and nothing is written on the local disk except in temporary directories
and the MLflow store the run was pointed at."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import harness


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


@pytest.mark.slow
def test_pretrain_finetune_and_export_run_with_the_work_dir_on_ram_and_write_nothing_local(tmp_path):
    project, home, cwd, tmp, store = (tmp_path / n for n in ("project", "home", "cwd", "tmp", "mlflow"))
    for d in (project, home, cwd, tmp, store):
        d.mkdir()
    # holdout_fraction 0: prepare's nested holdout/ directory does not arrive on ram:// yet (its manifest
    # does, its shard not); until that is fixed the held-out split is not claimed for a remote work_dir.
    config = harness.tiny_project(project, pretrain={"steps": 6, "log_every": 2, "checkpoint_every": 3},
                                  prepare={"holdout_fraction": 0})
    before = _files(project)
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=harness.REPO, KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="2", MPLCONFIGDIR=str(tmp / "mpl"))
    proc = subprocess.run([sys.executable, "-m", "tests.ram_run", config, f"sqlite:///{store}/mlflow.db"],
                          capture_output=True, text=True, timeout=1200, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = harness_result(proc.stdout)
    assert res["first"] == 0 and res["again"] == 0, proc.stderr[-5000:]
    objects = [o[len("ram://work/"):] for o in res["objects"]]
    for stage in ("vocab", "prepare", "pretrain", "finetune/sentiment", "export"):
        assert f"{stage}/stage.json" in objects, objects
    assert "pretrain/encoder.weights.h5" in objects and "pretrain/history.jsonl" in objects
    assert any(o.startswith("pretrain/checkpoints/ckpt-6") for o in objects)
    assert any(o.startswith("pretrain/tensorboard/events.out.tfevents") for o in objects)
    assert any(o.startswith("finetune/sentiment/") and o.endswith(".png") for o in objects)  # reports and plots
    assert any(o.startswith("prepare/data/") and o.endswith(".tfrecord") for o in objects)
    assert not [o for o in objects if "/.tmp-" in o or ".write-test-" in o or ".inprogress" in o], objects
    assert set(res["predictions"]) <= {"negative", "positive"} and len(res["predictions"]) == 2
    # The second run found every stage complete on ram:// and ran none.
    second = proc.stdout.split("stage(s) in ram://work")[-1]
    rows = [line.split() for line in second.splitlines() if line.startswith("  ")]
    statuses = [row[1] for row in rows if len(row) > 1 and row[1] in ("ran", "cached")]  # not the verdict lines
    assert proc.stdout.count("stage(s) in ram://work") == 2 and statuses == ["cached"] * 5, proc.stdout[-3000:]
    # Nothing on the local disk: the project as it was, an empty working directory and home;
    # only the MLflow store it was pointed at (with its artifacts beside it) and temporary files.
    assert _files(project) == before
    assert _files(cwd) == set(), _files(cwd)
    # (the libraries' own settings: Keras writes ~/.keras/keras.json on import, MLflow its telemetry id)
    assert _files(home) <= {".keras/keras.json", ".config/mlflow/telemetry.json"}, _files(home)
    assert "mlflow.db" in _files(store) and any(f.startswith("mlartifacts/") for f in _files(store))


def harness_result(stdout: str) -> dict:
    import json

    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_a_remote_work_dir_without_a_tracking_uri_is_one_line_asking_for_one(tmp_path, monkeypatch):
    from pipeline.contract.errors import ConfigError
    from pipeline.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="run.work_dir gs://b/run is remote.*set run.tracking_uri"):
        resolve_tracking_uri(None, "gs://b/run")
    assert resolve_tracking_uri("http://127.0.0.1:5000", "gs://b/run") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
