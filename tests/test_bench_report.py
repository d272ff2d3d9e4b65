"""README's benchmark table is rendered from bench/results/*.json and cannot drift from them."""

import importlib
import json
import os
import sys

import pytest

from pipeline.readme_blocks import read_block


@pytest.fixture
def bench(repo_root, monkeypatch):
    """bench/results.py and bench/report.py, imported the way the bench scripts import them."""
    monkeypatch.syspath_prepend(os.path.join(repo_root, "bench"))
    for name in ("results", "report"):
        sys.modules.pop(name, None)
    return importlib.import_module("results"), importlib.import_module("report")


def test_the_readme_benchmark_table_is_the_one_rendered_from_the_committed_results_files(repo_root, bench):
    _, report = bench
    with open(os.path.join(repo_root, "README.md"), encoding="utf-8") as fh:
        table = read_block(fh.read(), report.BLOCK)
    assert table == report.render(report.load_results(), report.bench_scripts()), (
        f"README.md's benchmark table differs from bench/results/*.json: run `{report.COMMAND}`")


def test_a_results_file_gives_one_row_per_target_and_a_bench_without_one_says_not_yet_measured(tmp_path, bench):
    results, report = bench
    path = results.write_results("pretrain", [{"side": "bertpipe", "seq_per_s": 116.2}], [
        results.target("bf16_step_vs_keras_hub", 1.716, ">= 1.5", what="pretraining step, mixed bf16",
                       peer="keras-hub 67.7 seq/s", bertpipe="116.2 seq/s"),
        {"name": "bf16_share_of_matmul", "value": 0.41, "goal": ">= 0.5"},  # a bare target dict is judged too
        results.target("fp32_step_vs_keras_hub", 1.34, None),
    ], directory=str(tmp_path))
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert {"commit", "date", "command", "machine", "rows", "targets"} <= set(doc)
    assert doc["machine"]["matrix_isa"] in ("AMX-BF16", "AVX512-BF16", "AVX512", "AVX2", "other")
    assert [t["met"] for t in doc["targets"]] == [True, False, None]

    scripts = {"pretrain": ("bench/bench_pretrain.py", "Pretraining step"),
               "serving": ("bench/bench_serving.py", "Serving")}
    rows = report.render(report.load_results(str(tmp_path)), scripts).splitlines()[2:]
    assert len(rows) == 4
    assert rows[0].startswith("| pretraining step, mixed bf16 (`bf16_step_vs_keras_hub`) | `")
    assert "| keras-hub 67.7 seq/s | 116.2 seq/s | 1.72 | >= 1.5: met |" in rows[0]
    assert doc["machine"]["cpu"] in rows[0] and doc["date"][:10] in rows[0]
    assert "| 0.41 | >= 0.5: **not met** | same |" in rows[1]
    assert rows[2].endswith("| 1.34 |  | same |")
    assert rows[3] == "| Serving | `bench/bench_serving.py` |  |  | not yet measured |  |  |"


def test_per_machine_results_keep_one_file_per_cpu_kind_and_smoke_runs_can_go_elsewhere(tmp_path, monkeypatch, bench):
    results, _ = bench
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path))
    path = results.write_results("serving", [], [], per_machine=True)
    isa = results.machine_info()["matrix_isa"].lower()
    assert path == os.path.join(str(tmp_path), f"serving.{isa}.json")


def test_every_bench_script_is_listed_with_its_docstring(bench):
    _, report = bench
    scripts = report.bench_scripts()
    assert {"pretrain", "pretrain_sotu", "short_text", "finetune_init"} <= set(scripts)
    assert scripts["pretrain"][0] == os.path.join("bench", "bench_pretrain.py")
    assert all(summary and "\n" not in summary for _, summary in scripts.values())


def test_a_busy_machine_is_named_beside_its_figures():
    from bench.report import _machine

    doc = {"date": "2026-12-01T00:00:00", "commit": "abc",
           "machine": {"cpu": "AMD EPYC", "matrix_isa": "AVX2", "cores": 2, "load_average": [9.5, 8.0, 7.0]}}
    assert "busy (load 9.5)" in _machine(doc)
    doc["machine"]["load_average"] = [1.9, 1.5, 1.0]
    assert "busy" not in _machine(doc)
