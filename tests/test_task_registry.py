"""The task registry: every config type has its behaviour and the reverse, and the data side needs no TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from bert_keras.tasks import TASKS, TaskType
from pipeline.contract.config import TASK_CONFIGS, task_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What every task type must implement itself (the base class raises NotImplementedError).
REQUIRED = ("convert", "build_model", "loss", "evaluate", "serving_fn")


def test_every_config_type_has_a_behaviour_and_every_behaviour_a_config():
    assert set(TASKS) == set(TASK_CONFIGS)
    for name, kind in TASKS.items():
        assert kind.name == name and kind.config is TASK_CONFIGS[name]
        assert task_config(type=name, train_file="x.jsonl").__class__ is kind.config


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_type_implements_the_interface(name):
    kind = TASKS[name]
    missing = [m for m in REQUIRED if getattr(type(kind), m) is getattr(TaskType, m)]
    assert not missing, f"{name} does not implement {missing}"
    # The metrics quoted in summaries are ones the type computes (and best_metric may choose).
    assert {key for key, _ in kind.headline} <= set(kind.config.METRICS)
    assert kind.input_names and all(isinstance(n, str) for n in kind.input_names)


CONVERT_WITHOUT_TF = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_text", "keras"):
            raise ImportError(f"{name} imported by the data conversion")
sys.meta_path.insert(0, Block())
import numpy as np
import beam_jobs.finetune_data  # noqa: F401  (the data job's module imports without TensorFlow too)
from collections import Counter
from bert_keras.tasks import TASKS
from bert_keras.tokenizer import special_ids
from pipeline.contract.config import task_config

vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a film was good bad who wrote it i did".split()
ids = {w: i for i, w in enumerate(vocab)}

class Words:  # a whitespace tokenizer: the conversions take any PieceTokenizer
    def pieces(self, texts):
        return [np.array([ids.get(w, 1) for w in t.split()]) for t in texts]
    def pieces_with_offsets(self, texts):
        out = []
        for t in texts:
            words, starts, pos = t.split(), [], 0
            for w in words:
                pos = t.index(w, pos); starts.append(pos); pos += len(w)
            out.append((np.array([ids.get(w, 1) for w in words]), np.array(starts),
                        np.array([s + len(w) for s, w in zip(starts, words)])))
        return out

class Sink:
    def __init__(self):
        self.records, self.examples, self.counts, self.skipped = [], [], Counter(), Counter()
    def write(self, record): self.records.append(record)
    def example(self, row): self.examples.append(row)

rows = {
    "classification": [{"text": "the film was good", "label": "pos"}, {"text": "bad", "label": "neg"}, {"text": "", "label": "neg"}],
    "pair": [{"text": "the film", "text_b": "was good", "label": "yes"}, {"text": "a", "text_b": "bad", "label": "no"}],
    "long_document": [{"text": "the film was good " * 5, "label": "pos"}, {"text": "bad", "label": "neg"}],
    "qa": [{"id": "q1", "question": "who wrote it", "context": "i did wrote it", "is_impossible": False,
            "answers": [{"text": "i did", "answer_start": 0}]}],
}
out = {}
for name, kind in TASKS.items():
    cfg = task_config(type=name, train_file="x", max_seq_length=8, **({"doc_stride": 3} if name in ("qa", "long_document") else {}),
                      **({"max_query_length": 3} if name == "qa" else {}))
    labels = kind.label_names(cfg, rows[name])
    sink = Sink()
    kind.convert(cfg, list(enumerate(rows[name])), Words(), special_ids(vocab), labels, sink)
    out[name] = {"records": len(sink.records), "examples": [e["example_id"] for e in sink.examples],
                 "skipped": dict(sink.skipped)}
print(json.dumps(out))
"""


def test_the_data_conversions_run_without_tensorflow():
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", CONVERT_WITHOUT_TF], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["classification"] == {"records": 2, "examples": [0, 1], "skipped": {"empty_or_missing_text": 1}}
    assert out["pair"]["records"] == 2 and out["long_document"]["records"] == 2
    assert out["qa"]["examples"] == [0] and out["qa"]["records"] >= 2  # a short window room: several windows
