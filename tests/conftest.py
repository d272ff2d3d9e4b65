"""Shared test setup: quiet TensorFlow, the Keras backend, paths to the shipped data, shared fixtures.

The helpers behind the fixtures (tiny configs, tiny corpora, the CLI, the encoder
harness) are in `tests/harness.py`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

from tests import harness  # noqa: E402

REPO = harness.REPO
DATA = harness.DATA


@pytest.fixture
def repo_root() -> str:
    return REPO


@pytest.fixture
def data_dir() -> str:
    return DATA


@dataclass(frozen=True)
class TinyRun:
    root: str  # the project: corpus/, train.jsonl, test.jsonl, tiny.yaml, run/
    config: str  # tiny.yaml
    first: object  # the CompletedProcess of the first `bertpipe run`

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "run")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny project after one complete `bertpipe run` (every stage, MLflow in run/mlflow.db).

    Session-scoped, built once (about a minute). Consumers read it; one that reruns `bertpipe run`
    on it must leave every output in place (a changed key reruns stages, it deletes nothing), so
    the others pass whether they run before or after it.
    """
    root = tmp_path_factory.mktemp("tiny-run")
    config = harness.tiny_project(root)
    return TinyRun(str(root), config, harness.bertpipe("run", "--config", config, cwd=root))
