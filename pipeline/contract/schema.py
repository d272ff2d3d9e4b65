"""The contract between stages: TFRecord features and the data manifest.

This module is the only place that spells a feature name. The Beam writers
(`beam_jobs/`) and the tf.data readers (`bert_keras/`) both import it, and the
names are the model's input names, so no renaming layer exists anywhere.

Every record kind is a fixed-length `tf.train.Example`. Lengths come from the
manifest (`seq_length`, `max_predictions`, `max_chunks`), never from a flag that
has to be kept in sync by hand (google-research/bert's "Must match data
generation" help string is the failure mode this avoids).

Packing: several short instances may share one row. Then `padding_mask` holds
the 1-based index of the instance each token belongs to (0 = padding) instead
of just 1, attention is allowed only between equal non-zero values, positions
restart per instance, and each instance's `[CLS]` index is in `cls_positions`
(its label at the same index of `nsp_label` / `label`). An unpacked row is the
one-instance case of the same layout, so the model has one code path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.contract.errors import ContractError

SCHEMA_VERSION = 1

# ---- feature names (model input names) -------------------------------------
TOKEN_IDS = "token_ids"  # int, (seq,): wordpiece ids, [CLS] A [SEP] B [SEP] [PAD]...
SEGMENT_IDS = "segment_ids"  # int, (seq,): 0 for segment A, 1 for B, 0 for padding
PADDING_MASK = "padding_mask"  # int, (seq,): 1 real token, 0 pad; packed: instance index
WORD_IDS = "word_ids"  # int, (seq,): masking unit per token (dynamic mode), -1 = never mask
MASK_POSITIONS = "mask_positions"  # int, (pred,): indices of masked tokens, 0-padded
MASK_IDS = "mask_ids"  # int, (pred,): original ids at those positions
MASK_WEIGHTS = "mask_weights"  # float, (pred,): 1.0 real prediction, 0.0 padding
NSP_LABEL = "nsp_label"  # int, (instances,): 0 = B follows A, 1 = B is random
CLS_POSITIONS = "cls_positions"  # int, (instances,): index of each instance's [CLS]
CLS_WEIGHTS = "cls_weights"  # float, (instances,): 1.0 real instance, 0.0 empty slot
LABEL = "label"  # int, (instances,): class id for classification tasks
EXAMPLE_ID = "example_id"  # int, (1,): row of the source file the record came from
START_POSITION = "start_position"  # int, (1,): answer start token (0 = no answer/[CLS])
END_POSITION = "end_position"  # int, (1,): answer end token, inclusive
TOKEN_CHAR_STARTS = "token_char_starts"  # int, (seq,): char offset in context, -1 if not context
TOKEN_CHAR_ENDS = "token_char_ends"  # int, (seq,): exclusive end offset, -1 if not context
TOKEN_IS_MAX_CONTEXT = "token_is_max_context"  # int, (seq,): BERT's max-context rule
CHUNK_MASK = "chunk_mask"  # int, (chunks,): 1 real chunk, 0 empty (long documents)

# ---- record kinds ------------------------------------------------------------
PRETRAIN_STATIC = "pretrain_static"  # masks chosen by the Beam job (dupe_factor copies)
PRETRAIN_DYNAMIC = "pretrain_dynamic"  # masks chosen per step in tf.data
CLASSIFICATION = "classification"  # single text or text pair, one label
QUESTION_ANSWERING = "question_answering"  # one window of a (question, context)
LONG_DOCUMENT = "long_document"  # a document as `chunks` windows of `seq` tokens

RECORD_KINDS = (PRETRAIN_STATIC, PRETRAIN_DYNAMIC, CLASSIFICATION, QUESTION_ANSWERING, LONG_DOCUMENT)

INT, FLOAT = "int64", "float32"


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # INT or FLOAT
    length: tuple[str | int, ...]  # symbolic dims: "seq", "pred", "chunks" or a number


_SEQ = (Feature(TOKEN_IDS, INT, ("seq",)), Feature(SEGMENT_IDS, INT, ("seq",)), Feature(PADDING_MASK, INT, ("seq",)))

_KINDS: dict[str, tuple[Feature, ...]] = {
    PRETRAIN_STATIC: _SEQ
    + (
        Feature(MASK_POSITIONS, INT, ("pred",)),
        Feature(MASK_IDS, INT, ("pred",)),
        Feature(MASK_WEIGHTS, FLOAT, ("pred",)),
        Feature(NSP_LABEL, INT, (1,)),
    ),
    PRETRAIN_DYNAMIC: _SEQ + (Feature(WORD_IDS, INT, ("seq",)), Feature(NSP_LABEL, INT, (1,))),
    CLASSIFICATION: _SEQ + (Feature(LABEL, INT, (1,)), Feature(EXAMPLE_ID, INT, (1,))),
    QUESTION_ANSWERING: _SEQ
    + (
        Feature(START_POSITION, INT, (1,)),
        Feature(END_POSITION, INT, (1,)),
        Feature(EXAMPLE_ID, INT, (1,)),
        Feature(TOKEN_CHAR_STARTS, INT, ("seq",)),
        Feature(TOKEN_CHAR_ENDS, INT, ("seq",)),
        Feature(TOKEN_IS_MAX_CONTEXT, INT, ("seq",)),
    ),
    LONG_DOCUMENT: (
        Feature(TOKEN_IDS, INT, ("chunks", "seq")),
        Feature(SEGMENT_IDS, INT, ("chunks", "seq")),
        Feature(PADDING_MASK, INT, ("chunks", "seq")),
        Feature(CHUNK_MASK, INT, ("chunks",)),
        Feature(LABEL, INT, (1,)),
        Feature(EXAMPLE_ID, INT, (1,)),
    ),
}


def features(kind: str) -> tuple[Feature, ...]:
    if kind not in _KINDS:
        raise ContractError(f"unknown record kind {kind!r}; known kinds: {', '.join(RECORD_KINDS)}")
    return _KINDS[kind]


def shapes(kind: str, seq_length: int, max_predictions: int = 0, max_chunks: int = 0) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every feature of `kind`, e.g. {"token_ids": (128,), ...}."""
    dims = {"seq": seq_length, "pred": max_predictions, "chunks": max_chunks}
    return {f.name: tuple(dims[d] if isinstance(d, str) else d for d in f.length) for f in features(kind)}


def serialize(kind: str, values: Mapping[str, Iterable[Any]], shape: Mapping[str, tuple[int, ...]]) -> bytes:
    """Encode one record as a serialized tf.train.Example (see `serialize_batch`)."""
    import numpy as np

    return serialize_batch(kind, {name: np.asarray(v)[None] for name, v in values.items()}, shape)[0]


def serialize_batch(kind: str, values: Mapping[str, Any], shape: Mapping[str, tuple[int, ...]]) -> list[bytes]:
    """Encode a batch of records as serialized tf.train.Examples, one per row.

    `values` maps every feature of `kind` to an array whose first axis is the
    record; the rest must hold exactly the feature's `shape`, so a writer bug is
    an error here, not a shape mismatch deep inside a training step. The bytes
    are protobuf's deterministic serialization, so the same record is the same
    bytes whatever worker wrote it.
    """
    import numpy as np

    from pipeline.contract import tfexample

    columns = {}
    for f in features(kind):
        if f.name not in values:
            raise ContractError(f"record of kind {kind!r} is missing feature {f.name!r}")
        array = np.asarray(values[f.name])
        want = int(np.prod(shape[f.name]))
        per_record = int(np.prod(array.shape[1:])) if array.ndim else -1
        if per_record != want:
            raise ContractError(f"feature {f.name!r} has {max(per_record, 0)} values, schema wants {want} {shape[f.name]}")
        columns[f.name] = (f.dtype == FLOAT, array.reshape(len(array), want))
    return tfexample.encode(columns)


def parse_spec(kind: str, shape: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The `tf.io.parse_example` spec for `kind`; integers parse as int64."""
    import tensorflow as tf

    dtypes = {INT: tf.int64, FLOAT: tf.float32}
    return {f.name: tf.io.FixedLenFeature(shape[f.name], dtypes[f.dtype]) for f in features(kind)}


# ---- the data manifest -------------------------------------------------------
MANIFEST_NAME = "manifest.json"
# Fine-tuning data: next to the records of each split, one JSON line per example with its
# EXAMPLE_ID and the source text (and labels or answers) the records came from.
EXAMPLES_NAME = "examples.jsonl"


@dataclasses.dataclass
class DataManifest:
    """What a data job wrote, written next to its shards as `manifest.json`.

    `shards` maps each shard file name (relative to the manifest) to its record
    count and `shard_bytes` to its size (filled in by `write_manifest`), so a reader
    notices a shard deleted, truncated or replaced since; `counts` holds totals such
    as instances, tokens and masked tokens; `skipped` counts every input the job did
    not turn into records, by reason.
    """

    kind: str
    seq_length: int
    vocab_file: str
    vocab_sha256: str
    vocab_size: int
    shards: dict[str, int]
    max_predictions: int = 0
    max_chunks: int = 0
    masking: str = "none"
    compression: str = "none"  # "none" or "gzip"
    nsp: bool = True  # pretraining records hold NSP pairs and labels; False: MLM-only data
    counts: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    labels: list[str] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    shard_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    # Pretraining data: the held-out split's directory, relative to this manifest's, with its own
    # manifest (documents never in training, masked statically at 15%, whole words); None: none.
    holdout: str | None = None

    @property
    def num_records(self) -> int:
        return sum(self.shards.values())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return shapes(self.kind, self.seq_length, self.max_predictions, self.max_chunks)

    def check(self, *, vocab_size: int | None = None, seq_length: int | None = None, kinds: Iterable[str] = (),
              vocab: tuple[str, str] | None = None) -> None:
        """Refuse data that does not fit the model with one line naming the mismatch.
        `vocab`: (path, sha256) of the vocab the model reads."""
        where = f"data manifest ({self.kind}, vocab {self.vocab_file})"
        if self.schema_version != SCHEMA_VERSION:
            raise ContractError(
                f"{where} has schema version {self.schema_version}, this bertpipe reads {SCHEMA_VERSION}: rerun the data job"
            )
        kinds = tuple(kinds)
        if kinds and self.kind not in kinds:
            raise ContractError(f"{where} holds {self.kind!r} records, this stage reads {' or '.join(kinds)}")
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise ContractError(
                f"{where} was written with a vocab of {self.vocab_size} tokens but the model has {vocab_size}: "
                "use the same vocab for data and model"
            )
        if seq_length is not None and seq_length < self.seq_length:
            raise ContractError(
                f"{where} has sequences of {self.seq_length} tokens but the model takes at most {seq_length}"
            )
        if vocab is not None and vocab[1] != self.vocab_sha256:
            raise ContractError(
                f"{where} was written with a vocab whose sha256 is {self.vocab_sha256[:12]}..., but the vocab in use, "
                f"{vocab[0]}, has {vocab[1][:12]}...: the same ids would mean other tokens. Rebuild the data with this "
                "vocab (bertpipe prepare --force) or use the vocab the data was written with"
            )

    def check_shards(self, directory: str) -> None:
        """Every shard the manifest names is there, at the size it was written (when the
        manifest recorded sizes), before any training step reads them."""
        from pipeline.contract.atomic import file_size, join

        for name in sorted(self.shards):
            path = join(directory, name)
            size = file_size(path)
            if size is None:
                raise ContractError(
                    f"shard {path} named in {join(directory, MANIFEST_NAME)} is missing: the data directory is "
                    "incomplete; rebuild it (bertpipe prepare --force)"
                )
            if name in self.shard_bytes and size != self.shard_bytes[name]:
                raise ContractError(
                    f"shard {path} is {size} bytes but the data job wrote {self.shard_bytes[name]}: it was truncated "
                    "or replaced since; rebuild the data (bertpipe prepare --force)"
                )


def write_manifest(directory: str, manifest: DataManifest) -> str:
    """Write `manifest.json` atomically (temp file then rename) and return its path."""
    from pipeline.contract.atomic import atomic_write_text, file_size, join

    path = join(directory, MANIFEST_NAME)  # local, or any Beam filesystem (gs://, s3://, ...)
    if not manifest.shard_bytes:  # the shards are written before their manifest
        sizes = {name: file_size(join(directory, name)) for name in manifest.shards}
        manifest.shard_bytes = {name: size for name, size in sorted(sizes.items()) if size is not None}
    atomic_write_text(path, json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: str) -> DataManifest:
    from pipeline.contract.atomic import exists, join, open_read

    path = join(directory, MANIFEST_NAME)  # local, or any Beam filesystem (gs://, s3://, ...)
    if not exists(path):
        raise ContractError(f"{path} not found: run the data job first (bertpipe prepare) or point at its output")
    try:
        with open_read(path) as fh:
            raw = json.loads(fh.read().decode("utf-8"))
        return DataManifest(**raw)
    except (ValueError, TypeError) as err:
        raise ContractError(f"{path} is not a bertpipe data manifest: {err}") from None


def shard_paths(directory: str, manifest: DataManifest) -> list[str]:
    return [os.path.join(directory, name) for name in sorted(manifest.shards)]


def file_sha256(path: str) -> str:
    from pipeline.contract.atomic import open_read  # a vocab may live on gs:// like the corpus

    digest = hashlib.sha256()
    with open_read(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
