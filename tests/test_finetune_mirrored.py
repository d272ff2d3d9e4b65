"""Fine-tuning under MirroredStrategy with two logical CPU replicas and mixed bf16 (in a fresh process:
logical devices must be set before TensorFlow starts)."""

import json
import os
import subprocess
import sys

import pytest

from beam_jobs.finetune_data import prepare_task_data
from pipeline.contract.config import task_config

SCRIPT = r"""
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bert_keras.task_training import train_task
from pipeline.contract.config import BertConfig, task_config
task = task_config(**json.loads(sys.argv[1]))
model = BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
out = train_task(task, model, sys.argv[2], json.loads(sys.argv[3]), None, sys.argv[4], 0)
print("RESULT " + json.dumps({"strategy": out.strategy, "precision": out.precision,
                              "batch": out.global_batch_size, "metrics": out.test.metrics,
                              "losses": [h["loss"] for h in out.history]}))
"""


@pytest.mark.slow
def test_classification_trains_on_two_mirrored_replicas(tmp_path, data_dir):
    vocab = os.path.join(data_dir, "vocab", "bert-base-uncased-vocab.txt")
    snli = os.path.join(data_dir, "snli", "snli_sample.jsonl")
    task = task_config(type="pair", train_file=snli, test_file=snli, max_seq_length=48, batch_size=2, epochs=6,
                      strategy="mirrored", precision="mixed_bfloat16", log_every=1, learning_rate=1e-3)
    prepare_task_data(task, vocab, True, str(tmp_path / "data"), 0)
    dirs = {s: str(tmp_path / "data" / s) for s in ("train", "dev", "test")}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, task.model_dump_json(), vocab, json.dumps(dirs),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["strategy"] == "MirroredStrategy" and result["precision"] == "mixed_bfloat16"
    assert result["batch"] == 4  # 2 per replica x 2 replicas
    assert result["metrics"]["examples"] == 3
    assert all(map(lambda x: x == x and x < 10, result["losses"]))  # finite losses every step
