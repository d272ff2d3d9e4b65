"""The modernbert family in the registry and the tokenizer.json seam, without training.

- `model: {family: modernbert}` parses to `ModernBertConfig`, whose hyperparameter table (Hugging Face's
  names) reaches the encoder, its get_config and the HF config.json both ways;
- the registry builds it, reads an `hf:DIR` with `model_type: modernbert`, and refuses NSP;
- a tokenizer.json is a vocab file: tokens by id, the checkpoint's own when it brings one, and the
  fine-tuning data job tokenizes with it through `tokenizers`, QA answers landing on their characters.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bert_keras import families
from bert_keras.modernbert.encoder import ModernBertEncoder
from bert_keras.modernbert.heads import ModernBertMaskedLM
from bert_keras.modernbert.weights import encoder_kwargs_from_config, hf_config, save_hf_checkpoint
from bert_keras.tokenizer import checkpoint_vocab, load_vocab, special_ids
from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.config import load_config
from pipeline.contract.errors import ConfigError, ContractError
from pipeline.contract.model_config import ModernBertConfig, hyperparameters
from tests.harness import DATA

TABLE = hyperparameters(ModernBertConfig)
ODD = dict(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=4, num_attention_heads=3,
           max_position_embeddings=1024, initializer_range=0.03, norm_eps=1e-6, norm_bias=True, attention_bias=True,
           attention_dropout=0.1, global_attn_every_n_layers=2, global_rope_theta=5e4, local_rope_theta=2e3,
           local_attention=32, embedding_dropout=0.2, mlp_bias=True, mlp_dropout=0.3)


def test_the_table_uses_hugging_face_names_and_reaches_the_encoder_and_its_configs():
    assert all(h.hf == h.name for h in TABLE)
    assert [h.name for h in TABLE] == [k for k in ModernBertConfig.model_fields
                                       if k not in ("family", "init_from", "classifier_dropout")]
    encoder = families.ModernBertFamily.build_encoder(ModernBertConfig(**ODD), 50)
    config = encoder.get_config()
    for name, value in ODD.items():
        assert getattr(encoder, name) == value and config[name] == value, name
    assert encoder.layer_types == ["full_attention", "sliding_attention"] * 2
    assert ModernBertEncoder.from_config(config).get_config() == config
    hf = hf_config(encoder)
    assert {k: hf[k] for k in ODD} == ODD
    assert {k: v for k, v in encoder_kwargs_from_config(hf).items() if k in ODD} == ODD


def test_pretraining_overrides_map_onto_modernbert_dropouts():
    encoder = families.ModernBertFamily.build_encoder(ModernBertConfig(**ODD), 50, dropout=0.0, attention_dropout=0.0,
                                                      fused_kernels=False)
    assert (encoder.embedding_dropout, encoder.mlp_dropout, encoder.attention_dropout) == (0.0, 0.0, 0.0)


def test_family_modernbert_parses_and_its_keys_are_checked_in_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {family: modernbert, hidden_size: 64, num_attention_heads: 4}\n")
    cfg = load_config(str(path))
    assert isinstance(cfg.model, ModernBertConfig) and families.for_config(cfg.model) is families.ModernBertFamily
    assert cfg.model.task_dropout == 0.0 and cfg.model.max_position_embeddings == 8192
    path.write_text("model: {family: modernbert, num_layers: 4}\n")  # a bert key
    with pytest.raises(ConfigError, match="model.num_layers: unknown key"):
        load_config(str(path))
    path.write_text("model: {family: modernbert, hidden_size: 30, num_attention_heads: 4}\n")
    with pytest.raises(ConfigError, match="divisible by num_attention_heads") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)


def test_an_hf_modernbert_directory_is_read_by_the_family_and_nsp_is_refused(tmp_path):
    model = ModernBertMaskedLM(ModernBertEncoder(60, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                                 num_attention_heads=2, local_attention=8))
    save_hf_checkpoint(model, str(tmp_path / "mb"))
    spec = CheckpointSpec("hf", str(tmp_path / "mb"))
    family = families.for_checkpoint(spec)
    assert family is families.ModernBertFamily
    encoder, state, source = family.encoder_from_checkpoint(spec, dropout=0.0)
    assert families.for_encoder(encoder) is family and encoder.num_hidden_layers == 3
    pretraining = family.build_pretraining_model(encoder)
    report = family.assign_state(pretraining, state, source)
    assert report.loaded == len(state) and not report.initialized and not report.ignored
    np.testing.assert_array_equal(pretraining.encoder.tok_embeddings.embeddings.numpy(),
                                  model.encoder.tok_embeddings.embeddings.numpy())
    with pytest.raises(ContractError, match="MLM only"):
        family.build_pretraining_model(encoder, nsp=True)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    from tests.test_modernbert_stages import train_bpe

    return train_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json")


def test_a_tokenizer_json_is_a_vocab_file_and_a_checkpoint_brings_its_own(tokenizer_json, tmp_path):
    tokens = load_vocab(tokenizer_json)
    assert len(tokens) == 600 and special_ids(tokens).cls == tokens.index("[CLS]")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "tokenizer.json").write_text(open(tokenizer_json, encoding="utf-8").read())
    assert checkpoint_vocab(str(tmp_path / "ck")).endswith("tokenizer.json")
    (tmp_path / "ck" / "vocab.txt").write_text("[PAD]\n")  # BERT's directories bring both: vocab.txt wins
    assert checkpoint_vocab(str(tmp_path / "ck")).endswith("vocab.txt")


def test_the_task_data_job_tokenizes_with_the_tokenizer_json_and_qa_spans_hit_the_answers(tokenizer_json, tmp_path):
    from beam_jobs.finetune_data import prepare_task_data
    from bert_keras.bpe import load_tokenizer_json
    from pipeline.contract import schema
    from pipeline.contract.config import task_config
    from tests.test_beam_finetune import _read

    squad = os.path.join(DATA, "squad", "squad_sample.json")
    task = task_config(type="qa", train_file=squad, test_file=squad, max_seq_length=96, doc_stride=32,
                       max_query_length=24, dev_fraction=0.0)
    manifests = prepare_task_data(task, tokenizer_json, True, str(tmp_path / "qa"), 0)
    assert manifests["test"].vocab_size == 600 and manifests["test"].vocab_file == tokenizer_json
    _, f = _read(str(tmp_path / "qa" / "test"))
    with open(os.path.join(tmp_path, "qa", "test", schema.EXAMPLES_NAME), encoding="utf-8") as fh:
        examples = {r[schema.EXAMPLE_ID]: r for r in map(json.loads, fh)}
    reference = load_tokenizer_json(tokenizer_json)
    hits = 0
    for row in range(f[schema.TOKEN_IDS].shape[0]):
        ex = examples[int(f[schema.EXAMPLE_ID][row, 0])]
        s, e = int(f[schema.START_POSITION][row, 0]), int(f[schema.END_POSITION][row, 0])
        if s == 0:
            continue
        hits += 1
        start, end = int(f[schema.TOKEN_CHAR_STARTS][row, s]), int(f[schema.TOKEN_CHAR_ENDS][row, e])
        answer = ex["answers"][0]["text"]
        # The span covers the answer; byte-level tokens keep their leading space (as tokenizers reports it).
        assert ex["context"][start:end].strip() == answer or answer in ex["context"][start:end]
        # The window's pieces are tokenizers' own ids for the context.
        context_ids = reference.encode(ex["context"], add_special_tokens=False).ids
        assert f[schema.TOKEN_IDS][row, s] in context_ids
    assert hits >= 3


def test_the_modernbert_encoder_passes_the_encoder_harness(tmp_path):
    from pipeline.contract import schema
    from tests.harness import run_encoder_test

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=(2, 40)).astype(np.int32)
    mask = np.ones((2, 40), np.int32)
    mask[0, 25:], mask[1, 30:] = 2, 0  # a packed row and a padded one
    inputs = {schema.TOKEN_IDS: ids, schema.PADDING_MASK: mask, schema.SEGMENT_IDS: np.zeros_like(ids),
              schema.CLS_POSITIONS: np.array([[0, 25], [0, 0]], np.int32)}
    kwargs = dict(vocab_size=60, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
                  local_attention=8, attention_dropout=0.1, mlp_dropout=0.1, embedding_dropout=0.1)
    run_encoder_test(ModernBertEncoder, kwargs, inputs, {"sequence_output": (2, 40, 16), "pooled_output": (2, 2, 16)},
                     tmp_path, dropout_off={"attention_dropout": 0.0, "mlp_dropout": 0.0, "embedding_dropout": 0.0})
