"""ModernBERT parity with Hugging Face transformers, both directions, in fp32.

The references are small, randomly initialised `ModernBertModel` / `ModernBertForMaskedLM` /
`ModernBertForSequenceClassification` built here, their weights spread out (norm gains and
biases far from 1 and 0, larger matrices) so a swapped or transposed tensor cannot hide, saved
with `save_pretrained`. HF runs with attn_implementation="eager" (plain masked softmax; "sdpa"
computes the same function). 4 layers give global (0, 3) and local (1, 2) layers; the local
window (16 tokens, 8 each side) is shorter than the 70-token rows, so the blocked local path
runs, and a 20-token batch takes the full-matrix local path.
"""

import numpy as np
import pytest
import torch
from transformers import (
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertModel,
)

from bert_keras.modernbert.weights import build_model, load_hf_checkpoint, save_hf_checkpoint, slots
from bert_keras.weights import export_state
from pipeline.contract.schema import CLS_POSITIONS, MASK_POSITIONS, PADDING_MASK, TOKEN_IDS

VOCAB, SEQ, TOL = 300, 70, 1e-4


def _config(**overrides):
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  local_attention=16, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  cls_token_id=1, sep_token_id=2, attn_implementation="eager")
    return ModernBertConfig(**(kwargs | overrides))


def _spread(model, seed=0):
    """Weights away from HF's init (norm gains 1, tiny matrices), the tied decoder still tied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _saved(cls, tmp_path, seed=0, **overrides):
    hf = _spread(cls(_config(**overrides)), seed)
    hf.save_pretrained(tmp_path / cls.__name__)
    return hf, str(tmp_path / cls.__name__)


def _batch(seq=SEQ, seed=0):
    """Three rows: full, padded after 50, padded after 20."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(3, seq)).astype(np.int32)
    mask = np.ones((3, seq), np.int32)
    mask[1, 50:] = 0
    mask[2, 20:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _inputs(ids, mask):
    return {TOKEN_IDS: ids, PADDING_MASK: mask,
            MASK_POSITIONS: np.tile(np.arange(ids.shape[1], dtype=np.int32), (ids.shape[0], 1))}


def _hf(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def _max_diff(ours, ref, mask):
    return float(np.abs(ours - ref)[mask.astype(bool)].max())


@pytest.mark.parametrize("seq", [SEQ, 20])
def test_last_hidden_state_matches_hf_with_padding_and_rows_longer_than_the_window(tmp_path, seq):
    hf, path = _saved(ModernBertModel, tmp_path)
    model, report = load_hf_checkpoint(path)
    assert report.initialized == ["prediction head", "decoder bias"]  # a bare ModernBertModel has no MLM head
    ids, mask = _batch(seq)
    ours = model.encoder(_inputs(ids, mask))["sequence_output"].numpy()
    assert _max_diff(ours, _hf(hf, ids, mask), mask) < TOL


def test_mlm_logits_match_hf(tmp_path):
    hf, path = _saved(ModernBertForMaskedLM, tmp_path)
    model, report = load_hf_checkpoint(path)
    assert report.initialized == [] and report.ignored == []
    ids, mask = _batch()
    ours = model(_inputs(ids, mask))["mlm_logits"].numpy()
    ref = _hf(hf, ids, mask)
    assert np.abs(ref).max() > 1.0  # the spread weights give logits worth comparing
    assert _max_diff(ours, ref, mask) < TOL


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classification_logits_match_hf(tmp_path, pooling):
    hf, path = _saved(ModernBertForSequenceClassification, tmp_path, num_labels=3, classifier_pooling=pooling)
    model, _ = load_hf_checkpoint(path)
    ids, mask = _batch()
    ours = model(_inputs(ids, mask)).numpy()[:, 0]  # (batch, instances=1, 3) -> (batch, 3)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(ours - ref).max() < TOL


def test_packed_rows_match_their_instances_run_one_by_one_in_hf(tmp_path):
    """Instances longer than the window share rows; each must see only itself (window and global layers)."""
    hf, path = _saved(ModernBertForMaskedLM, tmp_path, seed=1)
    model, _ = load_hf_checkpoint(path)
    rng = np.random.default_rng(3)
    rows = [[40, 25], [30, 21, 12]]  # instance lengths per packed row of SEQ tokens (the second ends in padding)
    ids, mask = np.zeros((2, SEQ), np.int32), np.zeros((2, SEQ), np.int32)
    cls = np.zeros((2, 3), np.int32)
    spans = []
    for r, lengths in enumerate(rows):
        start = 0
        for k, n in enumerate(lengths):
            ids[r, start:start + n] = rng.integers(3, VOCAB, size=n)
            mask[r, start:start + n] = k + 1
            cls[r, k] = start
            spans.append((r, start, n))
            start += n
    batch = _inputs(ids, mask) | {CLS_POSITIONS: cls}
    hidden = model.encoder(batch)["sequence_output"].numpy()
    logits = model(batch)["mlm_logits"].numpy()
    for r, start, n in spans:
        alone = ids[r:r + 1, start:start + n]
        ones = np.ones_like(alone)
        assert np.abs(hidden[r, start:start + n] - _hf(hf.model, alone, ones)[0]).max() < TOL
        assert np.abs(logits[r, start:start + n] - _hf(hf, alone, ones)[0]).max() < TOL


@pytest.mark.parametrize("cls", [ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertModel])
def test_export_to_transformers_loads_there_with_the_same_outputs(tmp_path, cls):
    hf, path = _saved(cls, tmp_path, num_labels=2)
    model, _ = load_hf_checkpoint(path)
    out = str(tmp_path / "exported")
    saved = model if cls is not ModernBertModel else model.encoder
    save_hf_checkpoint(saved, out)
    again = cls.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = _batch()
    valid = mask.astype(bool)
    ref, back = _hf(hf, ids, mask), _hf(again, ids, mask)
    diff = np.abs(back - ref)[valid] if ref.ndim == 3 else np.abs(back - ref)
    assert diff.max() < TOL
    # and back again into bertpipe: the same tensors, every one that was written
    reloaded, report = load_hf_checkpoint(out)
    assert report.ignored == []
    a, b = export_state(saved, slots(saved)), export_state(reloaded, slots(reloaded))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_transformers_4_style_config_maps_to_the_same_model():
    """Hub checkpoints of transformers 4.x spell the layer pattern and thetas as their own keys."""
    old = {"model_type": "modernbert", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
           "num_hidden_layers": 6, "num_attention_heads": 2, "global_attn_every_n_layers": 3,
           "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "local_attention": 128}
    enc = build_model(old, "config.json").encoder
    assert enc.layer_types == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    assert (enc.global_rope_theta, enc.local_rope_theta) == (160000.0, 10000.0)
