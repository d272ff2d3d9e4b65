"""A real Beam FileSystem with object-store semantics, for tests: `bptest://KEY`.

Objects are files under the local directory named by $BPTEST_ROOT, but the
rules are those of GCS/S3 as Beam's own filesystems expose them: no
directories (`mkdirs` does nothing, `has_dirs()` is False, a "directory" does
not `exist`), listing by key prefix, renames per object, and `delete` of a key
that is not an object deletes nothing unless it ends with "/" (then the whole
prefix goes, as GCSFileSystem does). Empty local directories are pruned so
the tree shows only live objects. `$BPTEST_FAIL_CREATE=TEXT` makes creating
any key that contains TEXT fail, as a storage error in the middle of a job.

Beam picks a FileSystem by `scheme()` among the subclasses imported in the
process; Beam worker subprocesses import this module through the standard
`--beam_plugins=tests.object_store_fs` option, and inherit $BPTEST_ROOT.
"""

from __future__ import annotations

import os

from apache_beam.io.filesystem import BeamIOError, FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "bptest"
_PREFIX = SCHEME + "://"


def root() -> str:
    return os.environ["BPTEST_ROOT"]


def local(url: str) -> str:
    """The file that holds object `url`."""
    if not url.startswith(_PREFIX):
        raise ValueError(f"not a {SCHEME} url: {url}")
    return os.path.join(root(), url[len(_PREFIX) :])


def url(path: str) -> str:
    return _PREFIX + os.path.relpath(path, root()).replace(os.sep, "/")


class ObjectStoreFileSystem(LocalFileSystem):
    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return (head, tail) if head != SCHEME + ":/" else (_PREFIX, tail)

    def has_dirs(self):
        return False

    def mkdirs(self, path):
        pass  # object stores have no directories (GCSFileSystem.mkdirs is a no-op too)

    def _list(self, dir_or_prefix):
        for dirpath, _, files in os.walk(root()):
            for name in files:
                full = os.path.join(dirpath, name)
                key = url(full)
                if key.startswith(dir_or_prefix):
                    yield FileMetadata(key, os.path.getsize(full), os.path.getmtime(full))

    def create(self, path, mime_type="application/octet-stream", compression_type="auto"):
        if os.environ.get("BPTEST_FAIL_CREATE") and os.environ["BPTEST_FAIL_CREATE"] in path:
            raise BeamIOError("Create operation failed", {path: OSError("injected storage failure")})
        for _ in range(5):  # another worker may prune the (empty) parent between makedirs and open
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
            try:
                return self._path_open(local(path), "wb", mime_type, compression_type)
            except FileNotFoundError:
                continue
        raise BeamIOError("Create operation failed", {path: FileNotFoundError(path)})

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return self._path_open(local(path), "rb", mime_type, compression_type)

    def copy(self, source_file_names, destination_file_names):
        for dst in destination_file_names:
            os.makedirs(os.path.dirname(local(dst)), exist_ok=True)
        super().copy([local(s) for s in source_file_names], [local(d) for d in destination_file_names])

    def rename(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            if not os.path.isfile(local(src)):  # only objects move; a prefix is not one
                errors[(src, dst)] = FileNotFoundError(src)
                continue
            os.makedirs(os.path.dirname(local(dst)), exist_ok=True)
            os.replace(local(src), local(dst))
            self._prune(os.path.dirname(local(src)))
        if errors:
            raise BeamIOError("Rename operation failed", errors)

    def exists(self, path):
        return os.path.isfile(local(path))  # a "directory" is not an object

    def size(self, path):
        return super().size(local(path))

    def last_updated(self, path):
        return super().last_updated(local(path))

    def checksum(self, path):
        return super().checksum(local(path))

    def metadata(self, path):
        meta = super().metadata(local(path))
        return FileMetadata(path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def delete(self, paths):
        for path in paths:
            target = local(path)
            if path.endswith("/"):
                for meta in list(self._list(path)):
                    os.remove(local(meta.path))
                    self._prune(os.path.dirname(local(meta.path)))
            elif os.path.isfile(target):
                os.remove(target)
                self._prune(os.path.dirname(target))

    def _prune(self, directory):
        # Drop empty local directories up to the root: an object store shows none.
        top = os.path.abspath(root())
        directory = os.path.abspath(directory)
        while directory.startswith(top + os.sep):
            try:
                os.rmdir(directory)  # fails unless empty; another worker may race us: fine
            except OSError:
                return
            directory = os.path.dirname(directory)
