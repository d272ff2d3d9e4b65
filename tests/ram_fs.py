"""A Beam FileSystem for TensorFlow's built-in `ram://` filesystem, for tests.

TensorFlow's `ram://` is an in-process store that `tf.io.gfile`, checkpoints,
TensorBoard and SavedModels use like gs://; Beam has no filesystem for it. This
one gives the data jobs (which write through Beam's FileSystems, as they would
to gs:// with Beam's GCS filesystem) the same store, through `tf.io.gfile`.
It keeps object-store rules: no directories (`has_dirs()` False), listing by
key prefix, renames per object (TensorFlow's ram:// renames a "directory" key
without its children, so a directory rename would lose data, as on GCS it
would not be atomic). Only the in-process DirectRunner shares the store.
"""

from __future__ import annotations

from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

SCHEME = "ram"
_PREFIX = SCHEME + "://"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def objects(root: str = _PREFIX) -> list[str]:
    """Every file key under `root` (recursively), sorted."""
    gfile = _gfile()
    if not gfile.exists(root):
        return []
    keys = (d + f if d.endswith("/") else f"{d}/{f}" for d, _, files in gfile.walk(root) for f in files)
    # ram:// lists children by string prefix: `assets/` also shows `.extra` of `assets.extra/`, a key
    # that does not exist; keep the keys that do.
    return sorted(k for k in keys if gfile.exists(k) and not gfile.isdir(k))


def _parents(path: str) -> None:
    # TensorFlow's ram:// lists (walk, listdir) only through directory keys that makedirs made,
    # whoever writes the file (TensorFlow makes them for its checkpoints and SavedModels).
    _gfile().makedirs(path.rsplit("/", 1)[0])


class RamFileSystem(FileSystem):
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
        _gfile().makedirs(path)  # not an object (objects() lists files), only what ram:// lists through

    def _list(self, dir_or_prefix):
        gfile = _gfile()
        for key in objects():
            if key.startswith(dir_or_prefix):
                yield FileMetadata(key, gfile.stat(key).length, gfile.stat(key).mtime_nsec / 1e9)

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = _gfile().GFile(path, mode)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        _parents(path)
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            _parents(dst)
            _gfile().copy(src, dst, overwrite=True)

    def rename(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            if not self.exists(src):  # only objects move; a prefix is not one
                errors[(src, dst)] = FileNotFoundError(src)
                continue
            _parents(dst)
            _gfile().rename(src, dst, overwrite=True)
        if errors:
            raise BeamIOError("Rename operation failed", errors)

    def exists(self, path):
        gfile = _gfile()
        return gfile.exists(path) and not gfile.isdir(path)

    def size(self, path):
        return _gfile().stat(path).length

    def last_updated(self, path):
        return _gfile().stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        for path in paths:
            targets = [k for k in objects() if k.startswith(path)] if path.endswith("/") else [path]
            for key in targets:
                if self.exists(key):
                    _gfile().remove(key)
