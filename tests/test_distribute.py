"""Real tf.distribute strategies on this CPU: two logical devices (Mirrored) and
two trainer processes on 127.0.0.1 (MultiWorkerMirrored)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_data import ROOT, write_records


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def test_two_replica_mirrored_matches_one_device(tmp_path):
    write_records(str(tmp_path / "data"), num_records=48, full_masks=True)
    proc = subprocess.run([sys.executable, "-m", "tests.test_distribute_worker", "mirrored", str(tmp_path / "data"),
                           str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _result(proc.stdout)
    assert res["mirrored"]["replicas"] == 2 and res["default"]["replicas"] == 1
    np.testing.assert_allclose(res["mirrored"]["losses"], res["default"]["losses"], rtol=1e-5)
    for a, b in zip(_weights(tmp_path / "mirrored.npz"), _weights(tmp_path / "default.npz"), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-6)


def test_two_replica_mirrored_under_xla_with_accumulation_matches_one_device_under_xla(tmp_path):
    """jit_compile under MirroredStrategy (two logical CPUs, two micro-batches per replica): XLA holds
    forward, backward and the accumulation loop; the all-reduce, clipping and update run outside."""
    write_records(str(tmp_path / "data"), num_records=48, full_masks=True)
    proc = subprocess.run([sys.executable, "-m", "tests.test_distribute_worker", "mirrored", str(tmp_path / "data"),
                           str(tmp_path), "xla"], env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _result(proc.stdout)
    assert res["mirrored"]["xla_scope"] == "grads" and res["default"]["xla_scope"] == "step"
    np.testing.assert_allclose(res["mirrored"]["losses"], res["default"]["losses"], rtol=1e-5)
    for a, b in zip(_weights(tmp_path / "mirrored.npz"), _weights(tmp_path / "default.npz"), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-6)


def test_a_mirrored_run_resumed_reads_on_from_its_position_and_ends_like_one_run(tmp_path):
    """tf.distribute's iterators cannot be checkpointed: the resume re-reads the deterministic
    input up to its step, so 3 steps + 3 more in a new trainer equal 6 in one go."""
    write_records(str(tmp_path / "data"), num_records=48, max_tokens=24)
    proc = subprocess.run([sys.executable, "-m", "tests.test_distribute_worker", "mirrored_resume",
                           str(tmp_path / "data"), str(tmp_path)], env=_env(), capture_output=True, text=True,
                          timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _result(proc.stdout)
    assert res["replicas"] == 2 and res["resumed_from"] == 3
    assert "input position: re-reading the input up to step 3" in proc.stdout
    np.testing.assert_allclose(res["resumed_losses"], res["one_run_losses"], rtol=1e-6)
    for a, b in zip(_weights(tmp_path / "resumed.npz"), _weights(tmp_path / "one_run.npz"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_end_with_same_weights(tmp_path):
    write_records(str(tmp_path / "data"), num_records=48, num_shards=2, full_masks=True)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.test_distribute_worker", "multi_worker", str(tmp_path / "data"),
             str(tmp_path)], env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [_result(out) for out, _ in outs]
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["losses"] == results[1]["losses"]  # the loss is all-reduced
    w0, w1 = _weights(tmp_path / "worker0.npz"), _weights(tmp_path / "worker1.npz")
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert os.path.isdir(tmp_path / "checkpoints")  # the chief's
    # The other worker keeps its own copy: it restores from it on a resume or an extension.
    assert [d for d in os.listdir(tmp_path) if d.startswith(".worker-")] == [".worker-1-checkpoints"]
