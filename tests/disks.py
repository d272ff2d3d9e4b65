"""A real full disk and a real read-only filesystem for fault tests: small tmpfs mounts.

The tests run as root on CI and the developers' machines (the workplace's rule), so
`mount -t tmpfs` works there; anywhere it does not, the test fails loudly rather than
pretending to have checked anything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess


@contextlib.contextmanager
def tmpfs(path: str, size: str = "256k", read_only: bool = False):
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs for the fault test (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
