"""Classic BERT's MLM and NSP heads against transformers' BertForPreTraining (fp32, 1e-4).

A small randomly initialised BertForPreTraining, its weights spread out (LayerNorm gains and
biases far from 1 and 0) so a swapped tensor cannot hide, saved with save_pretrained and loaded
by bert_keras.weights; the MLM logits at every position and the NSP logits must match, on
padded rows with two segments.
"""

import numpy as np
import torch
from transformers import BertConfig, BertForPreTraining

from bert_keras.weights import load_hf_checkpoint
from pipeline.contract.schema import MASK_POSITIONS, PADDING_MASK, SEGMENT_IDS, TOKEN_IDS


def test_mlm_and_nsp_logits_match_bert_for_pretraining(tmp_path):
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    hf = BertForPreTraining(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            scale = 0.3 if "LayerNorm" in name else 0.2
            p.copy_((1.0 if name.endswith("LayerNorm.weight") else 0.0) + scale * torch.randn(p.shape, generator=gen))
    hf.eval().save_pretrained(tmp_path)
    model, report = load_hf_checkpoint(str(tmp_path))
    assert report.initialized == []

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 120, size=(3, 24)).astype(np.int32)
    segments = np.zeros_like(ids)
    segments[:, 12:] = 1
    mask = np.ones_like(ids)
    mask[1, 18:] = 0
    mask[2, 9:] = 0
    segments[mask == 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), token_type_ids=torch.tensor(segments, dtype=torch.long),
                 attention_mask=torch.tensor(mask))
    out = model({TOKEN_IDS: ids, SEGMENT_IDS: segments, PADDING_MASK: mask,
                 MASK_POSITIONS: np.tile(np.arange(24, dtype=np.int32), (3, 1))})
    mlm_ref = ref.prediction_logits.numpy()
    assert np.abs(mlm_ref).max() > 1.0
    assert np.abs(out["mlm_logits"].numpy() - mlm_ref)[mask.astype(bool)].max() < 1e-4
    assert np.abs(out["nsp_logits"].numpy()[:, 0] - ref.seq_relationship_logits.numpy()).max() < 1e-4
