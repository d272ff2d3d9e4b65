"""Atomic outputs: nothing half-written ever looks complete, on any filesystem.

Local paths: files are written to a temporary name in the same directory and
renamed into place (`os.replace` is atomic on POSIX within one filesystem).
Whole stage outputs are built in a sibling `.tmp-*` directory and renamed over
the final directory only when the stage succeeded, so an interrupted stage
leaves either the previous complete output or nothing.

Paths with a scheme (gs://, s3://, hdfs://, ...) go through Beam's
`FileSystems`, the same layer the Beam workers write with (gs:// needs the
`gcp` extra, `apache-beam[gcp]`). The training side writes its small files
(history, reports, plots, stage records) through here too, and its
checkpoints, TensorBoard events and SavedModels through TensorFlow's own
filesystems, which know gs:// (s3:// and hdfs:// with tensorflow-io). Object stores have
no atomic directory rename: a stage output is built under a sibling `.tmp-*`
prefix and its files are renamed (copied, then deleted) into place one batch
at a time, the manifest last, so a reader that checks for the manifest never
sees a partial output. Single files are written under a temporary name and
renamed, which on object stores makes the object appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from pipeline.contract.errors import UserError

# Beam's own test for "has a scheme" (apache_beam.io.filesystems.FileSystems.URI_SCHEMA_PATTERN).
_SCHEME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_remote(path: str) -> bool:
    """True for a path with a URI scheme: it is read and written through Beam's FileSystems."""
    return bool(_SCHEME.match(path))


def _fs():
    # Imported here: local paths need no Beam.
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def check_filesystem(path: str) -> None:
    """Raise one line when no Beam filesystem serves `path`'s scheme (and which extra brings it)."""
    if not is_remote(path):
        return
    try:
        _fs().get_filesystem(path)
    except ValueError:
        scheme = path.split("://", 1)[0]
        extra = {"gs": "apache-beam[gcp] (pip install 'bertpipe[gcp]')", "s3": "apache-beam[aws]",
                 "hdfs": "apache-beam[hadoop]"}.get(scheme, "a Beam filesystem plugin")
        raise UserError(f"no filesystem for {path}: install {extra}") from None


def join(directory: str, name: str) -> str:
    return _fs().join(directory, name) if is_remote(directory) else os.path.join(directory, name)


def exists(path: str) -> bool:
    return _fs().exists(path) if is_remote(path) else os.path.exists(path)


def open_read(path: str) -> BinaryIO:
    """A binary reader for a local or remote file (no decompression)."""
    if not is_remote(path):
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes

    return _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def file_size(path: str) -> int | None:
    """Size in bytes of a local or remote file; None when there is no such file."""
    if not is_remote(path):
        try:
            return os.stat(path).st_size if os.path.isfile(path) else None
        except OSError:
            return None
    try:
        found = _fs().match([path])[0].metadata_list
    except Exception:  # Beam raises its BeamIOError for a pattern that matches nothing
        return None
    return next((m.size_in_bytes for m in found if m.path == path), None)


def list_files(directory: str) -> list[str]:
    """Every file under a remote `directory` (recursively), sorted."""
    FileSystems = _fs()
    return sorted(m.path for m in FileSystems.match([FileSystems.join(directory, "**")])[0].metadata_list)


def has_files(directory: str) -> bool:
    """True when `directory` holds anything (on an object store: any object under its prefix)."""
    if not is_remote(directory):
        return os.path.isdir(directory) and bool(os.listdir(directory))
    return bool(list_files(directory))


def list_names(parent: str) -> list[str]:
    """The names directly under `parent` (files and directories; on an object store the first
    component of every key below it), sorted; [] when there is no such directory."""
    if not is_remote(parent):
        return sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    prefix = parent.rstrip("/") + "/"
    return sorted({f[len(prefix):].split("/", 1)[0] for f in list_files(parent) if f.startswith(prefix)})


def makedirs(path: str) -> None:
    """Create a directory and its parents (nothing to do on an object store)."""
    if is_remote(path):
        _mkdirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
    with open_read(path) as fh:
        return fh.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def append_text(path: str, text: str) -> None:
    """Append to a log file. Objects cannot be appended to: a remote one is rewritten whole
    (what TensorFlow's GCS append does too), which the short logs here can afford."""
    if not is_remote(path):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        return
    atomic_write_text(path, (read_text(path) if exists(path) else "") + text)


def copy_file(source: str, destination: str) -> str:
    """Copy one file, local or remote either side, atomically at the destination."""
    atomic_write_bytes(destination, read_bytes(source))
    return destination


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """`path` itself when local; else a temporary local copy of the remote file or directory
    (for libraries that read local files only, such as MLflow's artifact logging)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bertpipe-") as tmp:
        base = path.rstrip("/").rsplit("/", 1)[-1]
        files = [path] if exists(path) else list_files(path)
        for f in files:
            rel = base if f == path else os.path.join(base, *f[len(path.rstrip("/")) + 1:].split("/"))
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as fh:
                fh.write(read_bytes(f))
        yield os.path.join(tmp, base)


def move_tree(source: str, destination: str, markers: tuple[str, ...] = ()) -> None:
    """Move a directory. Locally one rename. On an object store, which cannot rename a prefix:
    every object is copied, the files named in `markers` (what says the directory is complete)
    last, then the source is deleted, its markers first, so a kill part-way leaves a complete
    copy or a complete original (and at worst unmarked leftovers, never a loss)."""
    if not is_remote(source):
        os.replace(source, destination)
        return
    FileSystems = _fs()
    if FileSystems.get_filesystem(source).has_dirs():  # hdfs: a real directory rename
        FileSystems.rename([source], [destination])
        return
    files = list_files(source)
    marked = [f for f in files if f.rsplit("/", 1)[-1] in markers]
    rest = [f for f in files if f not in marked]
    for batch in (rest, marked):
        if batch:
            FileSystems.copy(batch, [destination.rstrip("/") + f[len(source.rstrip("/")):] for f in batch])
    for batch in (marked, rest):
        if batch:
            FileSystems.delete(batch)




def remove_tree(directory: str) -> None:
    """Delete a directory and everything in it; a missing one is fine."""
    if not is_remote(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return
    FileSystems = _fs()
    if FileSystems.get_filesystem(directory).has_dirs():  # hdfs: a real, recursive directory delete
        if FileSystems.exists(directory):
            FileSystems.delete([directory])
        return
    files = list_files(directory)  # object stores: a "directory" is the objects under a prefix
    if files:
        FileSystems.delete(files)


def remove_file(path: str) -> None:
    """Delete one file if it exists."""
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif _fs().exists(path):
        _fs().delete([path])


def _mkdirs(path: str) -> None:
    FileSystems = _fs()
    if not FileSystems.exists(path):  # a no-op on object stores, which have no directories
        with contextlib.suppress(OSError):  # created meanwhile by someone else
            FileSystems.mkdirs(path)


def ensure_writable_dir(path: str) -> str:
    """Create `path` if needed and prove we can write there, or raise one clear line."""
    if is_remote(path):
        check_filesystem(path)
        probe = join(path, f".write-test-{uuid.uuid4().hex}")
        try:
            _mkdirs(path)
            _fs().create(probe).close()
            _fs().delete([probe])
        except Exception as err:  # Beam wraps filesystem errors in its own types
            raise UserError(f"cannot write to {path}: {err}") from None
        return path
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def _rename(sources: list[str], destinations: list[str]) -> None:
    """FileSystems.rename, replacing existing destinations (HDFS refuses to rename over a file)."""
    FileSystems = _fs()
    try:
        FileSystems.rename(sources, destinations)
    except Exception:
        present = [d for d in destinations if FileSystems.exists(d)]
        if not present:
            raise
        FileSystems.delete(present)
        FileSystems.rename(sources, destinations)


def _write_remote(path: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes

    FileSystems = _fs()
    parent, base = FileSystems.split(path)
    tmp = FileSystems.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
    try:
        _mkdirs(parent)
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            fh.write(data)
        _rename([tmp], [path])
    except BaseException as err:
        with contextlib.suppress(Exception):
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        if isinstance(err, Exception):
            raise UserError(f"cannot write {path}: {err}") from None
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    if is_remote(path):
        _write_remote(path, data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(final: str) -> Iterator[str]:
    """Yield a fresh temporary directory that replaces `final` on success.

    On an exception the temporary directory is removed and `final` is
    untouched; one left by a kill has a `.tmp-` prefix and is removed by the
    next attempt. Locally the swap is one atomic rename. For a path with a
    scheme it is not atomic (object stores cannot rename a directory): the old
    `final` is deleted, then the files are moved in, the manifest last, so
    `final` counts as complete only once its manifest exists.
    """
    inner = _remote_directory(final) if is_remote(final) else _local_directory(final)
    with inner as tmp:
        yield tmp


@contextlib.contextmanager
def _local_directory(final: str) -> Iterator[str]:
    parent = os.path.dirname(os.path.abspath(final)) or "."
    base = os.path.basename(os.path.normpath(final))
    ensure_writable_dir(parent)
    for stale in os.listdir(parent):
        if stale.startswith(f".tmp-{base}-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{base}-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Swap: move the old output aside, move the new one in, then drop the old.
    old = None
    if os.path.exists(final):
        old = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{base}-old-")
        os.rmdir(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _remote_directory(final: str) -> Iterator[str]:
    FileSystems = _fs()
    parent, base = FileSystems.split(final.rstrip("/"))
    ensure_writable_dir(parent)
    prefix = FileSystems.join(parent, f".tmp-{base}-")
    # A killed attempt's leftovers: the files under `.tmp-<base>-<id>/`, grouped by <id>.
    stale = set()
    for meta in FileSystems.match([prefix + "**"])[0].metadata_list:
        end = meta.path.find("/", len(prefix))
        stale.add(meta.path if end < 0 else meta.path[:end])
    for leftover in sorted(stale):
        remove_tree(leftover)
    tmp = prefix + uuid.uuid4().hex[:12]
    _mkdirs(tmp)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(Exception):
            remove_tree(tmp)
        raise
    _publish(tmp, final.rstrip("/"))
    remove_tree(tmp)


def _publish(tmp: str, final: str) -> None:
    """Move every file under `tmp` to the same place under `final`, the manifest last."""
    from pipeline.contract.schema import MANIFEST_NAME

    FileSystems = _fs()
    remove_tree(final)  # the previous output; no atomic swap exists on object stores
    files = list_files(tmp)
    # Nested manifests (a held-out split's) before the top one: `final` is complete once that exists.
    last = sorted((f for f in files if f.rsplit("/", 1)[-1] == MANIFEST_NAME), key=lambda f: -f.count("/"))
    for batch in ([f for f in files if f not in last], last):
        if not batch:
            continue
        targets = [final + f[len(tmp) :] for f in batch]
        if FileSystems.get_filesystem(final).has_dirs():  # hdfs renames need the parent directories
            for parent in sorted({FileSystems.split(t)[0] for t in targets}):
                _mkdirs(parent)
        _rename(batch, targets)
