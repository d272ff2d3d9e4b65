"""Vocabulary extension and embedding resizing keep every existing row."""

import numpy as np
import pytest

from bert_keras.encoder import BertEncoder
from bert_keras.pretraining_model import BertPretrainingModel
from bert_keras.tokenizer import load_vocab, make_tokenizer
from bert_keras.vocab_extend import extend_vocab, resize_embeddings, write_vocab
from bert_keras.weights import export_state
from pipeline.contract import schema as S
from pipeline.contract.errors import UserError


def test_extend_fills_unused_slots_then_appends(tmp_path):
    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "tax", "##es"]
    ext = extend_vocab(vocab, ["Medicare", "tariff", "the", "social security", "filibuster", "medicare"])
    assert ext.vocab[1:3] == ["medicare", "tariff"] and ext.vocab[10:] == ["filibuster"]
    assert ext.filled_unused == ["medicare", "tariff"] and ext.appended == ["filibuster"]
    assert ext.skipped == {"already present": 2, "contain whitespace": 1, "empty": 0}
    assert ext.vocab[:1] + ext.vocab[3:10] == vocab[:1] + vocab[3:]  # no other id moved
    path = write_vocab(str(tmp_path / "vocab.txt"), ext.vocab)
    ids = make_tokenizer(load_vocab(path)).tokenize(["Medicare taxes filibuster"]).to_list()[0]
    assert ids == [1, 8, 9, 10]


def test_resize_keeps_every_row_and_outputs():
    model = BertPretrainingModel(BertEncoder(vocab_size=12, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16))
    bigger = resize_embeddings(model, 15)
    old, new = export_state(model), export_state(bigger)
    table = new["embeddings.word_embeddings.weight"]
    assert table.shape == (15, 8)
    np.testing.assert_array_equal(table[:12], old["embeddings.word_embeddings.weight"])
    np.testing.assert_allclose(table[12:], np.repeat(old["embeddings.word_embeddings.weight"].mean(0, keepdims=True), 3, 0), atol=1e-6)
    np.testing.assert_array_equal(new["cls.predictions.bias"][:12], old["cls.predictions.bias"])
    for k in old:
        if k not in ("embeddings.word_embeddings.weight", "cls.predictions.bias"):
            np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    batch = {S.TOKEN_IDS: np.array([[4, 5, 6, 11]]), S.SEGMENT_IDS: np.zeros((1, 4), int), S.PADDING_MASK: np.ones((1, 4), int), S.MASK_POSITIONS: np.array([[1]])}
    a, b = model(batch)["mlm_logits"], bigger(batch)["mlm_logits"]
    np.testing.assert_allclose(a, b[..., :12], atol=1e-5)
    with pytest.raises(UserError, match="can only grow"):
        resize_embeddings(model, 10)
