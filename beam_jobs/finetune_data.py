"""Fine-tuning data: labelled rows -> TFRecords + manifest per split ("train", "eval").

Plain streaming Python, not Beam: labelled sets are small next to a pretraining
corpus (the largest here is 8,457 rows), the job reads rows one at a time and
tokenizes them in batches of `BATCH` with the one FastBertTokenizer, so memory
stays flat, and it starts in well under a second where a Beam pipeline needs
several. (`beam_args` is accepted for a uniform stage interface.)

Outputs, under `out_dir/<split>/`: `data-NNNNN.tfrecord` shards, `manifest.json`,
and for QA `examples.jsonl` (id, question, context, answers) so predicted
token spans can be mapped back to text via the records' char offsets.
Task types are in `finetune_examples` (pure functions); this module reads,
splits and writes.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator

from beam_jobs import finetune_examples as fx
from beam_jobs.instances import stable_int
from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_directory
from pipeline.contract.config import TaskConfig, to_dict
from pipeline.contract.errors import UserError

SPLITS = ("train", "eval")
BATCH = 512  # rows per tokenizer call
RECORDS_PER_SHARD = 50_000


def read_rows(path: str, task: TaskConfig) -> Iterator[dict]:
    """Rows of a JSONL / CSV / TSV file, or the questions of a SQuAD JSON file."""
    if not os.path.exists(path):
        raise UserError(f"fine-tuning file {path} not found: check finetune.<task>.train_file / eval_file")
    if task.type == "qa":
        yield from fx.squad_rows(path)
        return
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if path.endswith((".csv", ".tsv")):
            reader = csv.DictReader(fh, delimiter="\t" if path.endswith(".tsv") else ",")
            yield from reader
            return
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise UserError(f"{path} line {n} is not valid JSON: fix or remove that line") from None


def required_fields(task: TaskConfig) -> list[str]:
    if task.type == "qa":
        return []
    fields = [task.text_field, task.label_field]
    return fields + ([task.text_b_field] if task.type == "pair" else [])


def check_columns(path: str, task: TaskConfig) -> None:
    first = next(iter(read_rows(path, task)), None)
    if first is None:
        raise UserError(f"fine-tuning file {path} has no rows")
    missing = [f for f in required_fields(task) if f not in first]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(first)}): "
            "set finetune.<task>.text_field / text_b_field / label_field"
        )


def label_names(task: TaskConfig) -> list[str]:
    """Labels in id order: from the config, else the sorted distinct training labels."""
    if task.type == "qa":
        return []
    seen = Counter(str(r.get(task.label_field)) for r in read_rows(task.train_file, task) if task.label_field in r)
    labels = list(task.labels) if task.labels else sorted(seen)
    present = [lab for lab in labels if seen.get(lab)]
    if len(present) < 2:
        raise UserError(
            f"{task.train_file}: column {task.label_field!r} holds only {present or 'no'} of the labels {labels}: "
            "a classifier needs at least two classes in its training data"
        )
    return labels


def split_of(row: dict, index: int, task: TaskConfig, seed: int) -> str:
    """'train' or 'eval' for a row of the training file, from a hash of its split key,
    so rows sharing `split_field` always land on the same side."""
    key = row.get(task.split_field) if task.split_field else index
    return "eval" if stable_int(seed, str(key)) % 10_000 < task.eval_fraction * 10_000 else "train"


class _SplitWriter:
    """Records of one split -> shards in `directory`, counted."""

    def __init__(self, directory: str):
        import tensorflow as tf

        self._tf, self._dir = tf, directory
        os.makedirs(directory, exist_ok=True)
        self.shards: dict[str, int] = {}
        self._writer, self._name = None, ""
        self.examples = open(os.path.join(directory, fx.EXAMPLES_NAME), "w", encoding="utf-8")
        self.counts: Counter = Counter()
        self.skipped: Counter = Counter()

    def write(self, record: bytes) -> None:
        if self._writer is None or self.shards[self._name] >= RECORDS_PER_SHARD:
            if self._writer:
                self._writer.close()
            self._name = f"data-{len(self.shards):05d}.tfrecord"
            self._writer = self._tf.io.TFRecordWriter(os.path.join(self._dir, self._name))
            self.shards[self._name] = 0
        self._writer.write(record)
        self.shards[self._name] += 1

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self.examples.close()


def prepare_task_data(
    task: TaskConfig,
    vocab_file: str,
    lowercase: bool,
    out_dir: str,
    seed: int,
    beam_args: list[str] | None = None,
) -> dict[str, schema.DataManifest]:
    """Write train and eval records for `task` under `out_dir/{train,eval}`; returns their manifests."""
    vocab = load_vocab(vocab_file)
    ids = special_ids(vocab, f"vocab file {vocab_file}")
    check_columns(task.train_file, task)
    if task.eval_file:
        check_columns(task.eval_file, task)
    labels = label_names(task)
    builder = fx.ExampleBuilder(task, make_tokenizer(vocab, lowercase=lowercase), ids, labels)
    sources = [("train", task.train_file), ("eval", task.eval_file)] if task.eval_file else [(None, task.train_file)]
    manifests: dict[str, schema.DataManifest] = {}
    with atomic_directory(out_dir) as tmp:
        writers = {split: _SplitWriter(os.path.join(tmp, split)) for split in SPLITS}
        index = 0
        for fixed_split, path in sources:
            batch: list[tuple[str, int, dict]] = []
            for row in read_rows(path, task):
                split = fixed_split or split_of(row, index, task, seed)
                batch.append((split, index, row))
                index += 1
                if len(batch) >= BATCH:
                    builder.write(batch, writers)
                    batch = []
            builder.write(batch, writers)
        for split, w in writers.items():
            w.close()
            manifest = schema.DataManifest(
                kind=fx.KINDS[task.type],
                seq_length=task.max_seq_length,
                vocab_file=vocab_file,
                vocab_sha256=schema.file_sha256(vocab_file),
                vocab_size=len(vocab),
                shards=dict(w.shards),
                max_chunks=task.max_chunks if task.type == "long_document" else 0,
                counts={k: float(v) for k, v in sorted(w.counts.items())},
                skipped=dict(sorted(w.skipped.items())),
                labels=labels,
                config={"task": to_dict(task), "lowercase": lowercase, "seed": seed, "split": split},
            )
            schema.write_manifest(os.path.join(tmp, split), manifest)
            manifests[split] = manifest
    return manifests
