"""Weight import/export plumbing on tiny models (the real-model parity is test_weights_minilm.py)."""

import json

import numpy as np
import pytest
import torch

from bert_keras.encoder import BertEncoder
from bert_keras.pretraining_model import BertPretrainingModel
from bert_keras.weights import (
    encoder_arguments,
    export_state,
    hf_config,
    init_from,
    load_hf_checkpoint,
    save_hf_checkpoint,
    slots,
)
from bert_keras.weights_google import google_to_hf, hf_to_google, load_google_checkpoint, write_google_checkpoint
from pipeline.contract.config import BertConfig
from pipeline.contract.errors import UserError

TINY = dict(vocab_size=30, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_position_embeddings=20)


def _states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_google_names_round_trip():
    model = BertPretrainingModel(BertEncoder(**TINY))
    names = [s.name for s in slots(model)]
    for name in names:
        gname, transpose = hf_to_google(name)
        assert google_to_hf(gname) == (name, transpose)
    assert hf_to_google("encoder.layer.1.attention.output.LayerNorm.weight") == (
        "bert/encoder/layer_1/attention/output/LayerNorm/gamma",
        False,
    )
    assert google_to_hf("bert/encoder/layer_0/attention/self/query/kernel/adam_m") is None


def test_hf_and_google_round_trips_with_heads(tmp_path):
    model = BertPretrainingModel(BertEncoder(**TINY))
    save_hf_checkpoint(model, str(tmp_path / "hf"))
    loaded, report = load_hf_checkpoint(str(tmp_path / "hf"))
    assert report.initialized == [] and report.loaded == len(slots(model))
    _states_equal(export_state(model), export_state(loaded))
    write_google_checkpoint(export_state(model), hf_config(model.encoder), str(tmp_path / "google"))
    loaded, report = load_google_checkpoint(str(tmp_path / "google"))
    assert report.initialized == []
    _states_equal(export_state(model), export_state(loaded))
    fresh = BertPretrainingModel(BertEncoder(**TINY))
    init_from(fresh, f"google:{tmp_path / 'google'}")
    _states_equal(export_state(model), export_state(fresh))


def test_init_from_refuses_mismatch_and_pickles(tmp_path):
    enc = BertEncoder(**TINY)
    save_hf_checkpoint(enc, str(tmp_path / "enc"))
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == ["BertModel"]
    with pytest.raises(UserError, match="hidden_size 8 vs 16") as err:
        init_from(BertEncoder(**{**TINY, "hidden_size": 16}), f"hf:{tmp_path / 'enc'}")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a directory"):
        init_from(enc, "hf:/nonexistent")
    # pytorch_model.bin only behind the explicit flag
    pt = tmp_path / "pt"
    pt.mkdir()
    (pt / "config.json").write_text((tmp_path / "enc" / "config.json").read_text())
    torch.save({k: torch.from_numpy(v) for k, v in export_state(enc).items()}, pt / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        load_hf_checkpoint(str(pt))
    loaded, report = load_hf_checkpoint(str(pt), allow_pickle=True)
    assert report.initialized == ["MLM head", "NSP head"]
    _states_equal(export_state(enc), export_state(loaded.encoder))


def test_config_conversion_feeds_model_config():
    fields = encoder_arguments({**hf_config(BertEncoder(**TINY)), "hidden_dropout_prob": 0.2}, "hf", "config.json")
    cfg = BertConfig(**fields)
    assert cfg.hidden_size == 8 and cfg.num_layers == 2 and cfg.dropout == 0.2 and cfg.vocab_size == 30
    with pytest.raises(UserError, match="hidden_act 'relu'"):
        encoder_arguments({**hf_config(BertEncoder(**TINY)), "hidden_act": "relu"}, "hf", "config.json")
