"""Google's original BERT checkpoints (google-research/bert modeling.py names).

A Google checkpoint directory holds `bert_config.json` and `bert_model.ckpt.*`
(a TF1 Saver checkpoint: `.index` + `.data-*`). Its variable names convert
one-to-one to the Hugging Face names used as canonical names in
`bert_keras.weights` (see the table there):
`bert/encoder/layer_3/attention/self/query/kernel` (in, out)
-> `encoder.layer.3.attention.self.query.weight` (out, in).
Optimizer slots (`adam_m`, `adam_v`) and `global_step` are skipped.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from pipeline.contract.checkpoint import GOOGLE, HF, CheckpointSpec
from pipeline.contract.errors import UserError

GOOGLE_CONFIG, GOOGLE_CKPT = "bert_config.json", "bert_model.ckpt"

# Names that do not follow the generic rule.
_SPECIAL = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",  # stored (2, H), like HF
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
}
_SPECIAL_BACK = {v: k for k, v in _SPECIAL.items()}
_LEAF = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}
_LEAF_BACK = {"LayerNorm": {"weight": "gamma", "bias": "beta"}}


def google_to_hf(name: str) -> tuple[str, bool] | None:
    """Google variable name -> (canonical HF name, transpose?); None for non-model variables."""
    if name in _SPECIAL:
        return _SPECIAL[name], False
    parts = name.split("/")
    if parts[-1] in ("adam_m", "adam_v") or name == "global_step":
        return None
    if parts[0] == "bert":
        parts = parts[1:]
    parts = [p.replace("layer_", "layer/") if re.fullmatch(r"layer_\d+", p) else p for p in parts]
    parts = "/".join(parts).split("/")
    if parts[0] == "embeddings" and len(parts) == 2:  # embedding tables: bert/embeddings/word_embeddings
        return ".".join(parts) + ".weight", False
    leaf = parts[-1]
    if leaf not in _LEAF:
        return None
    return ".".join(parts[:-1] + [_LEAF[leaf]]), leaf == "kernel"


def hf_to_google(name: str) -> tuple[str, bool]:
    """Canonical HF name -> (Google variable name, transpose?)."""
    if name in _SPECIAL_BACK:
        return _SPECIAL_BACK[name], False
    parts = name.split(".")
    if parts[0] == "embeddings" and len(parts) == 3 and parts[1] != "LayerNorm":
        return "bert/embeddings/" + parts[1], False
    leaf, parent = parts[-1], parts[-2]
    if parent == "LayerNorm":
        google_leaf = _LEAF_BACK["LayerNorm"][leaf]
    else:
        google_leaf = "kernel" if leaf == "weight" else "bias"
    path = "/".join(parts[:-1])
    path = re.sub(r"layer/(\d+)", r"layer_\1", path)
    prefix = "" if parts[0] == "cls" else "bert/"
    return f"{prefix}{path}/{google_leaf}", google_leaf == "kernel"


def _checkpoint_prefix(path_dir: str) -> str:
    prefix = os.path.join(path_dir, GOOGLE_CKPT)
    if os.path.exists(prefix + ".index"):
        return prefix
    found = sorted(glob.glob(os.path.join(path_dir, "*.ckpt*.index")))
    if not found:
        raise UserError(f"{path_dir} holds no TF checkpoint ({GOOGLE_CKPT}.index): not a Google BERT directory")
    return found[0][: -len(".index")]


def read_google_checkpoint(path_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(bert_config.json dict, canonical state) of a Google BERT checkpoint directory."""
    import tensorflow as tf

    config_path = os.path.join(path_dir, GOOGLE_CONFIG)
    try:
        with open(config_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{config_path} not found: a Google BERT directory holds bert_config.json") from None
    except ValueError:
        raise UserError(f"{config_path} is not valid JSON") from None
    reader = tf.train.load_checkpoint(_checkpoint_prefix(path_dir))
    state = {}
    for name in reader.get_variable_to_shape_map():
        mapped = google_to_hf(name)
        if mapped is None:
            continue
        hf_name, transpose = mapped
        value = np.asarray(reader.get_tensor(name), np.float32)
        state[hf_name] = value.T if transpose else value
    return cfg, state


def write_google_checkpoint(state: dict[str, np.ndarray], config: dict, path_dir: str) -> str:
    """Write a canonical state as a Google-format checkpoint (bert_config.json + bert_model.ckpt.*).

    `config` is the model's Hugging Face config.json (`weights.hf_config`); bert_config.json gets
    the same values under Google's keys (the table in `BertConfig`).

    Uses the SaveV2 op that TF1's `tf.compat.v1.train.Saver` uses, so variable
    names are the plain modeling.py names (not object-graph paths) and
    `tf.train.load_checkpoint` / modeling.py's `init_from_checkpoint` read it.
    """
    import tensorflow as tf

    from bert_keras.weights import checkpoint_config, encoder_arguments

    # The config first: a model the format cannot describe leaves nothing behind.
    values = encoder_arguments(config, HF, "the model's config")
    google_cfg = {**checkpoint_config(values, GOOGLE), "hidden_act": config.get("hidden_act", "gelu")}
    os.makedirs(path_dir, exist_ok=True)
    names, tensors = [], []
    for hf_name, value in sorted(state.items()):
        name, transpose = hf_to_google(hf_name)
        names.append(name)
        tensors.append(tf.constant(np.ascontiguousarray(value.T if transpose else value), tf.float32))
    prefix = os.path.join(path_dir, GOOGLE_CKPT)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    with open(os.path.join(path_dir, GOOGLE_CONFIG), "w", encoding="utf-8") as fh:
        json.dump(google_cfg, fh, indent=2)
    return path_dir


def load_google_checkpoint(path_dir: str):
    """(BertPretrainingModel with the checkpoint's weights, LoadReport) from a Google directory."""
    from bert_keras.weights import assign_state, build_pretraining_model

    cfg, state = read_google_checkpoint(path_dir)
    model = build_pretraining_model(cfg, GOOGLE, os.path.join(path_dir, GOOGLE_CONFIG))
    return model, assign_state(model, state, str(CheckpointSpec(GOOGLE, path_dir)))
