"""bertpipe's MLM and NSP heads against a randomly initialised Hugging Face `BertForPreTraining`
(PyTorch, fp32): the checkpoint loads through `hf:DIR` and both heads' logits match within 1e-4.
Every parameter is moved off its initial value first (HF starts biases at 0 and LayerNorm at 1),
so each one's mapping is exercised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from bert_keras.weights import load_hf_checkpoint, save_hf_checkpoint
from pipeline.contract import schema as S

rng = np.random.default_rng(0)
IDS = rng.integers(5, 99, (3, 16))
MASK = np.ones((3, 16), np.int64)
MASK[0, 11:], MASK[1, 6:] = 0, 0
SEGMENTS = (np.arange(16)[None, :] >= np.array([[6], [3], [9]])).astype(np.int64) * MASK
POSITIONS = np.array([[1, 3, 4, 9, 10], [0, 1, 2, 4, 5], [2, 7, 8, 12, 15]])  # real tokens only


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        out = model(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK),
                    token_type_ids=torch.from_numpy(SEGMENTS))
    directory = tmp_path_factory.mktemp("hf")
    model.save_pretrained(directory)
    return str(directory), out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def _heads(model):
    out = model({S.TOKEN_IDS: IDS, S.SEGMENT_IDS: SEGMENTS, S.PADDING_MASK: MASK, S.MASK_POSITIONS: POSITIONS},
                training=False)
    return out["mlm_logits"].numpy(), out["nsp_logits"].numpy()[:, 0]


def test_mlm_and_nsp_heads_match_transformers_bert_for_pretraining(reference):
    directory, hf_mlm, hf_nsp = reference
    model, report = load_hf_checkpoint(directory)
    assert report.initialized == []  # both heads came from the checkpoint
    mlm, nsp = _heads(model)
    want = np.take_along_axis(hf_mlm, POSITIONS[..., None], axis=1)  # HF scores every position
    assert mlm.shape == want.shape == (3, 5, 99)
    assert float(np.abs(mlm - want).max()) < 1e-4
    assert float(np.abs(nsp - hf_nsp).max()) < 1e-4


def test_heads_written_back_load_in_transformers_with_the_same_logits(reference, tmp_path):
    directory, hf_mlm, hf_nsp = reference
    model, _ = load_hf_checkpoint(directory)
    save_hf_checkpoint(model, str(tmp_path))
    again = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        out = again(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK),
                    token_type_ids=torch.from_numpy(SEGMENTS))
    np.testing.assert_allclose(out.prediction_logits.numpy(), hf_mlm, atol=1e-5)
    np.testing.assert_allclose(out.seq_relationship_logits.numpy(), hf_nsp, atol=1e-5)
