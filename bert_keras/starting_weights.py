"""Where a model's weights start: random init, this run's pretrained encoder, or an imported checkpoint.

Shared by pretraining (`model.init_from`, continued pretraining) and fine-tuning
(`finetune.<task>.init`). An `hf:DIR` / `google:DIR` checkpoint dictates the
architecture (its config.json), so `model.*` sizes are ignored for it; so what a
stage built is recorded (`encoder_spec`) and the export rebuilds it from that
(`rebuild_encoder`), not from the config.
"""

from __future__ import annotations

import os

from pipeline.contract.config import ModelConfig
from pipeline.contract.errors import ContractError, UserError


def build_encoder_for(init: str | None, model_cfg: ModelConfig, vocab_size: int):
    """(encoder, weights to assign or None). hf:/google: checkpoints dictate the architecture."""
    from bert_keras.encoder import BertEncoder, build_encoder

    if init and init.split(":", 1)[0] in ("hf", "google"):
        from bert_keras import weights

        cfg, state, source = weights.read_checkpoint(init)
        kwargs = weights.encoder_kwargs_from_config(cfg, source)
        if kwargs["vocab_size"] != vocab_size:
            raise ContractError(f"{source} has a vocab of {kwargs['vocab_size']} tokens but the data was "
                                f"written with {vocab_size}: use the checkpoint's vocab.txt")
        return BertEncoder(**kwargs, name="bert_encoder"), (state, source)
    return build_encoder(model_cfg, vocab_size), None


def apply_init(model, encoder, init: str | None, pending) -> str:
    """Load the starting weights; returns a one-line description of what was loaded."""
    if pending is not None:
        from bert_keras import weights

        return weights.assign_state(model, *pending).summary()
    if init in (None, "", "random"):
        return "random init"
    path = init
    if os.path.isdir(path):
        path = os.path.join(path, "encoder.weights.h5")  # a pretrain stage directory
    if not os.path.exists(path):
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
    import keras

    spec = {**spec, "config": {k: v for k, v in spec["config"].items() if k != "dtype"}}
    return keras.saving.deserialize_keras_object(spec)
