"""Shared test setup: quiet TensorFlow, the Keras backend, paths to the shipped data."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")


@pytest.fixture
def repo_root() -> str:
    return REPO


@pytest.fixture
def data_dir() -> str:
    return DATA
