"""Where a model's weights start: random init, bertpipe encoder weights, or an imported checkpoint.

Shared by pretraining (`model.init_from`, continued pretraining) and fine-tuning
(`finetune.<task>.init`); the spec is parsed by `pipeline.contract.checkpoint.CheckpointSpec`.
An `hf:DIR` / `google:DIR` checkpoint dictates the architecture (its own config, read by the
model family that reads it), so `model.*` sizes are ignored for it; so what a stage built is
recorded (`encoder_spec`) and the export rebuilds it from that (`rebuild_encoder`), not from the
config.
"""

from __future__ import annotations

import os

from bert_keras import families
from pipeline.contract import atomic
from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.errors import ContractError, UserError
from pipeline.contract.model_config import ModelConfig

RANDOM = "random"


def _spec(init: str | None) -> CheckpointSpec | None:
    return None if init in (None, "", RANDOM) else CheckpointSpec.parse(init)


def build_encoder_for(init: str | None, model_cfg: ModelConfig, vocab_size: int, **overrides):
    """(encoder, (state, source) to assign once the model is built, or None).

    `overrides`: encoder arguments that win over the config or checkpoint (pretraining's
    own dropout, `fused_kernels`)."""
    spec = _spec(init)
    # An imported init brings architecture and weights. Without one, continued pretraining from hf:/google:
    # (model.init_from) made this run's encoders that checkpoint's architecture (model.* sizes are ignored for it),
    # so its fine-tuning and random-init encoders are built the same way, its weights left out.
    architecture = spec if spec is not None and spec.imported else _spec(model_cfg.init_from)
    if architecture is not None and architecture.imported:
        encoder, state, source = families.for_checkpoint(architecture).encoder_from_checkpoint(architecture,
                                                                                               **overrides)
        if encoder.vocab_size != vocab_size:
            raise ContractError(f"{source} has a vocab of {encoder.vocab_size} tokens but the data was "
                                f"written with {vocab_size}: use the checkpoint's vocab.txt")
        return encoder, (state, source) if architecture is spec else None
    return families.for_config(model_cfg).build_encoder(model_cfg, vocab_size, **overrides), None


def apply_init(model, encoder, init: str | None, pending) -> str:
    """Load the starting weights; returns a one-line description of what was loaded."""
    spec = _spec(init)
    if pending is not None:
        state, source = pending
        return families.for_checkpoint(spec).assign_state(model, state, source).summary()
    if spec is None:
        return "random init"
    path = spec.path
    if os.path.isdir(path) or (atomic.is_remote(path) and not atomic.exists(path)):
        path = os.path.join(path, "encoder.weights.h5")  # a pretrain stage directory
    if not atomic.exists(path):
        raise UserError(f"encoder weights {path} not found: run the pretrain stage, or start from random, "
                        "hf:DIR or google:DIR")
    try:
        encoder.load_weights(path)
    except ValueError as err:
        raise ContractError(f"encoder weights {path} do not fit model.* ({str(err).splitlines()[0][:120]}): "
                            "fine-tune with the model config the encoder was pretrained with") from None
    return f"encoder weights from {path}"


def encoder_spec(encoder) -> dict:
    """The encoder's architecture as JSON: Keras' own serialization (registered class + constructor arguments)."""
    import keras

    return keras.saving.serialize_keras_object(encoder)


def rebuild_encoder(spec: dict):
    """A fresh encoder of the recorded architecture, under the current dtype policy (not the training one)."""
    import importlib

    import keras

    if str(spec.get("module", "")).startswith("bert_keras."):  # registers the family's class in a fresh process
        importlib.import_module(spec["module"])
    spec = {**spec, "config": {k: v for k, v in spec["config"].items() if k != "dtype"}}
    return keras.saving.deserialize_keras_object(spec)
