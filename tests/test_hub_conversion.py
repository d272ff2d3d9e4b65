"""The keras-hub start of the pretraining-value bench: a keras-hub BertBackbone's weights, written into a bertpipe
encoder by Hugging Face names, give the same outputs (up to keras-hub's tanh-approximate GELU)."""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

from tests.conftest import DATA
from tests.harness import TINY_MODEL

sys.path.insert(0, os.path.join(os.path.dirname(DATA), "bench"))
from pretraining_value_hub import to_bertpipe_encoder  # noqa: E402  (a bench module beside the bench script)


def test_a_keras_hub_backbone_converted_to_a_bertpipe_encoder_gives_the_same_outputs(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(3)
    model = {**TINY_MODEL}
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=60, num_layers=model["num_layers"], num_heads=model["num_heads"],
        hidden_dim=model["hidden_size"], intermediate_dim=model["intermediate_size"],
        max_sequence_length=model["max_position_embeddings"])
    # Weights far from their small init, so a wrong transpose or head split cannot hide in the noise.
    for v in backbone.weights:
        v.assign(np.random.default_rng(len(v.path)).normal(0, 0.3, v.shape).astype("float32"))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 60, (3, 12)).astype("int32")
    mask = np.ones((3, 12), "int32")
    mask[1, 8:] = 0
    segments = (np.arange(12)[None, :] >= 6).astype("int32").repeat(3, 0)
    hub = backbone({"token_ids": ids, "segment_ids": segments, "padding_mask": mask})
    encoder, _ = to_bertpipe_encoder(backbone, model, str(tmp_path / "enc.weights.h5"))
    ours = encoder({"token_ids": ids, "segment_ids": segments, "padding_mask": mask}, training=False)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours["sequence_output"])[real], np.asarray(hub["sequence_output"])[real],
                               atol=2e-2)
    np.testing.assert_allclose(np.asarray(ours["pooled_output"])[:, 0], np.asarray(hub["pooled_output"]), atol=2e-2)
    assert os.path.exists(tmp_path / "enc.weights.h5")
