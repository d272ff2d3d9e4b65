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
