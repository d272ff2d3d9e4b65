"""The one writer of benchmark results: `bench/results/<name>.json`.

Every bench script runs the peer and bertpipe side by side in one run, then calls
`write_results`. The file holds:

    {"name": ..., "commit": git HEAD (with "-dirty" when the tree has changes),
     "date": ISO time, "command": the command line that ran,
     "machine": machine_info(), "rows": [...], "targets": [{"name", "value", "goal"}, ...],
     "notes": optional free text}

`rows` are the bench's own measurements (one dict per contender or setting);
`targets` are the figures the issues set goals for: `value` is what was measured,
`goal` says what it must be, as text the README shows (">= 2", "<= 1.0", "> 0"),
and `met` is computed from the two when the goal is such a comparison.
The README's benchmark figures are rendered from these files. Bench scripts run as
`python bench/bench_x.py`, so `bench/` is on sys.path and they `from results import write_results`.

`machine_info()` names the CPU and its matrix ISA, because results differ between
the machines of this class (AMD EPYC with AVX512-BF16, AMD EPYC with AVX2 only,
Intel Xeon with AMX): a figure means little without it.
"""

from __future__ import annotations

import datetime
import json
import operator
import os
import platform
import re
import subprocess
import sys
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def matrix_isa(flags: set[str]) -> str:
    """The CPU's fastest matrix instructions for bf16/fp32 training, as one word."""
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return "other"


def machine_info() -> dict[str, Any]:
    info = _cpuinfo()
    model = re.search(r"^model name\s*:\s*(.+)$", info, flags=re.M)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", info, flags=re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    gpus: list[str] = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
        gpus = [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "matrix_isa": matrix_isa(flags),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpus,
        "python": platform.python_version(),
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for a bench's first output: `AMD EPYC (AVX2), 2 cores, 23.4 GiB`."""
    info = info or machine_info()
    line = f"{info['cpu']} ({info['matrix_isa']}), {info['cores']} cores, {info['memory_gib']} GiB"
    return line + (f", GPU: {', '.join(info['gpus'])}" if info.get("gpus") else "")


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD") or "unknown"
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def goal_met(value: Any, goal: str) -> bool | None:
    """`goal` like ">= 2" or "< 1": whether `value` meets it; None when it is not such a comparison."""
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(-?[0-9.eE+-]+)\s*", str(goal))
    if match is None or not isinstance(value, int | float):
        return None
    return bool(_COMPARE[match.group(1)](value, float(match.group(2))))


def target(name: str, value: Any, goal: str) -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "met": goal_met(value, goal)}


def write_results(name: str, rows: list[dict[str, Any]], targets: list[dict[str, Any]],
                  notes: str | None = None, directory: str = RESULTS_DIR) -> str:
    """Write `<directory>/<name>.json` atomically; returns its path."""
    targets = [t if "met" in t else target(t["name"], t["value"], t["goal"]) for t in targets]
    doc = {
        "name": name,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else "python", *sys.argv[1:]]),
        "machine": machine_info(),
        "rows": rows,
        "targets": targets,
    }
    if notes:
        doc["notes"] = notes
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    for t in targets:
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        print(f"target {t['name']}: {t['value']} (goal {t['goal']}) {verdict}".rstrip())
    print(f"wrote {path}")
    return path
