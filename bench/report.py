"""README's benchmark table, rendered from `bench/results/*.json`.

    python bench/report.py            print the table
    python bench/report.py --write    put it into README.md, between the bench-table markers

One row per target of every results file (what, command, peer, bertpipe, the
measured value, the goal and whether it is met, the machine and date), and one
"not yet measured" row for every `bench/bench_<name>.py` that has no
`bench/results/<name>.json` yet, described by the first line of its docstring.
So the README quotes only what a results file holds: a figure cannot outlive the
file it came from, and an old one cannot stand in for a bench that was not rerun.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
from typing import Any

from results import REPO, RESULTS_DIR

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BLOCK = "bench-table"
COMMAND = "python bench/report.py --write"
HEADER = ["what", "command", "peer", "bertpipe", "measured", "target", "measured on"]


def load_results(directory: str = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every results file, sorted by bench name, then file name (one per machine kind with per_machine)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        doc["_file"] = os.path.relpath(path, REPO)
        docs.append(doc)
    return sorted(docs, key=lambda d: (d.get("name", ""), d["_file"]))


def bench_scripts(directory: str = BENCH_DIR) -> dict[str, tuple[str, str]]:
    """{results name: (script path, first docstring line)} for every `bench_<name>.py`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "bench_*.py"))):
        with open(path, encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read(), path)) or ""
        name = os.path.basename(path)[len("bench_"):-len(".py")]
        found[name] = (os.path.relpath(path, REPO), doc.strip().splitlines()[0].rstrip(".") if doc.strip() else name)
    return found


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        value += 0.0  # -0.0 -> 0.0
        if 0 < abs(value) < 0.01:  # parity errors and the like: 2.4e-07, not 0.00
            return f"{value:.1e}"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _verdict(t: dict[str, Any]) -> str:
    goal = t.get("goal")
    if not goal:
        return ""
    met = t.get("met")
    return f"{goal}: " + {True: "met", False: "**not met**", None: "not judged"}[met]


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    where = f"{m.get('cpu', 'unknown CPU')} ({m.get('matrix_isa', '?')}), {m.get('cores', '?')} cores"
    load, cores = (m.get("load_average") or [None])[0], m.get("cores")
    if load is not None and cores and load > cores + 1:
        where += f", busy (load {load:.1f})"
    if m.get("gpus"):
        where += f", {', '.join(m['gpus'])}"
    return f"{where}; {str(doc.get('date', ''))[:10]}, `{doc.get('commit', '?')}`"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(docs: list[dict[str, Any]], scripts: dict[str, tuple[str, str]]) -> str:
    rows = [HEADER]
    measured = {d.get("name") for d in docs}
    names = sorted(set(scripts) | measured)
    for name in names:
        summary = scripts[name][1] if name in scripts else name
        if name not in measured:
            rows.append([summary, f"`{scripts[name][0]}`", "", "", "not yet measured", "", ""])
            continue
        for doc in (d for d in docs if d.get("name") == name):
            command, machine = f"`{doc.get('command', '')}`", _machine(doc)
            targets = doc.get("targets") or [{"what": summary, "value": f"rows in `{doc['_file']}`"}]
            for i, t in enumerate(targets):
                what = t.get("what") or summary
                if t.get("name"):
                    what += f" (`{t['name']}`)"
                rows.append([what, command if i == 0 else "same", t.get("peer", ""), t.get("bertpipe", ""),
                             _number(t.get("value")), _verdict(t), machine if i == 0 else "same"])
    lines = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("---" for _ in HEADER) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md instead of printing it")
    parser.add_argument("--results", default=RESULTS_DIR, help="directory of the results files")
    args = parser.parse_args(argv)
    table = render(load_results(args.results), bench_scripts())
    if not args.write:
        print(table, end="")
        return
    from pipeline.readme_blocks import write_block

    print("README.md updated" if write_block(BLOCK, table) else "README.md already up to date")


if __name__ == "__main__":
    main()
