"""Start a real `mlflow server` on 127.0.0.1 for tests (SQLite backend, temp dir)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log_path: str, timeout: float, poll: float = 0.5) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or times out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                raise AssertionError(f"server at {url} did not start: " + fh.read()[-2000:])
        time.sleep(poll)


@contextlib.contextmanager
def mlflow_server(root: str):
    port = free_port()
    log = open(os.path.join(root, "server.log"), "w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root}/server.db",
            "--artifacts-destination", f"{root}/artifacts",
            "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/health", proc, os.path.join(root, "server.log"), timeout=120)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
