"""Model families: `model.family` -> what bertpipe needs to build, train, load and save one.

`FAMILIES` is a plain dict from a family's name to a small class. The stages never name a
family's classes; they ask the registry (`for_config`, `for_checkpoint`). What a new family
provides:

1. **Its config section**, in `pipeline/contract/model_config.py`: a `ModelConfig` subclass
   with `family: Literal["<name>"]` and its hyperparameters declared with `hyperparameter(...)`
   (name, default, checks, key in each checkpoint format's config), `vocab_size` and
   `max_position_embeddings` among them; added to `FAMILY_CONFIGS` and to `ModelSection`'s union.
2. **A class here**, registered in `FAMILIES`, with:
   - `name`, `config_class`;
   - `tokenizer`: `"wordpiece"` or `"bpe"`, what the data jobs and the exported models tokenize with;
   - `checkpoint_formats`: the `pipeline.contract.checkpoint` formats it imports and exports
     (`hf`, `google`); `hf_model_types`: the `model_type` values of a Hugging Face config.json it reads;
   - `build_encoder(model_cfg, vocab_size, **overrides)`: the encoder, a `keras.Model` called as
     `encoder(batch, training=...)` on the schema's batch dict (TOKEN_IDS, SEGMENT_IDS,
     PADDING_MASK holding packed instance ids, optional CLS_POSITIONS) that returns
     {SEQUENCE_OUTPUT: (batch, seq, hidden), POOLED_OUTPUT: (batch, instances, hidden)} and has
     the attributes `vocab_size`, `hidden_size`, `max_position_embeddings`, `initializer_range`.
     `overrides` may hold `dropout`, `attention_dropout` (pretraining's own) and
     `fused_kernels` (`bert_keras.distribute.use_fused_kernels`); a family ignores what it lacks;
   - `encoder_from_checkpoint(spec, **overrides) -> (encoder, state, source)`: an encoder shaped by
     an imported checkpoint's own config, and the tensors to assign once the model is built;
   - `build_pretraining_model(encoder, nsp)`: the model whose outputs
     `bert_keras.pretraining_model.pretraining_loss` reads (MLM logits; NSP logits only with nsp);
     `nsp`: whether the family has an NSP head at all (MLM-only families train MLM on any data);
   - `owns(encoder)`: whether an encoder is this family's (the pretraining model and the checkpoint
     writer follow the encoder, which an imported checkpoint may have chosen);
   - `assign_state(model, state, source) -> LoadReport` and `save_checkpoint(model, spec)`.
3. Tests: its parity tests against the reference implementation, and the stages' end-to-end test
   run with `model.family: <name>`.
"""

from __future__ import annotations

import json
import os

from pipeline.contract.checkpoint import GOOGLE, HF, CheckpointSpec
from pipeline.contract.errors import ConfigError, ContractError, UserError
from pipeline.contract.model_config import BertConfig, ModelConfig, ModernBertConfig


class BertFamily:
    """Classic BERT: `bert_keras.encoder.BertEncoder`, MLM (+ NSP) pretraining, HF and Google checkpoints."""

    name = "bert"
    config_class = BertConfig
    tokenizer = "wordpiece"
    checkpoint_formats = (HF, GOOGLE)
    hf_model_types = ("bert",)
    nsp = True

    @staticmethod
    def owns(encoder) -> bool:
        from bert_keras.encoder import BertEncoder

        return isinstance(encoder, BertEncoder)

    @staticmethod
    def build_encoder(model_cfg: BertConfig, vocab_size: int, **overrides):
        from bert_keras.encoder import build_encoder

        return build_encoder(model_cfg, vocab_size, **overrides)

    @staticmethod
    def encoder_from_checkpoint(spec: CheckpointSpec, **overrides):
        from bert_keras import weights
        from bert_keras.encoder import BertEncoder

        cfg, state, source = weights.read_checkpoint(spec)
        encoder = BertEncoder(**{**weights.encoder_arguments(cfg, spec.format, source), **overrides},
                              name="bert_encoder")
        return encoder, state, source

    @staticmethod
    def build_pretraining_model(encoder, nsp: bool = True):
        from bert_keras.pretraining_model import BertPretrainingModel

        return BertPretrainingModel(encoder, nsp=nsp)

    @staticmethod
    def assign_state(model, state, source: str):
        from bert_keras import weights

        return weights.assign_state(model, state, source)

    @staticmethod
    def save_checkpoint(model, spec: CheckpointSpec) -> str:
        from bert_keras import weights

        if spec.format == HF:
            return weights.save_hf_checkpoint(model, spec.path)
        if spec.format == GOOGLE:
            from bert_keras.weights_google import write_google_checkpoint

            return write_google_checkpoint(weights.export_state(model), weights.hf_config(weights.encoder_of(model)),
                                           spec.path)
        raise UserError(f"checkpoint {spec}: the bert family writes hf:DIR or google:DIR")


def _modernbert_overrides(overrides: dict) -> dict:
    """Pretraining's `dropout` / `attention_dropout` in ModernBERT's names; its training path always runs
    its fused softmax kernel (`bert_keras.modernbert.fused`, measured there), so `fused_kernels` is unused."""
    out = {k: v for k, v in overrides.items() if k not in ("dropout", "fused_kernels")}
    if "dropout" in overrides:
        out["embedding_dropout"] = out["mlp_dropout"] = overrides["dropout"]
    return out


class ModernBertFamily:
    """ModernBERT: `bert_keras.modernbert` (RoPE, local + global attention, GeGLU), MLM-only pretraining,
    Hugging Face checkpoints with `model_type: modernbert`."""

    name = "modernbert"
    config_class = ModernBertConfig
    tokenizer = "bpe"  # what its Hugging Face checkpoints bring (tokenizer.json); a WordPiece vocab works too
    checkpoint_formats = (HF,)
    hf_model_types = ("modernbert",)
    nsp = False

    @staticmethod
    def owns(encoder) -> bool:
        from bert_keras.modernbert.encoder import ModernBertEncoder

        return isinstance(encoder, ModernBertEncoder)

    @staticmethod
    def build_encoder(model_cfg: ModernBertConfig, vocab_size: int, **overrides):
        from bert_keras.modernbert.encoder import ModernBertEncoder

        if model_cfg.vocab_size is not None and model_cfg.vocab_size != vocab_size:
            raise ConfigError(f"model.vocab_size is {model_cfg.vocab_size} but the vocab file has {vocab_size} "
                              "tokens: drop model.vocab_size or use the matching vocab")
        return ModernBertEncoder(**{**model_cfg.architecture(), "vocab_size": vocab_size,
                                    **_modernbert_overrides(overrides)}, name="modernbert_encoder")

    @staticmethod
    def encoder_from_checkpoint(spec: CheckpointSpec, **overrides):
        from bert_keras.modernbert.encoder import ModernBertEncoder
        from bert_keras.modernbert.weights import encoder_kwargs_from_config
        from bert_keras.weights import HF_CONFIG, read_hf_checkpoint

        cfg, state = read_hf_checkpoint(spec.path)
        kwargs = encoder_kwargs_from_config(cfg, os.path.join(spec.path, HF_CONFIG))
        encoder = ModernBertEncoder(**{**kwargs, **_modernbert_overrides(overrides)}, name="modernbert_encoder")
        return encoder, state, f"hf:{spec.path}"

    @staticmethod
    def build_pretraining_model(encoder, nsp: bool = False):
        from bert_keras.modernbert.heads import ModernBertMaskedLM

        if nsp:
            raise ContractError("the modernbert family trains MLM only: unset pretrain.nsp (or set it false)")
        return ModernBertMaskedLM(encoder, name="modernbert_mlm")

    @staticmethod
    def assign_state(model, state, source: str):
        from bert_keras.modernbert.weights import assign

        return assign(model, state, source)

    @staticmethod
    def save_checkpoint(model, spec: CheckpointSpec) -> str:
        from bert_keras.modernbert.weights import save_hf_checkpoint

        if spec.format != HF:
            raise UserError(f"checkpoint {spec}: the modernbert family writes hf:DIR")
        return save_hf_checkpoint(model, spec.path)


FAMILIES = {BertFamily.name: BertFamily, ModernBertFamily.name: ModernBertFamily}


def for_config(model_cfg: ModelConfig):
    """The family of a `model:` section."""
    return FAMILIES[model_cfg.family]


def for_encoder(encoder):
    """The family an encoder belongs to."""
    for family in FAMILIES.values():
        if family.owns(encoder):
            return family
    raise TypeError(f"{type(encoder).__name__} is no registered model family's encoder")


def for_checkpoint(spec: CheckpointSpec):
    """The family that reads an imported checkpoint: by format, and for hf:DIR by config.json's
    `model_type` (a config.json without one is read as BERT's, as transformers' BertModel does)."""
    readers = [f for f in FAMILIES.values() if spec.format in f.checkpoint_formats]
    if spec.format == HF:
        model_type = _hf_model_type(spec.path)
        readers = [f for f in readers if model_type in f.hf_model_types]
        if not readers:
            known = ", ".join(t for f in FAMILIES.values() for t in f.hf_model_types)
            raise UserError(f"checkpoint {spec}: model_type {model_type!r} in config.json is not a model family "
                            f"bertpipe reads ({known})")
    if not readers:
        raise UserError(f"checkpoint {spec}: no model family reads the {spec.format} format")
    return readers[0]


def _hf_model_type(path_dir: str) -> str:
    try:
        with open(os.path.join(path_dir, "config.json"), encoding="utf-8") as fh:
            return json.load(fh).get("model_type", "bert")
    except (OSError, ValueError):
        return "bert"  # the reader names the missing or broken file
