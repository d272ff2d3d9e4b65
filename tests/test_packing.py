"""A packed row gives the same outputs as its instances run one by one."""

import numpy as np
import tensorflow as tf

from bert_keras.encoder import BertEncoder
from bert_keras.layers import packed_positions, same_instance
from bert_keras.pretraining_model import BertPretrainingModel
from pipeline.contract import schema as S

SEQ = 32


def _instance(rng, n_a, n_b):
    """[CLS] A [SEP] B [SEP] as (ids, segments) with vocab 50 (CLS=2, SEP=3)."""
    ids = [2, *rng.integers(5, 50, n_a), 3, *rng.integers(5, 50, n_b), 3]
    seg = [0] * (n_a + 2) + [1] * (n_b + 1)
    return np.array(ids), np.array(seg)


def _row(parts):
    ids, seg, mask, cls = np.zeros(SEQ, int), np.zeros(SEQ, int), np.zeros(SEQ, int), []
    start = 0
    for k, (i, s) in enumerate(parts, 1):
        ids[start : start + len(i)], seg[start : start + len(i)], mask[start : start + len(i)] = i, s, k
        cls.append(start)
        start += len(i)
    return ids, seg, mask, cls


def test_positions_restart_per_instance():
    mask = tf.constant([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(
        packed_positions(same_instance(mask)).numpy(), [[0, 1, 2, 0, 1, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0, 0]]
    )


def test_packed_row_equals_instances_one_by_one():
    rng = np.random.default_rng(0)
    encoder = BertEncoder(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=SEQ)
    parts = [_instance(rng, 3, 4), _instance(rng, 5, 2), _instance(rng, 1, 1)]
    ids, seg, mask, cls = _row(parts)
    # A packed row and an unpacked row in one batch: the same code path serves both.
    single_ids, single_seg, single_mask, _ = _row(parts[:1])
    packed = encoder(
        {
            S.TOKEN_IDS: np.stack([ids, single_ids]),
            S.SEGMENT_IDS: np.stack([seg, single_seg]),
            S.PADDING_MASK: np.stack([mask, np.minimum(single_mask, 1)]),
            S.CLS_POSITIONS: np.array([cls, [0, 0, 0]]),
        },
        training=False,
    )
    start = 0
    for k, part in enumerate(parts):
        i, s, m, _ = _row([part])
        alone = encoder({S.TOKEN_IDS: i[None], S.SEGMENT_IDS: s[None], S.PADDING_MASK: m[None]}, training=False)
        n = len(part[0])
        np.testing.assert_allclose(
            packed["sequence_output"][0, start : start + n], alone["sequence_output"][0, :n], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(packed["pooled_output"][0, k], alone["pooled_output"][0, 0], atol=1e-5, rtol=0)
        if k == 0:
            np.testing.assert_allclose(packed["sequence_output"][1, :n], alone["sequence_output"][0, :n], atol=1e-5, rtol=0)
        start += n
    # Not a vacuous check: without the packing mask the instances do mix.
    mixed = encoder({S.TOKEN_IDS: ids[None], S.SEGMENT_IDS: seg[None], S.PADDING_MASK: np.minimum(mask, 1)[None]})
    assert np.abs(mixed["sequence_output"][0, : len(parts[0][0])] - packed["sequence_output"][0, : len(parts[0][0])]).max() > 1e-3


def test_pretraining_model_gives_one_nsp_prediction_per_packed_instance():
    rng = np.random.default_rng(1)
    model = BertPretrainingModel(BertEncoder(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    parts = [_instance(rng, 2, 3), _instance(rng, 4, 4)]
    ids, seg, mask, cls = _row(parts)
    batch = {S.TOKEN_IDS: ids[None], S.SEGMENT_IDS: seg[None], S.PADDING_MASK: mask[None], S.CLS_POSITIONS: np.array([cls]), S.MASK_POSITIONS: np.array([[1, 9, 0]])}
    out = model(batch, training=False)
    assert out["nsp_logits"].shape == (1, 2, 2) and out["mlm_logits"].shape == (1, 3, 50)
    i, s, m, _ = _row(parts[1:])
    alone = model({S.TOKEN_IDS: i[None], S.SEGMENT_IDS: s[None], S.PADDING_MASK: m[None], S.MASK_POSITIONS: np.array([[1, 0, 0]])})
    np.testing.assert_allclose(out["nsp_logits"][0, 1], alone["nsp_logits"][0, 0], atol=1e-5)
    np.testing.assert_allclose(out["mlm_logits"][0, 1], alone["mlm_logits"][0, 0], atol=1e-4)  # position 9 = 2nd instance's token 1
