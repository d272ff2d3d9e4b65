"""Reading the corpus: files -> cleaned text documents, bad input counted by reason.

Pure generators over one file (`read_documents`) do the work; `ReadDocuments`
is the thin Beam wrapper that expands the globs, spreads files over workers and
turns every skip into a Beam metrics counter (namespace `SKIPPED`), which the
jobs copy into their manifest.

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
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.contract.config import DataConfig
from pipeline.contract.errors import UserError

SKIPPED = "bertpipe.skipped"  # metrics namespace: one counter per skip reason
NOTED = "bertpipe.noted"  # metrics namespace: repaired input (BOM, CRLF), not skipped

_BLOCK = 1 << 20  # read files in 1 MiB blocks

Skip = Callable[[str], None]


def expand_corpus(patterns: Iterable[str]) -> list[str]:
    """Every file matched by the corpus globs, sorted; a pattern matching nothing is an error."""
    patterns = list(patterns)
    if not patterns:
        raise UserError("data.corpus is empty: list the text files or glob patterns to read")
    files: set[str] = set()
    for pattern in patterns:
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # Beam raises BeamIOError / ValueError per filesystem
            raise UserError(f"cannot list corpus pattern {pattern!r}: {err}") from None
        if not found:
            raise UserError(f"corpus pattern {pattern!r} matches no files: check data.corpus")
        files.update(m.path for m in found)
    return sorted(files)


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


def bounded_lines(fh, limit: int) -> Iterator[bytes | None]:
    """Lines of a byte stream without their newline; a line longer than `limit` bytes
    is yielded as None (its bytes are dropped as they arrive, so memory stays bounded)."""
    buf, overflow = b"", False
    while True:
        block = fh.read(_BLOCK)
        if not block:
            break
        parts = (buf + block).split(b"\n")
        buf = parts.pop()
        for part in parts:
            yield None if overflow else part
            overflow = False
        if len(buf) > limit:
            overflow, buf = True, b""
    if overflow:
        yield None
    elif buf:
        yield buf


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


def _text_documents(lines: Iterator[bytes | None], data: DataConfig, skip: Skip, note: Skip) -> Iterator[str]:
    limit = data.max_document_chars
    block: list[bytes] = []
    size, too_long = 0, False

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

    for line in lines:
        if line is None:  # a single line longer than the limit
            too_long, block, size = True, [], 0
            continue
        if data.documents == "blank_line" and not line.strip():
            yield from flush()
            block, size, too_long = [], 0, False
            continue
        if too_long:
            continue
        size += len(line) + 1
        if size > 4 * limit:  # bytes >= chars/4: the document is certainly too long
            too_long, block = True, []
            continue
        block.append(line)
    yield from flush()


def _jsonl_documents(lines: Iterator[bytes | None], data: DataConfig, skip: Skip, note: Skip) -> Iterator[str]:
    for line in lines:
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


def read_documents(path: str, data: DataConfig, skip: Skip, note: Skip = lambda reason: None) -> Iterator[str]:
    """The cleaned text documents of one file (a file, a blank-line block or a JSONL record)."""
    if path.endswith(".gz") and not gzip_is_intact(path):
        skip("corrupt_gzip")
        return
    seen = False
    with _open(path) as fh:
        lines = bounded_lines(fh, 4 * data.max_document_chars)

        def watched():
            nonlocal seen
            for line in lines:
                seen = True
                yield line

        reader = _jsonl_documents if _is_jsonl(path, data) else _text_documents
        yield from reader(watched(), data, skip, note)
    if not seen:
        skip("empty_file")


class _ReadDocumentsFn(beam.DoFn):
    def __init__(self, data: DataConfig, count: bool):
        self._data, self._count = data, count

    def process(self, path: str):
        def skip(reason: str) -> None:
            if self._count:
                Metrics.counter(SKIPPED, reason).inc()

        def note(reason: str) -> None:
            if self._count:
                Metrics.counter(NOTED, reason).inc()

        for text in read_documents(path, self._data, skip, note):
            note("documents_read")
            yield text


class ReadDocuments(beam.PTransform):
    """files (already expanded) -> PCollection[str] of documents, spread over workers.

    `count=False` for a second read of the same files (a side branch), so skips
    are counted once.
    """

    def __init__(self, files: list[str], data: DataConfig, count: bool = True):
        super().__init__()
        self._files, self._data, self._count = files, data, count

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadDocumentsFn(self._data, self._count))
        )


def query_counters(result, namespace: str) -> dict[str, int]:
    """Committed (or, where a runner lacks them, attempted) counter values of a namespace."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out
