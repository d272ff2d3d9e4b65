"""No Docker engine runs here: lint the Dockerfile and check it installs what the README installs."""

import os
import re
import shutil
import subprocess
import sys
import tomllib


def _read(repo_root, name):
    with open(os.path.join(repo_root, name), encoding="utf-8") as fh:
        return fh.read()


def test_hadolint_is_clean(repo_root):
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, os.path.join(repo_root, "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_match_pyproject(repo_root):
    docker = _read(repo_root, "Dockerfile")
    project = tomllib.loads(_read(repo_root, "pyproject.toml"))["project"]
    beam_pin = next(d for d in project["dependencies"] if d.startswith("apache-beam"))
    beam_version = re.search(r"==([\d.]+)", beam_pin).group(1).rstrip(".")
    sdk = re.search(r"apache/beam_python(\d+\.\d+)_sdk:([\d.]+)", docker)
    assert sdk, "the Beam SDK image must be pinned"
    assert sdk.group(2).startswith(beam_version), (sdk.group(2), beam_pin)
    python = re.search(r"python:(\d+\.\d+)\.\d+-slim", docker).group(1)
    assert python == sdk.group(1) == "3.11"
    assert project["requires-python"].startswith(">=3.11")


def test_dockerfile_installs_the_package_like_the_readme(repo_root):
    docker = _read(repo_root, "Dockerfile")
    readme = _read(repo_root, "README.md")
    # The README installs the package with pip from this directory; so does the image,
    # so both take the pins from pyproject.toml and nothing is pinned twice.
    assert "pip install -e ." in readme
    assert re.search(r'pip install "\.\$\{EXTRAS', docker)
    assert not re.search(r"pip install [^\n]*==", docker), "pins belong in pyproject.toml"


def test_image_runs_as_non_root(repo_root):
    users = re.findall(r"^USER\s+(\S+)", _read(repo_root, "Dockerfile"), flags=re.M)
    assert users and users[-1] not in ("0", "root")
