"""Fine-tuning data: labelled rows -> TFRecords + manifest per split ("train", "dev", "test").

Splits (`beam_jobs.task_splits`): test is `test_file`, or without one `test_fraction`
of the training file's groups; dev is `dev_file`, or without one `dev_fraction` of the
training file's groups (empty with dev_fraction 0); train is the rest. A group is a `split_field` value, or
a row; no group straddles two splits.

Plain streaming Python, not Beam: labelled sets are small next to a pretraining
corpus (the largest here is 8,457 rows), the job reads rows one at a time and
tokenizes them in batches of `BATCH` with the one FastBertTokenizer, so memory
stays flat, and it starts in well under a second where a Beam pipeline needs
several. So `prepare.beam_args` does not apply here: the stage says so in one line when
it is set.

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

from beam_jobs import task_splits
from bert_keras.tasks import TASKS
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_directory
from pipeline.contract.config import TaskConfig, to_dict
from pipeline.contract.errors import UserError

SPLITS = (task_splits.TRAIN, task_splits.DEV, task_splits.TEST)
BATCH = 512  # rows per tokenizer call
RECORDS_PER_SHARD = 50_000


def read_rows(path: str, task: TaskConfig) -> Iterator[dict]:
    """Rows of a JSONL / CSV / TSV file, or the questions of a SQuAD JSON file."""
    if not os.path.exists(path):
        raise UserError(f"fine-tuning file {path} not found: check finetune.<task>.train_file / dev_file / test_file")
    return TASKS[task.type].read_rows(path, task)


def check_columns(path: str, task: TaskConfig, split_field: bool = False) -> None:
    first = next(iter(read_rows(path, task)), None)
    if first is None:
        raise UserError(f"fine-tuning file {path} has no rows")
    wanted = TASKS[task.type].required_fields(task) + ([task.split_field] if split_field and task.split_field else [])
    missing = [f for f in wanted if f not in first]
    if missing:
        raise UserError(
            f"{path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(first)}): "
            "set finetune.<task>.text_field / text_b_field / label_field / split_field"
        )


def splitter(task: TaskConfig, seed: int) -> task_splits.Splitter:
    """The split of the training file's rows (a first pass over its group keys)."""
    keys = (task_splits.group_key(row, i, task.split_field) for i, row in enumerate(read_rows(task.train_file, task)))
    return task_splits.Splitter(keys, seed, 0.0 if task.dev_file else task.dev_fraction,
                                None if task.test_file else task.test_fraction)


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
        # TensorFlow's filesystems, as the TFRecordWriter's: `directory` may be on gs://, ...
        tf.io.gfile.makedirs(directory)
        self.shards: dict[str, int] = {}
        self._writer, self._name = None, ""
        self._examples = tf.io.gfile.GFile(os.path.join(directory, schema.EXAMPLES_NAME), "w")
        self._examples.write("")  # GFile creates its file on the first write: an empty split still gets one
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
    *,
    strip_accents: bool | None = None,
) -> dict[str, schema.DataManifest]:
    """Write train, dev and test records for `task` under `out_dir/{train,dev,test}`; returns their manifests.

    `lowercase` / `strip_accents`: the run's normalization (`data.*`; None follows lowercase); a
    tokenizer.json (`vocab_file`) brings its own and tokenizes through Hugging Face `tokenizers`."""
    from bert_keras.tokenizer import is_tokenizer_json, load_vocab, make_tokenizer, special_ids

    kind = TASKS[task.type]
    vocab = load_vocab(vocab_file)
    ids = special_ids(vocab, f"vocab file {vocab_file}")
    check_columns(task.train_file, task, split_field=True)
    for path in (task.dev_file, task.test_file):
        if path:
            check_columns(path, task)
    labels = kind.label_names(task, read_rows(task.train_file, task))
    split = splitter(task, seed)
    if is_tokenizer_json(vocab_file):  # a tokenizer.json: Hugging Face `tokenizers`, its own normalization
        from bert_keras.tokenizer import data_tokenizer

        tokenizer = data_tokenizer(vocab_file, None)
    else:
        tokenizer = _Pieces(make_tokenizer(vocab, lowercase, strip_accents))
    manifests: dict[str, schema.DataManifest] = {}
    with atomic_directory(out_dir) as tmp:
        writers = {name: _SplitWriter(os.path.join(tmp, name)) for name in SPLITS}
        pending: dict[str, list[tuple[int, dict]]] = {name: [] for name in SPLITS}

        def add(name: str, index: int, row: dict) -> None:
            pending[name].append((index, row))
            if len(pending[name]) >= BATCH:
                kind.convert(task, pending[name], tokenizer, ids, labels, writers[name])
                pending[name] = []

        # Example ids number the training file's rows, then the dev file's, then the test file's.
        index = 0
        for row in read_rows(task.train_file, task):
            add(split.split(row, index, task.split_field), index, row)
            index += 1
        for name, path in ((task_splits.DEV, task.dev_file), (task_splits.TEST, task.test_file)):
            for row in read_rows(path, task) if path else ():
                add(name, index, row)
                index += 1
        for name, rows in pending.items():
            kind.convert(task, rows, tokenizer, ids, labels, writers[name])
        for split_name, w in writers.items():
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
                config={"task": to_dict(task), "lowercase": lowercase, "strip_accents": strip_accents, "seed": seed,
                        "split": split_name,
                        "groups": None if {task_splits.DEV: task.dev_file, task_splits.TEST: task.test_file}.get(
                            split_name) else split.counts[split_name]},
            )
            schema.write_manifest(os.path.join(tmp, split_name), manifest)
            manifests[split_name] = manifest
    return manifests
