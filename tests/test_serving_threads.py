"""TensorFlow's thread pools for serving (`pipeline.mlflow_model.serving_threads`), set in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.mlflow_model import THREADS_ENV, serving_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_small_machines_get_one_thread_per_op_and_one_op_per_core(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert serving_threads(cores=2) == (1, 2)
    assert serving_threads(cores=4) == (1, 4)
    assert serving_threads(cores=16) is None  # TensorFlow's defaults: not measured there


@pytest.mark.parametrize("value, want", [("3,4", (3, 4)), (" 1,1 ", (1, 1)), ("default", None)])
def test_the_environment_overrides_the_choice(monkeypatch, value, want):
    monkeypatch.setenv(THREADS_ENV, value)
    assert serving_threads(cores=2) == want


def test_a_bad_override_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "lots")
    with pytest.raises(ValueError, match="INTRA,INTER"):
        serving_threads()


SCRIPT = """
import logging
import os
import tensorflow as tf
from pipeline.mlflow_model import configure_serving_threads
print(configure_serving_threads(), tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1.0  # TensorFlow runs: its pools are fixed now
os.environ["BERTPIPE_TF_THREADS"] = "2,2"
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("pipeline.mlflow_model").addHandler(handler)
logging.getLogger("pipeline.mlflow_model").setLevel(logging.INFO)
print(configure_serving_threads(), tf.config.threading.get_intra_op_parallelism_threads(),
      "before the model loaded" in records[0].getMessage())
"""


def test_loading_sets_the_threads_before_tensorflow_runs_and_says_so_after():
    env = {**os.environ, THREADS_ENV: "1,3", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2:] == ["(1, 3) 1 3", "None 1 True"]  # after: unchanged, and logged
