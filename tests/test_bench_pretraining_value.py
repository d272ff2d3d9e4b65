"""bench/bench_pretraining_value.py --quick: every bertpipe start through the real CLI, keras-hub converted and
fine-tuned, the results file and the PNG written, and a rerun resumes instead of training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA

ROOT = os.path.dirname(DATA)

BENCH = os.path.join(ROOT, "bench", "bench_pretraining_value.py")
STARTS = ["tfidf", "random", "classic", "best", "keras_hub", "modernbert"]


def _bench(work, results) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow", "BENCH_RESULTS_DIR": str(results)}
    return subprocess.run([sys.executable, BENCH, "--quick", "--work", str(work), "--starts", *STARTS], env=env,
                          capture_output=True, text=True, timeout=1500, check=False)


@pytest.mark.slow
def test_quick_bench_scores_every_start_with_the_protocol_and_a_rerun_resumes(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    first = _bench(work, results)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    with open(results / "pretraining_value.json") as fh:
        doc = json.load(fh)
    rows = {r["start"]: r for r in doc["rows"]}
    assert set(rows) == set(STARTS)
    for r in rows.values():
        assert len(r["runs"]) == 1 and 0 <= r["mean"] <= 100 and r["task"] == "era"
    assert rows["classic"]["chosen_by"].startswith("dev")  # dev chose, test was scored once
    for start in ("classic", "best", "keras_hub", "modernbert"):  # the same token budget for every pretraining run
        assert rows[start]["pretrain_tokens"] == rows["classic"]["pretrain_tokens"] > 0
        assert rows[start]["heldout_mlm_loss"] > 0
    names = {t["name"] for t in doc["targets"]}
    assert {"pretrained_vs_random_points", "pretrained_vs_tfidf_points", "recipe_time_to_classic_loss_ratio"} <= names
    assert os.path.getsize(results / "pretraining_value.png") > 10_000
    # Both bertpipe recipes were evaluated on prepare's fixed held-out documents.
    for start in ("classic", "best"):
        with open(work / start / "pretrain" / "pretrain_result.json") as fh:
            assert json.load(fh)["heldout_data"].endswith(os.path.join("prepare", "data", "holdout"))

    # The classic's final loss on the MLM-only runs' held-out windows (the time-to-classic-loss level) comes from
    # a rescoring that gives back a run's own recorded final loss on its own set.
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from heldout_rescore import CACHE, rescore

    best_data = str(work / "best" / "prepare" / "data")
    assert abs(rescore(str(work / "best"), best_data) - rows["best"]["heldout_mlm_loss"]) < 2e-3
    with open(work / "classic" / "pretrain" / CACHE) as fh:
        assert json.load(fh)[best_data] > 0
    with open(work / "modernbert" / "pretrain" / "stage.json") as fh:
        assert json.load(fh)["config"]["model"]["family"] == "modernbert"

    again = _bench(work, results)  # everything is done: nothing trains again
    assert again.returncode == 0 and "bertpipe run ..." not in again.stdout
    with open(results / "pretraining_value.json") as fh:
        assert {r["start"]: r["runs"] for r in json.load(fh)["rows"]} == {s: r["runs"] for s, r in rows.items()}
