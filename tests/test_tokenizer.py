"""The one tokenizer: offsets into the original text, bad bytes, missing special tokens."""

import os

import pytest
import tensorflow as tf

from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract.errors import ContractError, UserError
from tests.conftest import DATA


@pytest.fixture(scope="module")
def vocab():
    return load_vocab(os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt"))


def test_offsets_point_into_the_original_text_through_accents_case_and_bad_bytes(vocab):
    raw = [
        "Héllo Wörld, ½ of the CAFÉ…".encode(),
        "naïve résumé İstanbul".encode(),
        b"bad \xff bytes caf\xc3\xa9",
        b"",
    ]
    tok = make_tokenizer(vocab)
    ids, starts, ends = tok.tokenize_with_offsets(tf.constant(raw))
    assert ids.to_list() == tok.tokenize(tf.constant(raw)).to_list()
    spans = [[r[a:b] for a, b in zip(s, e, strict=True)] for r, s, e in zip(raw, starts.to_list(), ends.to_list(), strict=True)]
    pieces = [[vocab[i] for i in row] for row in ids.to_list()]
    assert pieces[0] == ["hello", "world", ",", "½", "of", "the", "cafe", "…"]
    assert spans[0] == [b"H\xc3\xa9llo", b"W\xc3\xb6rld", b",", "½".encode(), b"of", b"the", "CAFÉ".encode(), "…".encode()]
    assert pieces[1] == ["naive", "resume", "istanbul"] and spans[1][2] == "İstanbul".encode()
    assert pieces[2] == ["bad", "[UNK]", "bytes", "cafe"] and spans[2][1] == b"\xff"
    assert pieces[3] == []


def test_word_pieces_share_their_word_offsets(vocab):
    tok = make_tokenizer(vocab)
    text = "Unaffordable"
    ids, starts, ends = tok.tokenize_with_offsets(tf.constant([text]))
    pieces = [vocab[i] for i in ids.to_list()[0]]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert "".join(text[a:b] for a, b in zip(starts.to_list()[0], ends.to_list()[0], strict=True)) == text


def test_vocab_without_special_tokens_is_refused():
    with pytest.raises(ContractError, match=r"lacks \[CLS\], \[SEP\], \[MASK\]"):
        special_ids(["[PAD]", "[UNK]", "the"], source="vocab file v.txt")


def test_missing_vocab_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vocab(str(tmp_path / "nope.txt"))
