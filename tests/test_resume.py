"""SIGKILL a training process mid-run; the same command resumes at the checkpointed step
with the checkpointed optimizer state and input position, and ends with the weights of
the uninterrupted run (dropout on, packing on): pretraining and fine-tuning."""

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
pytestmark = pytest.mark.slow


def kill_after_checkpoint(cmd, ckpt_dir, at_least=10):
    """Start `cmd`, SIGKILL it once a checkpoint at step >= `at_least` exists; return that step."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
            if latest and int(latest.rsplit("-", 1)[1]) >= at_least:
                break
            assert proc.poll() is None, "trainer exited before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail(f"no checkpoint at step >= {at_least} within 400 s")
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "RESULT" not in out  # it really died mid-run
    return int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])


def model_and_optimizer(checkpoint: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(checkpoint)
    return {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(checkpoint)
            if k.startswith(("model/", "optimizer/")) and "OBJECT_CONFIG" not in k}


def assert_same_weights(a: str, b: str) -> None:
    wa, wb = model_and_optimizer(a), model_and_optimizer(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_sigkill_then_same_command_resumes_and_ends_with_the_uninterrupted_runs_weights(tmp_path):
    data_dir, out, clean = str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "clean")
    write_records(data_dir, num_records=64, max_tokens=24)  # short rows: packing on
    cmd = [sys.executable, "-m", "tests.test_distribute_worker", "pretrain", data_dir, out, str(STEPS)]
    ckpt_dir = os.path.join(out, "checkpoints")
    killed_at = kill_after_checkpoint(cmd, ckpt_dir)
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
    assert any(k.startswith("data/") for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(ckpt_dir)))

    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from checkpoint at step {killed_at}" in second.stdout
    result = _result(second.stdout)
    assert result["step"] == STEPS and result["resumed_from"] == killed_at
    with open(os.path.join(out, "history.jsonl"), encoding="utf-8") as fh:
        history = [json.loads(line) for line in fh]
    steps = [h["step"] for h in history]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicate lines from the killed run
    assert os.path.exists(result["encoder_weights"]) and os.path.exists(result["loss_curves"])
    assert 0 <= result["eval_mlm_accuracy"] <= 1

    uninterrupted = subprocess.run([*cmd[:-2], clean, str(STEPS)], env=_env(), capture_output=True, text=True,
                                   timeout=400, cwd=ROOT)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    clean_result = _result(uninterrupted.stdout)
    with open(os.path.join(clean, "history.jsonl"), encoding="utf-8") as fh:
        clean_losses = [json.loads(line)["loss"] for line in fh]
    np.testing.assert_allclose([h["loss"] for h in history], clean_losses, rtol=1e-6)
    assert_same_weights(result["checkpoint"], clean_result["checkpoint"])
    assert result["eval_mlm_loss"] == pytest.approx(clean_result["eval_mlm_loss"], rel=1e-6)


def test_a_killed_fine_tuning_resumes_to_the_weights_of_the_uninterrupted_run(tmp_path, data_dir):
    from beam_jobs.finetune_data import prepare_task_data
    from pipeline.contract.config import task_config
    from tests.harness import write_jsonl
    from tests.test_data import VOCAB
    from tests.test_finetune_options import reviews

    train = write_jsonl(tmp_path / "train.jsonl", reviews(data_dir, 320))
    task = dict(type="classification", train_file=train, test_file=train, max_seq_length=64, epochs=2,
                batch_size=8, learning_rate=1e-3, precision="float32", log_every=1, checkpoint_every=5,
                eval_every=25, eval_batch_size=64, packing=True)
    prepare_task_data(task_config(**task), VOCAB, True, str(tmp_path / "data"), 0)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"task": task,
                                "data_dirs": {s: str(tmp_path / "data" / s) for s in ("train", "dev", "test")}}))
    out, clean = str(tmp_path / "out"), str(tmp_path / "clean")
    cmd = [sys.executable, "-m", "tests.test_distribute_worker", "finetune", str(spec), out]
    killed_at = kill_after_checkpoint(cmd, os.path.join(out, "checkpoints"), at_least=15)
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from checkpoint at step {killed_at}" in second.stdout
    resumed = _result(second.stdout)
    first = subprocess.run(cmd[:-1] + [clean], env=_env(), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _result(first.stdout) == resumed  # same final and best steps
    assert_same_weights(tf.train.latest_checkpoint(os.path.join(out, "checkpoints")),
                        tf.train.latest_checkpoint(os.path.join(clean, "checkpoints")))
