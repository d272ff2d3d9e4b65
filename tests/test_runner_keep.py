"""The runner never deletes training: what a changed config does to a resumable stage.

The stages here are plain functions that keep a "checkpoint" file (real files, the real
runner); the pretraining itself is exercised in test_training_faults.py.
"""

import json
import logging
import os

import pytest

from pipeline.runner import INPROGRESS_FILE, STAGE_FILE, Stage, run_stages


class Trainer:
    """A resumable stage: continues from its checkpoint file up to `steps`."""

    def __init__(self):
        self.seen = []  # the step each run started from

    def __call__(self, ctx):
        ckpt = os.path.join(ctx.out_dir, "ckpt")
        step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
        self.seen.append(step)
        target = ctx.upstream.get("_steps", 0) or self.steps
        with open(ckpt, "w") as fh:
            fh.write(str(target))
        return {"step": target, "file": ckpt}


def train_stage(trainer, steps=20, lr=1e-3, log_every=5, upstream=()):
    trainer.steps = steps
    section = {"pretrain": {"steps": steps, "learning_rate": lr, "log_every": log_every}, "run.seed": 0}
    return Stage("pretrain", trainer, section, upstream=list(upstream), resumable=True)


def data_stage(value):
    def run(ctx):
        path = os.path.join(ctx.out_dir, "data.txt")
        open(path, "w").write(value)
        return {"file": path}

    return Stage("prepare", run, {"prepare": {"value": value}})


def kept(work):
    return sorted(n for n in os.listdir(work) if ".previous-" in n)


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "bertpipe"]


@pytest.fixture(autouse=True)
def _info(caplog):
    caplog.set_level(logging.INFO, logger="bertpipe")


def test_raising_steps_after_a_finished_run_continues_and_downstream_reruns(tmp_path, caplog):
    work, t = str(tmp_path), Trainer()
    calls = []

    def finetune(ctx):
        calls.append(ctx.upstream["pretrain"]["outputs"]["step"])
        return {}

    down = Stage("finetune:x", finetune, {"finetune.x": {"epochs": 1}}, upstream=["pretrain"], resumable=True)
    run_stages([train_stage(t, steps=20), down], work)
    caplog.clear()
    results = run_stages([train_stage(t, steps=40), down], work)
    assert t.seen == [0, 20]  # continued from the finished run's checkpoint
    assert [r.status for r in results] == ["ran", "ran"] and calls == [20, 40]  # a longer run is a new encoder
    said = [m for m in lines(caplog) if "raised" in m]
    assert len(said) == 1 and "pretrain.steps (20 -> 40) raised: continuing from the last checkpoint" in said[0]
    assert "schedule recomputed over the new length" in said[0]
    assert kept(work) == []  # the pretraining was not set aside
    assert os.listdir(os.path.join(work, "finetune")) == ["x", "x.previous-1"]  # nor the old fine-tuning lost


def test_a_steering_change_after_a_kill_resumes_and_leaves_the_fingerprint_downstream_reads(tmp_path, caplog):
    work, t = str(tmp_path), Trainer()

    def killed(ctx):  # dies after its checkpoint at step 10, like a SIGKILL
        open(os.path.join(ctx.out_dir, "ckpt"), "w").write("10")
        raise KeyboardInterrupt

    stage = train_stage(t, steps=20)
    with pytest.raises(KeyboardInterrupt):
        run_stages([Stage("pretrain", killed, stage.section, resumable=True)], work)
    assert os.path.exists(os.path.join(work, "pretrain", INPROGRESS_FILE))
    caplog.clear()
    run_stages([train_stage(t, steps=20, log_every=7)], work)
    assert t.seen == [10] and kept(work) == []
    assert any("only run-steering keys changed (pretrain.log_every (5 -> 7)): resuming" in m for m in lines(caplog))
    # Complete now: the same config is cached, and a steering change alone leaves the fingerprint as it was.
    assert run_stages([train_stage(t, steps=20, log_every=7)], work)[0].status == "cached"
    first = json.load(open(os.path.join(work, "pretrain", STAGE_FILE)))["fingerprint"]
    run_stages([train_stage(t, steps=20, log_every=3)], work)
    assert json.load(open(os.path.join(work, "pretrain", STAGE_FILE)))["fingerprint"] == first


def test_a_result_change_keeps_the_old_output_beside_and_setting_it_back_brings_it_back(tmp_path, caplog):
    work, t = str(tmp_path), Trainer()
    run_stages([train_stage(t, lr=1e-3)], work)
    caplog.clear()
    run_stages([train_stage(t, lr=5e-4)], work)
    assert t.seen == [0, 0] and kept(work) == ["pretrain.previous-1"]
    assert open(os.path.join(work, "pretrain.previous-1", "ckpt")).read() == "20"  # nothing lost
    said = [m for m in lines(caplog) if "result-defining" in m]
    assert len(said) == 1 and "pretrain.learning_rate (0.001 -> 0.0005)" in said[0]
    assert "kept in " + os.path.join(work, "pretrain.previous-1") in said[0] and "--force deletes instead" in said[0]
    # Back to the first config: its output returns (cached: it was complete), the second is kept.
    caplog.clear()
    results = run_stages([train_stage(t, lr=1e-3)], work)
    assert kept(work) == ["pretrain.previous-2"]
    assert t.seen == [0, 0, 20] and results[0].record["config"]["pretrain"]["learning_rate"] == 1e-3
    assert any("matches the output kept in" in m for m in lines(caplog))


def test_lowering_steps_or_an_upstream_change_starts_again_beside_the_old_output(tmp_path):
    work, t = str(tmp_path), Trainer()
    run_stages([data_stage("a"), train_stage(t, steps=40, upstream=["prepare"])], work)
    run_stages([data_stage("a"), train_stage(t, steps=20, upstream=["prepare"])], work)
    assert t.seen == [0, 0] and kept(work) == ["pretrain.previous-1"]
    run_stages([data_stage("b"), train_stage(t, steps=20, upstream=["prepare"])], work)
    assert t.seen == [0, 0, 0] and kept(work) == ["pretrain.previous-1", "pretrain.previous-2"]


def test_force_is_the_only_thing_that_deletes_and_only_for_the_named_stages(tmp_path, caplog):
    work, t = str(tmp_path), Trainer()
    stages = [data_stage("a"), train_stage(t, upstream=["prepare"])]
    run_stages(stages, work)
    data_file = os.path.join(work, "prepare", "data.txt")
    before = os.stat(data_file).st_mtime_ns
    results = run_stages(stages, work, force={"pretrain"})
    assert [r.status for r in results] == ["cached", "ran"] and t.seen == [0, 0]
    assert kept(work) == [] and os.stat(data_file).st_mtime_ns == before
    assert any("--force: deleting the previous output" in m for m in lines(caplog))
