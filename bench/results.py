"""The one writer of benchmark results: `bench/results/<name>.json`.

Every bench script runs the peer and bertpipe side by side in one run, then calls
`write_results`. The file holds:

    {"name": ..., "commit": git HEAD (with "-dirty" when the tree has changes),
     "date": ISO time, "command": the command line that ran,
     "machine": machine_info(), "rows": [...], "targets": [{"name", "value", "goal"}, ...],
     "notes": optional free text}

`rows` are the bench's own measurements (one dict per contender or setting);
`targets` are the figures the issues set goals for: `value` is what was measured,
`goal` says what it must be, as text the README shows (">= 2", "<= 1.0", "> 0"; None
for a figure reported without a goal), and `met` is computed from the two when the
goal is such a comparison. Optional `what`, `peer` and `bertpipe` (short text) fill
the README's columns. The README's benchmark table is rendered from these files by
`python bench/report.py --write`. Bench scripts run as `python bench/bench_x.py`, so
`bench/` is on sys.path and they `from results import write_results`; `bench_<name>.py`
writes `<name>.json`, which is how the report knows a bench has not been measured yet.

A smoke run should not replace committed figures: `BENCH_RESULTS_DIR=/tmp/x` sends the
file there. `per_machine=True` keeps one file per matrix ISA (`<name>.<isa>.json`) for
a bench whose verdict differs between CPU kinds.

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

from pipeline.contract.atomic import atomic_write_text

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
        # How busy the machine was when the figures were written (the bench itself counts ~1 a core it uses):
        # above the core count, other work shared the CPUs and timings are noisy.
        "load_average": [round(x, 2) for x in os.getloadavg()],
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


def goal_met(value: Any, goal: str | None) -> bool | None:
    """`goal` like ">= 2" or "< 1": whether `value` meets it; None when it is not such a comparison."""
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(-?[0-9.eE+-]+)\s*", str(goal))
    if match is None or not isinstance(value, int | float):
        return None
    return bool(_COMPARE[match.group(1)](value, float(match.group(2))))


def target(name: str, value: Any, goal: str | None, *, what: str | None = None, peer: str | None = None,
           bertpipe: str | None = None) -> dict[str, Any]:
    """One target; `what`, `peer`, `bertpipe` are the README's cells (e.g. "keras-hub 67.7 seq/s")."""
    out = {"name": name, "value": value, "goal": goal, "met": goal_met(value, goal)}
    out.update({k: v for k, v in (("what", what), ("peer", peer), ("bertpipe", bertpipe)) if v is not None})
    return out


def results_dir() -> str:
    return os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR


def write_results(name: str, rows: list[dict[str, Any]], targets: list[dict[str, Any]],
                  notes: str | None = None, directory: str | None = None, per_machine: bool = False) -> str:
    """Write `<directory>/<name>.json` (`<name>.<isa>.json` with `per_machine`) atomically; returns its path."""
    targets = [t if "met" in t else {**t, "met": goal_met(t["value"], t.get("goal"))} for t in targets]
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
    directory = directory or results_dir()
    suffix = f".{doc['machine']['matrix_isa'].lower()}" if per_machine else ""
    path = os.path.join(directory, f"{name}{suffix}.json")
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    for t in targets:
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        goal = f" (goal {t['goal']})" if t.get("goal") else ""
        print(f"target {t['name']}: {t['value']}{goal} {verdict}".rstrip())
    print(f"wrote {path}")
    return path
