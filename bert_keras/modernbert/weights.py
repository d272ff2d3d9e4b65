"""Import and export Hugging Face ModernBERT checkpoints (config.json + model.safetensors).

Canonical names are those of transformers' `ModernBertModel`; the task models
(`ModernBertForMaskedLM`, `ModernBertForSequenceClassification`) keep the encoder under
`model.`, which is dropped on reading and added on writing. L is the layer index, H hidden,
I intermediate, V vocab. HF `nn.Linear` weights are (out, in), Keras kernels (in, out): (T)
marks a transpose. Biases and norm biases exist only when the config turns them on
(`attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias`; all false in ModernBERT).

| bert_keras variable (encoder.*)            | Hugging Face name (`model.` prefix in task models) | shape (ours) |
|--------------------------------------------|----------------------------------------------------|--------------|
| tok_embeddings/embeddings                  | embeddings.tok_embeddings.weight                   | (V, H)       |
| embedding_norm/gamma [, beta]              | embeddings.norm.weight [, .bias]                   | (H,)         |
| block_L/attn_norm/gamma  (no layer 0)      | layers.L.attn_norm.weight (layer 0: Identity)      | (H,)         |
| block_L/wqkv/kernel (T)   [bias]           | layers.L.attn.Wqkv.weight (3H, H), rows [q; k; v]  | (H, 3H)      |
| block_L/attn_out/kernel (T)  [bias]        | layers.L.attn.Wo.weight                            | (H, H)       |
| block_L/mlp_norm/gamma [, beta]            | layers.L.mlp_norm.weight [, .bias]                 | (H,)         |
| block_L/wi/kernel (T)  [bias]              | layers.L.mlp.Wi.weight (2I, H), rows [input; gate] | (H, 2I)      |
| block_L/mlp_out/kernel (T)  [bias]         | layers.L.mlp.Wo.weight (H, I)                      | (I, H)       |
| final_norm/gamma [, beta]                  | final_norm.weight [, .bias]                        | (H,)         |
| mlm_head/transform/kernel (T)  [bias]      | head.dense.weight                                  | (H, H)       |
| mlm_head/transform_norm/gamma [, beta]     | head.norm.weight [, .bias]                         | (H,)         |
| mlm_head/output_bias                       | decoder.bias (when decoder_bias)                   | (V,)         |
| (tied to tok_embeddings)                   | decoder.weight (tied; HF does not store it)        |              |
| classification_head/dense/kernel (T)       | head.dense.weight                                  | (H, H)       |
| classification_head/norm/gamma [, beta]    | head.norm.weight [, .bias]                         | (H,)         |
| classification_head/classifier/logits/kernel (T), bias | classifier.weight (C, H), classifier.bias | (H, C)       |

The MLM head and the classification head share HF's `head.*` names, as in transformers, where
a classifier fine-tuned from an MLM checkpoint starts from the MLM head's dense and norm;
`init_from` does the same. Rotary tables are not weights: they follow from the config.
"""

from __future__ import annotations

import json
import os

import numpy as np

from bert_keras.modernbert.attention import GLOBAL, LOCAL, layer_types_every
from bert_keras.modernbert.encoder import ModernBertEncoder
from bert_keras.weights import HF_CONFIG, SAFETENSORS, LoadReport, Slot, assign_state, export_state, read_hf_checkpoint
from pipeline.contract.errors import UserError
from pipeline.contract.model_config import ModernBertConfig, hyperparameters

HEAD, DECODER, CLASSIFIER = "prediction head", "decoder bias", "classifier"
MASKED_LM, SEQUENCE_CLASSIFICATION, BASE = "ModernBertForMaskedLM", "ModernBertForSequenceClassification", "ModernBertModel"
_PREFIX = "model."
_IGNORABLE = ("decoder.weight",)  # tied to the token embeddings, checked in `_untied_decoder`


def _dense(name, layer, group="encoder"):
    out = [Slot(f"{name}.weight", layer.kernel, transpose=True, group=group)]
    return out + ([Slot(f"{name}.bias", layer.bias, group=group)] if layer.bias is not None else [])


def _norm(name, layer, group="encoder"):
    out = [Slot(f"{name}.weight", layer.gamma, group=group)]
    return out + ([Slot(f"{name}.bias", layer.beta, group=group)] if layer.beta is not None else [])


def _encoder_of(model) -> ModernBertEncoder:
    encoder = model if isinstance(model, ModernBertEncoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, ModernBertEncoder):
        raise TypeError(f"{type(model).__name__} is neither a ModernBertEncoder nor a model with one as .encoder")
    return encoder


def slots(model) -> list[Slot]:
    """Every canonical tensor of `model`: a ModernBertEncoder, or a model with .encoder and a head."""
    enc = _encoder_of(model)
    out = [Slot("embeddings.tok_embeddings.weight", enc.tok_embeddings.embeddings),
           *_norm("embeddings.norm", enc.embedding_norm)]
    for i, block in enumerate(enc.blocks):
        p = f"layers.{i}"
        if block.attn_norm is not None:
            out += _norm(f"{p}.attn_norm", block.attn_norm)
        out += _dense(f"{p}.attn.Wqkv", block.wqkv) + _dense(f"{p}.attn.Wo", block.attn_out)
        out += _norm(f"{p}.mlp_norm", block.mlp_norm)
        out += _dense(f"{p}.mlp.Wi", block.wi) + _dense(f"{p}.mlp.Wo", block.mlp_out)
    out += _norm("final_norm", enc.final_norm)
    mlm, cls = getattr(model, "mlm_head", None), getattr(model, "classification_head", None)
    if mlm is not None:
        out += _dense("head.dense", mlm.transform, HEAD) + _norm("head.norm", mlm.transform_norm, HEAD)
        if mlm.output_bias is not None:
            out.append(Slot("decoder.bias", mlm.output_bias, group=DECODER))
    if cls is not None:
        out += _dense("head.dense", cls.dense, HEAD) + _norm("head.norm", cls.norm, HEAD)
        out += _dense("classifier", cls.classifier.dense, CLASSIFIER)
    return out


def canonical_state(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix(_PREFIX): v for k, v in state.items()}


def _untied_decoder(state: dict[str, np.ndarray], source: str) -> None:
    decoder, table = state.get("decoder.weight"), state.get("embeddings.tok_embeddings.weight")
    if decoder is not None and table is not None and not np.array_equal(decoder, table):
        raise UserError(f"{source}: decoder.weight differs from the token embeddings; bert_keras ties them "
                        "(tie_word_embeddings: true), so this checkpoint cannot be loaded")


def assign(model, state: dict[str, np.ndarray], source: str) -> LoadReport:
    """Copy a HF ModernBERT state dict into `model` (the rules of `bert_keras.weights.assign_state`)."""
    state = canonical_state(state)
    _untied_decoder(state, source)
    report = assign_state(model, {k: v for k, v in state.items() if k not in _IGNORABLE}, source, slots(model))
    return report


# ---- configs ---------------------------------------------------------------------------------


def _rope_thetas(cfg: dict, source: str) -> tuple[float, float]:
    """(global, local) theta from transformers 5's `rope_parameters` or 4.x's `*_rope_theta` keys."""
    params = cfg.get("rope_parameters") or {}
    for kind in (GLOBAL, LOCAL):
        rope_type = (params.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise UserError(f"{source}: rope_type {rope_type!r} for {kind}; bert_keras implements the default RoPE")
    global_theta = (params.get(GLOBAL) or {}).get("rope_theta", cfg.get("global_rope_theta", 160_000.0))
    local_theta = (params.get(LOCAL) or {}).get("rope_theta", cfg.get("local_rope_theta"))
    return float(global_theta), float(global_theta if local_theta is None else local_theta)


def encoder_kwargs_from_config(cfg: dict, source: str = "config.json") -> dict:
    """HF ModernBERT config.json -> `ModernBertEncoder` keyword arguments: the keys of
    `ModernBertConfig`'s hyperparameter table, checked there (a bad value is a one-line error)."""
    from pydantic import ValidationError

    if cfg.get("model_type", "modernbert") != "modernbert":
        raise UserError(f"{source}: model_type {cfg['model_type']!r} is not modernbert")
    if cfg.get("classifier_activation", "gelu") != "gelu":
        raise UserError(f"{source}: classifier_activation {cfg['classifier_activation']!r} is not supported; "
                        "bert_keras implements HF's exact 'gelu'")
    missing = [h.hf for h in hyperparameters(ModernBertConfig) if h.required and h.hf not in cfg]
    if missing:
        raise UserError(f"{source} lacks key {missing[0]!r}: not a ModernBERT config")
    kwargs = {h.name: cfg[h.hf] for h in hyperparameters(ModernBertConfig) if h.hf in cfg and cfg[h.hf] is not None}
    kwargs["global_rope_theta"], kwargs["local_rope_theta"] = _rope_thetas(cfg, source)
    try:
        checked = ModernBertConfig(family="modernbert", **kwargs)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{source}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    out = checked.architecture()
    out["layer_types"] = list(checked.layer_types or layer_types_every(checked.num_hidden_layers,
                                                                       checked.global_attn_every_n_layers))
    return out


def head_kwargs_from_config(cfg: dict) -> dict:
    """The head switches of a HF config (`classifier_*`), for the MLM model and the classifier."""
    return dict(classifier_bias=bool(cfg.get("classifier_bias", False)),
                classifier_activation=cfg.get("classifier_activation", "gelu"))


def hf_config(model, token_ids: dict[str, int] | None = None) -> dict:
    """A transformers config.json for `model` (5.x keys, plus 4.x's where they say the same).

    token_ids: pad/bos/eos/cls/sep token ids of the tokenizer; HF's defaults are ModernBERT's
    own vocabulary's (pad 50283), out of range for another vocabulary, so pad defaults to 0.
    """
    enc = _encoder_of(model)
    mlm, cls = getattr(model, "mlm_head", None), getattr(model, "classification_head", None)
    arch = MASKED_LM if mlm is not None else SEQUENCE_CLASSIFICATION if cls is not None else BASE
    cfg = {
        "architectures": [arch], "model_type": "modernbert",
        **{h.hf: getattr(enc, h.name) for h in hyperparameters(ModernBertConfig) if h.hf},
        "layer_types": list(enc.layer_types), "initializer_cutoff_factor": 2.0,
        "rope_parameters": {GLOBAL: {"rope_type": "default", "rope_theta": enc.global_rope_theta},
                            LOCAL: {"rope_type": "default", "rope_theta": enc.local_rope_theta}},
        "tie_word_embeddings": True,
        "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None, "cls_token_id": None, "sep_token_id": None,
    }
    cfg.update(token_ids or {})
    if enc.layer_types != layer_types_every(enc.num_hidden_layers, enc.global_attn_every_n_layers):
        del cfg["global_attn_every_n_layers"]  # transformers 4.x reads only this: leave it out where it misleads
    if mlm is not None:
        cfg.update(classifier_bias=model.classifier_bias, classifier_activation=model.classifier_activation,
                   decoder_bias=model.decoder_bias)
    if cls is not None:
        cfg.update(classifier_bias=cls.classifier_bias, classifier_activation=cls.classifier_activation,
                   classifier_pooling=cls.classifier_pooling, classifier_dropout=cls.classifier_dropout,
                   id2label={str(i): f"LABEL_{i}" for i in range(cls.num_classes)},
                   label2id={f"LABEL_{i}": i for i in range(cls.num_classes)})
    return cfg


# ---- files ------------------------------------------------------------------------------------


def build_model(cfg: dict, source: str):
    """The bertpipe model a HF config describes: a classifier for ...ForSequenceClassification, else the
    MLM model (a bare `ModernBertModel` checkpoint then leaves the MLM head freshly initialized)."""
    from bert_keras.modernbert.heads import ModernBertClassifier, ModernBertMaskedLM

    encoder = ModernBertEncoder(**encoder_kwargs_from_config(cfg, source), name="modernbert_encoder")
    if SEQUENCE_CLASSIFICATION in (cfg.get("architectures") or []):
        labels = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))
        return ModernBertClassifier(encoder, labels, classifier_pooling=cfg.get("classifier_pooling", "cls"),
                                    classifier_dropout=float(cfg.get("classifier_dropout", 0.0)),
                                    **head_kwargs_from_config(cfg))
    return ModernBertMaskedLM(encoder, decoder_bias=bool(cfg.get("decoder_bias", True)), **head_kwargs_from_config(cfg))


def load_hf_checkpoint(path_dir: str, allow_pickle: bool = False):
    """(model with the checkpoint's weights, LoadReport) from a HF ModernBERT directory."""
    cfg, state = read_hf_checkpoint(path_dir, allow_pickle)
    model = build_model(cfg, os.path.join(path_dir, HF_CONFIG))
    return model, assign(model, state, f"hf:{path_dir}")


def init_from(model, path_dir: str, allow_pickle: bool = False) -> LoadReport:
    """Load a HF ModernBERT directory's weights into an existing model of the same size."""
    cfg, state = read_hf_checkpoint(path_dir, allow_pickle)
    source = f"hf:{path_dir}"
    want, enc = encoder_kwargs_from_config(cfg, source), _encoder_of(model)
    diffs = [f"{k} {want[k]} vs {getattr(enc, k)}" for k in want if want[k] != getattr(enc, k)]
    if diffs:
        raise UserError(f"{source} does not fit the model (checkpoint vs model: {'; '.join(diffs)}): "
                        "set the model's config to the checkpoint's")
    return assign(model, state, source)


def save_hf_checkpoint(model, path_dir: str, token_ids: dict[str, int] | None = None) -> str:
    """Write config.json + model.safetensors that transformers' ModernBert* classes load."""
    from safetensors.numpy import save_file

    from pipeline.contract.atomic import atomic_write_text

    state = export_state(model, slots(model))
    if not isinstance(model, ModernBertEncoder):  # task models keep the encoder under `model.`
        encoder_names = {s.name for s in slots(_encoder_of(model))}
        state = {(_PREFIX + k if k in encoder_names else k): v for k, v in state.items()}
    os.makedirs(path_dir, exist_ok=True)
    atomic_write_text(os.path.join(path_dir, HF_CONFIG), json.dumps(hf_config(model, token_ids), indent=2) + "\n")
    tmp = os.path.join(path_dir, SAFETENSORS + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path_dir, SAFETENSORS))
    return path_dir
