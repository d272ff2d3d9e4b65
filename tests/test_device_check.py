"""bench/device_check.sh --dry-run: the device check's own code (agreement, both step paths, packing
on and off, fine-tune + export) at tiny sizes on this CPU, through its shell wrapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import harness


@pytest.mark.slow
def test_device_check_dry_run_runs_every_check_and_writes_its_results(tmp_path):
    env = dict(os.environ, BENCH_RESULTS_DIR=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=harness.REPO,
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    proc = subprocess.run([os.path.join(harness.REPO, "bench", "device_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("device_check ")]
    assert len(summary) == 1 and summary[0].startswith("device_check OK: CPU"), proc.stdout[-3000:]
    doc = json.loads((tmp_path / "device_check.json").read_text())
    rows = {(r["check"], r.get("kernels", r.get("packing"))): r for r in doc["rows"]}
    assert rows[("fused_vs_plain", None)]["ok"] and rows[("fused_vs_plain", None)]["max_rel_grad_diff"] < 1e-3
    for kernels in ("fused", "plain"):
        assert rows[("pretrain_step", kernels)]["sequences_per_second"] > 0
        assert rows[("pretrain_step", kernels)]["mfu"] is None  # no peak for a CPU
    assert rows[("packing", True)]["ok"] and rows[("packing", False)]["ok"]
    assert rows[("finetune_export", None)]["ok"]
    assert set(rows[("finetune_export", None)]["labels"]) <= {"negative", "positive"}
    assert [t["name"] for t in doc["targets"]] == ["mfu_bert_base_seq128_bf16"] and "machine" in doc


def test_the_peak_table_knows_the_datacenter_gpus():
    sys.path.insert(0, os.path.join(harness.REPO, "bench"))
    try:
        import device_check
    finally:
        sys.path.pop(0)
    assert device_check.peak_bf16("NVIDIA H200") == device_check.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert device_check.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12 and device_check.peak_bf16("NVIDIA L4") == 121e12
    assert device_check.peak_bf16("NVIDIA H100 PCIe") == 756e12 and device_check.peak_bf16("CPU") is None
    # BERT-base seq 128: about 6 x 85 M encoder parameters x 128 tokens + attention, per sequence
    assert 6.5e10 < device_check.BERT_BASE.train_flops_per_sequence() < 1.0e11
