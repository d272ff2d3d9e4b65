"""Fine-tuning data: labelled rows -> TFRecords + manifest per split ("train", "eval").

Plain streaming Python, not Beam: labelled sets are small next to a pretraining
corpus (the largest here is 8,457 rows), the job reads rows one at a time and
tokenizes them in batches of `BATCH` with the one FastBertTokenizer, so memory
stays flat, and it starts in well under a second where a Beam pipeline needs
several. (`beam_args` is accepted for a uniform stage interface.)

Outputs, under `out_dir/<split>/`: `data-NNNNN.tfrecord` shards, `manifest.json`
and `examples.jsonl` (schema.EXAMPLES_NAME: each example's id and source text, and
for QA its question, context and answers, so predicted spans map back to text).
What a row becomes is its task type's business (`bert_keras.tasks`, pure numpy);
this module reads, splits, tokenizes and writes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import numpy as np

from beam_jobs.instances import stable_int
from bert_keras.tasks import TASKS
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
    return TASKS[task.type].read_rows(path, task)


def check_columns(path: str, task: TaskConfig) -> None:
    first = next(iter(read_rows(path, task)), None)
    if first is None:
        raise UserError(f"fine-tuning file {path} has no rows")
    missing = [f for f in TASKS[task.type].required_fields(task) if f not in first]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(first)}): "
            "set finetune.<task>.text_field / text_b_field / label_field"
        )


def split_of(row: dict, index: int, task: TaskConfig, seed: int) -> str:
    """'train' or 'eval' for a row of the training file, from a hash of its split key,
    so rows sharing `split_field` always land on the same side."""
    key = row.get(task.split_field) if task.split_field else index
    return "eval" if stable_int(seed, str(key)) % 10_000 < task.eval_fraction * 10_000 else "train"


def char_offsets(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """Byte offsets into UTF-8 `text` -> char offsets (the tokenizer reports bytes)."""
    cum = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])
    return np.searchsorted(cum, byte_offsets, side="left")


class _Pieces:
    """The run's tokenizer (bert_keras.tokenizer) as the task conversions take it: numpy ids, char offsets."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        ragged = self.tok.tokenize(texts)  # (batch, pieces) ragged
        flat, splits = ragged.flat_values.numpy(), ragged.row_splits.numpy()
        return [flat[splits[i] : splits[i + 1]] for i in range(len(texts))]

    def pieces_with_offsets(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not texts:
            return []
        ragged, starts, ends = self.tok.tokenize_with_offsets(texts)  # byte offsets
        return [(ragged[i].numpy(), char_offsets(t, starts[i].numpy()), char_offsets(t, ends[i].numpy()))
                for i, t in enumerate(texts)]


class _SplitWriter:
    """Records of one split -> shards in `directory`, counted."""

    def __init__(self, directory: str):
        import tensorflow as tf

        self._tf, self._dir = tf, directory
        os.makedirs(directory, exist_ok=True)
        self.shards: dict[str, int] = {}
        self._writer, self._name = None, ""
        self._examples = open(os.path.join(directory, schema.EXAMPLES_NAME), "w", encoding="utf-8")
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

    def example(self, row: dict) -> None:
        self._examples.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._examples.close()


def prepare_task_data(
    task: TaskConfig,
    vocab_file: str,
    lowercase: bool,
    out_dir: str,
    seed: int,
    beam_args: list[str] | None = None,
) -> dict[str, schema.DataManifest]:
    """Write train and eval records for `task` under `out_dir/{train,eval}`; returns their manifests."""
    from bert_keras.tokenizer import load_vocab, make_tokenizer, special_ids

    kind = TASKS[task.type]
    vocab = load_vocab(vocab_file)
    ids = special_ids(vocab, f"vocab file {vocab_file}")
    check_columns(task.train_file, task)
    if task.eval_file:
        check_columns(task.eval_file, task)
    labels = kind.label_names(task, read_rows(task.train_file, task))
    tokenizer = _Pieces(make_tokenizer(vocab, lowercase=lowercase))
    sources = [("train", task.train_file), ("eval", task.eval_file)] if task.eval_file else [(None, task.train_file)]
    manifests: dict[str, schema.DataManifest] = {}
    with atomic_directory(out_dir) as tmp:
        writers = {split: _SplitWriter(os.path.join(tmp, split)) for split in SPLITS}
        pending: dict[str, list[tuple[int, dict]]] = {split: [] for split in SPLITS}
        index = 0
        for fixed_split, path in sources:
            for row in read_rows(path, task):
                split = fixed_split or split_of(row, index, task, seed)
                pending[split].append((index, row))
                index += 1
                if len(pending[split]) >= BATCH:
                    kind.convert(task, pending[split], tokenizer, ids, labels, writers[split])
                    pending[split] = []
        for split, rows in pending.items():
            kind.convert(task, rows, tokenizer, ids, labels, writers[split])
        for split, w in writers.items():
            w.close()
            manifest = schema.DataManifest(
                kind=kind.record_kind,
                seq_length=task.max_seq_length,
                vocab_file=vocab_file,
                vocab_sha256=schema.file_sha256(vocab_file),
                vocab_size=len(vocab),
                shards=dict(w.shards),
                max_chunks=kind.max_chunks(task),
                counts={k: float(v) for k, v in sorted(w.counts.items())},
                skipped=dict(sorted(w.skipped.items())),
                labels=labels,
                config={"task": to_dict(task), "lowercase": lowercase, "seed": seed, "split": split},
            )
            schema.write_manifest(os.path.join(tmp, split), manifest)
            manifests[split] = manifest
    return manifests
