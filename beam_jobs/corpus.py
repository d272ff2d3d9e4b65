"""Reading the corpus: files -> cleaned text documents, bad input counted by reason.

Pure generators over one byte range of one file (`read_range`, `read_documents`
for a whole file) do the work; `ReadDocuments` is the thin Beam wrapper. It
reads through Beam's splittable file machinery (`ReadAllFiles` over a
`FileBasedSource`, as `ReadAllFromText` does), so a large plain-text file is
cut into byte ranges of `SPLIT_BYTES` read by different workers, and turns
every skip into a Beam metrics counter (namespace `SKIPPED`), which the jobs
copy into their manifest.

Documents stay whole across split points. A range owns the documents that
*start* in it and reads the last one past its end, as a text source does with
lines: in `blank_line` mode a document starts after a blank line (a range
other than the first skips to the first blank line at or after its start); in
JSONL a document is a line. Which files are never split, and why:
- `documents: file`: the file is one document, so one worker reads it whole;
  a corpus of a few huge single-document files cannot spread (use
  `blank_line` or JSONL for large files that hold many documents);
- `.gz` files: gzip has no random access, so each is one range (Beam's rule too).

Every file is read as a byte stream in bounded lines, so a 50 MB line without
a newline costs at most `4 * max_document_chars` bytes of memory before it is
dropped and counted, never an OOM or a hang. Any Beam filesystem works
(`FileSystems.open`), so `gs://...` or `s3://...` globs read the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filebasedsource import FileBasedSource, ReadAllFiles
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.contract.config import DataConfig
from pipeline.contract.errors import UserError

SKIPPED = "bertpipe.skipped"  # metrics namespace: one counter per skip reason
NOTED = "bertpipe.noted"  # metrics namespace: repaired input (BOM, CRLF), not skipped

_BLOCK = 1 << 20  # read files in 1 MiB blocks
SPLIT_BYTES = 64 << 20  # byte range per read task, as Beam's text source (DEFAULT_DESIRED_BUNDLE_SIZE)

Skip = Callable[[str], None]
Claim = Callable[[int], bool]  # may the reader emit the document owned by this byte offset?


def match_corpus(patterns: Iterable[str]) -> list[FileMetadata]:
    """Every file matched by the corpus globs (path and size), sorted by path; a pattern
    matching nothing is an error."""
    patterns = list(patterns)
    if not patterns:
        raise UserError("data.corpus is empty: list the text files or glob patterns to read")
    files: dict[str, FileMetadata] = {}
    for pattern in patterns:
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # Beam raises BeamIOError / ValueError per filesystem
            raise UserError(f"cannot list corpus pattern {pattern!r}: {err}") from None
        if not found:
            raise UserError(f"corpus pattern {pattern!r} matches no files: check data.corpus")
        files.update((m.path, m) for m in found)
    return [files[p] for p in sorted(files)]


def expand_corpus(patterns: Iterable[str]) -> list[str]:
    """Every file matched by the corpus globs, sorted."""
    return [m.path for m in match_corpus(patterns)]


def document_key(text: str) -> bytes:
    """A stable 16-byte key of a document's content: seeds and shuffles derive from it,
    never from arrival order, so any number of workers gives the same instances."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _is_jsonl(path: str, data: DataConfig) -> bool:
    if data.format != "auto":
        return data.format == "jsonl"
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith((".jsonl", ".json"))


def _open(path: str):
    # Raw bytes; .gz is decompressed by Python's gzip so corruption raises here, in our code.
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw


def gzip_is_intact(path: str) -> bool:
    """Stream the whole .gz once (constant memory) so a corrupt file is skipped whole,
    not after half of its documents were already emitted."""
    try:
        with _open(path) as fh:
            while fh.read(_BLOCK):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def bounded_lines(fh, limit: int, offset: int = 0) -> Iterator[tuple[int, bytes | None]]:
    """(byte offset, line without its newline) of a byte stream positioned at `offset`; a
    line longer than `limit` bytes is yielded as None (its bytes are dropped as they
    arrive, so memory stays bounded)."""
    buf, start, overflow, overflow_at = b"", offset, False, offset
    while True:
        block = fh.read(_BLOCK)
        if not block:
            break
        parts = (buf + block).split(b"\n")
        buf = parts.pop()
        for part in parts:
            yield (overflow_at, None) if overflow else (start, part)
            start += len(part) + 1
            overflow = False
        if len(buf) > limit:
            if not overflow:
                overflow, overflow_at = True, start
            start, buf = start + len(buf), b""
    if overflow:
        yield overflow_at, None
    elif buf:
        yield start, buf


def clean_text(raw: bytes, skip: Skip, note: Skip) -> str | None:
    """Decode and repair one document; None (and a counted skip) if it is unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        skip("non_utf8")
        return None
    if "\x00" in text:  # NUL bytes: a binary file or a broken export, not prose
        skip("nul_bytes")
        return None
    if text.startswith("\ufeff"):
        note("bom_removed")
        text = text[1:]
    if "\r" in text:
        note("crlf_normalized")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        skip("empty_document")
        return None
    return text.strip()


def _text_documents(lines: Iterator[tuple[int, bytes | None]], data: DataConfig, skip: Skip, note: Skip,
                    claim: Claim, at_start: bool) -> Iterator[str]:
    """Documents of a text file's lines. In `blank_line` mode the document after a
    blank line is owned by that line's offset (`claim`); a reader that does not
    start at the file's start skips to the first blank line."""
    limit = data.max_document_chars
    per_line = data.documents == "blank_line"
    block: list[bytes] = []
    size, too_long = 0, False
    owned = at_start and claim(0)
    last_claim = 0

    def flush():
        if too_long:
            skip("document_too_long")
        elif block:
            text = clean_text(b"\n".join(block), skip, note)
            if text is not None:
                if len(text) > limit:
                    skip("document_too_long")
                else:
                    yield text

    for offset, line in lines:
        if per_line and line is not None and not line.strip():
            if owned:
                yield from flush()
            block, size, too_long = [], 0, False
            if offset > last_claim or not owned:  # a separator: the next document's owner
                last_claim, owned = offset, claim(offset)
                if not owned:
                    return
            continue
        if not owned or too_long:
            continue
        if line is None:  # a single line longer than the limit
            too_long, block, size = True, [], 0
            continue
        size += len(line) + 1
        if size > 4 * limit:  # bytes >= chars/4: the document is certainly too long
            too_long, block = True, []
            continue
        block.append(line)
    if owned:
        yield from flush()


def _jsonl_documents(lines: Iterator[tuple[int, bytes | None]], data: DataConfig, skip: Skip, note: Skip,
                     claim: Claim, at_start: bool) -> Iterator[str]:
    for offset, line in lines:
        if not claim(offset):  # a record belongs to the range its line starts in
            return
        if line is None:
            skip("document_too_long")
            continue
        if not line.strip():
            continue
        text = clean_text(line, skip, note)
        if text is None:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            skip("bad_json")
            continue
        value = record.get(data.text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            skip("missing_text_field")
            continue
        if not value.strip():
            skip("empty_document")
        elif len(value) > data.max_document_chars:
            skip("document_too_long")
        else:
            yield value


def splittable(path: str, data: DataConfig) -> bool:
    """May this file be read as several byte ranges? (see the module docstring)"""
    return not path.endswith(".gz") and (data.documents == "blank_line" or _is_jsonl(path, data))


def read_range(path: str, data: DataConfig, skip: Skip, note: Skip, start: int = 0,
               claim: Claim = lambda offset: True) -> Iterator[str]:
    """The cleaned documents owned by the byte range that starts at `start` and ends
    where `claim` first refuses an offset (a document, a blank-line block or a JSONL
    record). A whole file is `start=0` with a claim that never refuses."""
    if path.endswith(".gz"):
        if not claim(0):
            return
        if not gzip_is_intact(path):
            skip("corrupt_gzip")
            return
    seen, limit = False, 4 * data.max_document_chars
    with _open(path) as fh:
        if start > 0:
            fh.seek(start - 1)
            lines = bounded_lines(fh, limit, start - 1)
            next(lines, None)  # the line holding byte start-1 belongs to the range before
        else:
            lines = bounded_lines(fh, limit)

        def watched():
            nonlocal seen
            for item in lines:
                seen = True
                yield item

        reader = _jsonl_documents if _is_jsonl(path, data) else _text_documents
        yield from reader(watched(), data, skip, note, claim, start == 0)
    if not seen and start == 0:
        skip("empty_file")


def read_documents(path: str, data: DataConfig, skip: Skip, note: Skip = lambda reason: None) -> Iterator[str]:
    """The cleaned text documents of one whole file."""
    return read_range(path, data, skip, note)


def _counted(reason_namespace: str):
    return lambda reason: Metrics.counter(reason_namespace, reason).inc()


class _DocumentSource(FileBasedSource):
    """One corpus file as a Beam `FileBasedSource` whose records are documents.

    Compression is left to `read_range` (a corrupt .gz is a counted skip, not a
    worker failure), so Beam opens the bytes as they are.
    """

    def __init__(self, path: str, data: DataConfig):
        super().__init__(path, compression_type=CompressionTypes.UNCOMPRESSED, splittable=splittable(path, data),
                         validate=False)  # fmt: skip
        self._data = data

    def read_records(self, file_name, range_tracker):
        last = -1

        def claim(offset: int) -> bool:
            nonlocal last
            if offset <= last:  # already ours (a blank line at the very start of the range)
                return True
            last = offset
            return range_tracker.try_claim(offset)

        note = _counted(NOTED)
        for text in read_range(file_name, self._data, _counted(SKIPPED), note, range_tracker.start_position(), claim):
            note("documents_read")
            yield text


class _CountFn(beam.DoFn):
    def process(self, reason: str):
        Metrics.counter(SKIPPED, reason).inc()


class ReadDocuments(beam.PTransform):
    """files (`match_corpus`) -> PCollection[str] of documents, read in byte ranges of
    `split_bytes` spread over workers."""

    def __init__(self, files: list[FileMetadata], data: DataConfig, split_bytes: int = SPLIT_BYTES):
        super().__init__()
        self._files, self._data, self._split = files, data, split_bytes

    def expand(self, pbegin):
        data = self._data
        # Beam's file reader drops zero-byte files before any source sees them; count them here.
        empty = [m.path for m in self._files if m.size_in_bytes == 0]
        if empty:  # (every step costs the job start-up time: Beam inspects each DoFn's methods several times)
            _ = pbegin | "EmptyFiles" >> beam.Create(["empty_file"] * len(empty)) | "CountEmpty" >> beam.ParDo(_CountFn())
        files = [m for m in self._files if m.size_in_bytes > 0]
        reads = []
        for split in (True, False):  # ReadAllFiles splits all of its files or none
            group = [m for m in files if splittable(m.path, data) == split]
            if group:
                name = "Split" if split else "Whole"
                reads.append(
                    pbegin
                    | f"{name}Files" >> beam.Create(group, reshuffle=False)  # ReadAllFiles reshards the ranges
                    | f"Read{name}Files"
                    >> ReadAllFiles(splittable=split, compression_type=CompressionTypes.AUTO,
                                    desired_bundle_size=self._split, min_bundle_size=0,
                                    source_from_file=lambda path: _DocumentSource(path, data))  # fmt: skip
                )
        if not reads:
            return pbegin | "NoFiles" >> beam.Create([])
        return tuple(reads) | "AllDocuments" >> beam.Flatten()


def query_counters(result, namespace: str) -> dict[str, int]:
    """Committed (or, where a runner lacks them, attempted) counter values of a namespace."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out
