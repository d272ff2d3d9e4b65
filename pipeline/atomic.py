"""Atomic outputs: nothing half-written ever looks complete.

Files are written to a temporary name in the same directory and renamed into
place (`os.replace` is atomic on POSIX within one filesystem). Whole stage
outputs are built in a sibling `.tmp-*` directory and renamed over the final
directory only when the stage succeeded, so an interrupted stage leaves either
the previous complete output or nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from pipeline.errors import UserError


def ensure_writable_dir(path: str) -> str:
    """Create `path` if needed and prove we can write there, or raise one clear line."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def atomic_write_bytes(path: str, data: bytes) -> None:
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

    On an exception (or a kill) the temporary directory is left behind with a
    `.tmp-` prefix and is removed by the next attempt; `final` is untouched.
    """
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
