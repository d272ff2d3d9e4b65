"""SIGKILL a pretraining process mid-run; the same command resumes at the
checkpointed step with the checkpointed optimizer state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline.contract.config import PretrainConfig
from tests.test_data import ROOT, write_records
from tests.test_distribute import _env, _result
from tests.test_trainer import make_trainer

STEPS = 60


@pytest.mark.slow
def test_sigkill_then_same_command_resumes(tmp_path):
    data_dir, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_records(data_dir, num_records=64, max_tokens=24)  # short rows: packing on
    cmd = [sys.executable, "-m", "tests.test_distribute_worker", "pretrain", data_dir, out, str(STEPS)]
    ckpt_dir = os.path.join(out, "checkpoints")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
            if latest and int(latest.rsplit("-", 1)[1]) >= 10:
                break
            assert proc.poll() is None, "trainer exited before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint at step >= 10 within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
        first_out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "RESULT" not in first_out  # it really died mid-run
    killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert killed_at < STEPS

    # The restore path fills the optimizer with exactly what the checkpoint holds.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
    trainer = make_trainer(out, PretrainConfig(batch_size=8, steps=STEPS, keep_checkpoints=2))
    assert trainer.restore() == killed_at
    assert int(trainer.optimizer.iterations.numpy()) == killed_at
    saved = [reader.get_tensor(k) for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(ckpt_dir))
             if k.startswith("optimizer/")]
    slots = [v.numpy() for v in trainer.optimizer.variables]
    assert len(slots) > 2 * len(trainer.model.trainable_variables)  # iterations + Adam m and v per weight
    assert sum(np.abs(s).sum() for s in slots[1:]) > 0  # real, non-zero moments
    for slot in slots:  # every optimizer variable equals one the checkpoint holds
        assert any(a.shape == slot.shape and np.array_equal(a, slot) for a in saved)

    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from checkpoint at step {killed_at}" in second.stdout
    result = _result(second.stdout)
    assert result["step"] == STEPS and result["resumed_from"] == killed_at
    final = tf.train.load_checkpoint(result["checkpoint"])
    iters = [k for k, _ in tf.train.list_variables(result["checkpoint"]) if k.startswith("optimizer/") and "iteration" in k]
    assert iters and int(final.get_tensor(iters[0])) == STEPS
    with open(os.path.join(out, "history.jsonl"), encoding="utf-8") as fh:
        steps = [json.loads(line)["step"] for line in fh]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicate lines from the killed run
    assert os.path.exists(result["encoder_weights"]) and os.path.exists(result["loss_curves"])
    assert 0 <= result["eval_mlm_accuracy"] <= 1
