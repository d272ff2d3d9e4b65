"""Storage faults are one clear line, and a stage that hit one is never marked complete."""

import os
import subprocess
import sys

import pytest

from pipeline.errors import UserError
from pipeline.runner import STAGE_FILE, Stage, run_stages
from tests.disks import tmpfs


def _writer(megabytes):
    def run(ctx):
        with open(os.path.join(ctx.out_dir, "big.bin"), "wb") as fh:
            for _ in range(megabytes):
                fh.write(b"\0" * (1 << 20))
        return {}

    return run


def test_full_disk_is_a_clear_error_and_the_stage_is_not_complete(tmp_path):
    with tmpfs(str(tmp_path / "disk"), size="512k") as disk:
        with pytest.raises(UserError, match="No space left on device; free space or point run.work_dir elsewhere"):
            run_stages([Stage("prepare", _writer(4), {})], disk)
        assert not os.path.exists(os.path.join(disk, "prepare", STAGE_FILE))


def test_read_only_work_dir_is_a_clear_error(tmp_path):
    with tmpfs(str(tmp_path / "ro"), read_only=True) as ro:
        with pytest.raises(UserError, match="cannot write to"):
            run_stages([Stage("prepare", _writer(1), {})], os.path.join(ro, "run"))


def test_cli_on_a_read_only_directory_says_so_in_one_line(tmp_path):
    with tmpfs(str(tmp_path / "ro"), read_only=True) as ro:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--no-mlflow", "--work-dir", os.path.join(ro, "run")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr.strip().splitlines()[-1]
