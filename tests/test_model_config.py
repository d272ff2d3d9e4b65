"""The `model:` section: one table of hyperparameters (names, defaults, checkpoint keys) from which
the encoder and the checkpoint configs derive, the family registry, and the checkpoint spec."""

from __future__ import annotations

import json
import os

import pytest

from bert_keras import families
from bert_keras.encoder import BertEncoder, build_encoder
from bert_keras.weights import encoder_arguments, export_state, hf_config
from bert_keras.weights_google import write_google_checkpoint
from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.config import BertConfig, load_config
from pipeline.contract.errors import ConfigError, UserError
from pipeline.contract.model_config import hyperparameters
from pipeline.runner import hash_inputs
from pipeline.stages import build_stages

TABLE = hyperparameters(BertConfig)
# A value unlike its default for every hyperparameter that both checkpoint formats hold.
ODD = dict(vocab_size=30, hidden_size=12, num_layers=3, num_heads=3, intermediate_size=20, max_position_embeddings=24,
           type_vocab_size=3, dropout=0.2, attention_dropout=0.3, initializer_range=0.05)


def test_the_table_holds_every_model_key_and_its_checkpoint_names():
    assert [h.name for h in TABLE] == [k for k in BertConfig.model_fields if k not in ("family", "init_from")]
    by_name = {h.name: h for h in TABLE}
    assert (by_name["num_layers"].hf, by_name["num_layers"].google) == ("num_hidden_layers", "num_hidden_layers")
    assert (by_name["layer_norm_epsilon"].hf, by_name["layer_norm_epsilon"].google) == ("layer_norm_eps", None)
    assert by_name["normalize_first"].hf is by_name["normalize_first"].google is None
    assert {h.name for h in TABLE if h.shape} >= {"vocab_size", "hidden_size", "num_layers", "intermediate_size"}


def test_every_hyperparameter_reaches_the_encoder_its_config_and_both_checkpoint_configs(tmp_path):
    values = {**ODD, "layer_norm_epsilon": 1e-7}
    encoder = build_encoder(BertConfig(**values), vocab_size=30)
    config = encoder.get_config()
    for h in TABLE:
        want = values.get(h.name, h.default)
        assert getattr(encoder, h.name) == want and config[h.name] == want, h.name
    assert BertEncoder.from_config(config).get_config() == config
    hf = hf_config(encoder)
    assert {h.hf: hf[h.hf] for h in TABLE if h.hf} == {h.hf: values.get(h.name, h.default) for h in TABLE if h.hf}
    assert encoder_arguments(hf, "hf", "config.json") == {h.name: values[h.name] for h in TABLE if h.hf}
    # Google's bert_config.json has no epsilon key: 1e-7 would load as 1e-12, so writing it is refused.
    with pytest.raises(UserError, match="layer_norm_epsilon 1e-07 cannot be written to a Google"):
        write_google_checkpoint(export_state(encoder), hf, str(tmp_path / "g"))
    assert not (tmp_path / "g").exists()
    plain = BertEncoder(**ODD)
    write_google_checkpoint(export_state(plain), hf_config(plain), str(tmp_path / "g"))
    google = json.loads((tmp_path / "g" / "bert_config.json").read_text())
    assert google == {**{h.google: ODD[h.name] for h in TABLE if h.google}, "hidden_act": "gelu"}
    assert encoder_arguments(google, "google", "bert_config.json") == ODD


def test_a_checkpoint_config_must_give_the_sizes_and_fit_the_checks():
    hf = hf_config(BertEncoder(**ODD))
    del hf["num_attention_heads"]
    with pytest.raises(UserError, match="lacks key 'num_attention_heads'"):
        encoder_arguments(hf, "hf", "x/config.json")
    with pytest.raises(UserError, match="divisible by num_heads") as err:
        encoder_arguments({**hf, "num_attention_heads": 5}, "hf", "x/config.json")
    assert "x/config.json" in str(err.value) and "\n" not in str(err.value)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_family_defaults_to_bert_and_an_unknown_family_is_one_line(tmp_path):
    cfg = load_config(_write(tmp_path, "model:\n  hidden_size: 64\n  num_heads: 4\n"))
    assert cfg.model.family == "bert" and isinstance(cfg.model, BertConfig)
    assert families.for_config(cfg.model) is families.BertFamily
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "model:\n  family: roberta\n"))
    assert "model.family 'roberta' is not a model family: use one of bert" in str(err.value)
    with pytest.raises(ConfigError, match=r"c.yaml: model.hidden_sise: unknown key"):  # no union tag in the key
        load_config(_write(tmp_path, "model:\n  hidden_sise: 64\n"))


@pytest.mark.parametrize("text, fmt, path", [
    ("hf:/m/minilm", "hf", "/m/minilm"),
    ("google:ckpt/bert", "google", "ckpt/bert"),
    ("runs/demo/pretrain", "bertpipe", "runs/demo/pretrain"),
    ("gs://bucket/encoder.weights.h5", "bertpipe", "gs://bucket/encoder.weights.h5"),  # not a prefix
    ("C:\\runs\\pretrain", "bertpipe", "C:\\runs\\pretrain"),
])
def test_checkpoint_specs_parse_in_one_place(text, fmt, path):
    spec = CheckpointSpec.parse(text)
    assert (spec.format, spec.path, str(spec)) == (fmt, path, text)
    assert spec.imported == (fmt != "bertpipe")


def test_a_checkpoint_spec_without_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="names no directory: write hf:DIR"):
        load_config(_write(tmp_path, "model:\n  init_from: 'hf:'\n"))
    with pytest.raises(ConfigError, match="model.init_from: checkpoint 'google:' names no directory"):
        load_config(None, ["model.init_from='google:'"])  # --set values are not resolved first


def test_checkpoint_paths_resolve_next_to_the_config_and_a_plain_directory_is_hashed(tmp_path):
    weights = tmp_path / "old" / "pretrain"
    weights.mkdir(parents=True)
    (weights / "encoder.weights.h5").write_bytes(b"one")
    cfg = load_config(_write(tmp_path, "model:\n  init_from: old/pretrain\n"
                                       "finetune:\n  t: {type: classification, train_file: t.jsonl, init: hf:ckpt}\n"))
    assert cfg.model.init_from == str(weights)
    assert cfg.finetune["t"].init == f"hf:{tmp_path / 'ckpt'}"
    pretrain = next(s for s in build_stages(cfg) if s.name == "pretrain")
    before = hash_inputs(pretrain.inputs)
    assert os.path.join(str(weights), "encoder.weights.h5") in before
    (weights / "encoder.weights.h5").write_bytes(b"two")
    assert hash_inputs(pretrain.inputs) != before  # new weights: the stage reruns


def test_the_registry_reads_checkpoints_by_format_and_model_type(tmp_path):
    assert families.for_checkpoint(CheckpointSpec.parse("google:/x")) is families.BertFamily
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert families.for_checkpoint(CheckpointSpec("hf", str(tmp_path))) is families.BertFamily
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="model_type 'gpt2'"):
        families.for_checkpoint(CheckpointSpec("hf", str(tmp_path)))
