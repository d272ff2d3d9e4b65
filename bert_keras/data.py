"""tf.data input from a data job's shards, through the shared schema.

One pipeline for every record kind: list the shards named in the manifest,
read them in parallel (interleave), shuffle, batch, then parse a whole batch at
once with `pipeline.contract.schema.parse_spec` (one `parse_example` per batch is much
cheaper than one per record), cast integers to int32, optionally pack short
instances into shared rows (`packing.py`) and mask per step (`dynamic_masking.py`),
and prefetch.

Held-out split for evaluation (`heldout_split`): the data job's `holdout/`
directory when it wrote one (`prepare.holdout_fraction`: documents never trained
on, masked statically at 15% with whole words whatever the training masking, so
runs with different masking rates compare on one loss); then training reads
every shard. Data without one: with two or more shards the last shard (sorted
by name) is held out; with one shard every 20th record is (`HOLDOUT_MODULO`).

Training input is deterministic under its seed: the interleave and the maps keep
their order (`bench/bench_input.py` measures what that costs) and packing draws
per window from the seed, so the trainer can save the input's position in its
checkpoints (a tf.data iterator checkpoint) and a resumed run reads what the
uninterrupted run would have. Dynamic masking draws its masks from tf-text's
stateful random ops, whose state a checkpoint cannot hold: after a resume its
masks are new draws (the rows and their order are still the same).

A corrupt record fails the run with one line naming the shard (`corrupt_shard`),
not a skip: a checksum that fails means the data directory was damaged after the
data job wrote it, and training on around it would hide that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from pipeline.contract import schema
from pipeline.contract.atomic import join
from pipeline.contract.errors import ContractError
from pipeline.contract.schema import DataManifest

HOLDOUT_MODULO = 20
PRETRAIN_KINDS = (schema.PRETRAIN_STATIC, schema.PRETRAIN_DYNAMIC)
AUTOTUNE = tf.data.AUTOTUNE


def open_manifest(data_dir: str, *, vocab_size: int | None = None, seq_length: int | None = None,
                  kinds=(), vocab_file: str | None = None) -> DataManifest:
    """Read `manifest.json` and refuse data that does not fit (one-line ContractError):
    schema, kind, vocab size and, given `vocab_file`, its content; then check that every
    shard is there at the size the data job wrote."""
    manifest = schema.read_manifest(data_dir)
    vocab = (vocab_file, schema.file_sha256(vocab_file)) if vocab_file else None
    manifest.check(vocab_size=vocab_size, seq_length=seq_length, kinds=kinds, vocab=vocab)
    manifest.check_shards(data_dir)
    return manifest


def corrupt_shard(data_dir: str, manifest: DataManifest) -> str | None:
    """One line naming the first shard whose records fail to read, or None (called only
    after tf.data reported corrupt input, so the cost of reading every shard is paid then)."""
    compression = "GZIP" if manifest.compression == "gzip" else None
    for path in schema.shard_paths(data_dir, manifest):
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type=compression):
                count += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            return (f"shard {path} is corrupt after its first {count} records (a record fails its checksum): "
                    "the data directory was damaged after the data job wrote it; rebuild it (bertpipe prepare --force)")
    return None


@dataclasses.dataclass(frozen=True)
class Split:
    files: tuple[str, ...]
    # (modulo, keep) keeps records whose index % modulo == keep (eval) or != keep
    # (train) when the split is within one shard; None reads whole files.
    record_filter: tuple[int, int, bool] | None = None


def split(data_dir: str, manifest: DataManifest, which: str) -> Split:
    """Files (and record filter) of "train", "eval" or "all"."""
    paths = schema.shard_paths(data_dir, manifest)
    if which == "all":
        return Split(tuple(paths))
    if len(paths) >= 2:
        return Split(tuple(paths[:-1]) if which == "train" else (paths[-1],))
    return Split(tuple(paths), (HOLDOUT_MODULO, HOLDOUT_MODULO - 1, which == "eval"))


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Where pretraining evaluates: `which` of the data in `data_dir` (its `manifest`)."""

    data_dir: str
    manifest: DataManifest
    which: str  # "all" of the holdout/ directory, or "eval" of the training data
    fixed: bool  # the data job's fixed held-out documents (static masks at 15%)


def heldout_split(data_dir: str, manifest: DataManifest) -> HeldOut:
    """The held-out split of pretraining data, and which split training then reads (`train_split`)."""
    if manifest.holdout:
        path = join(data_dir, manifest.holdout)
        held = open_manifest(path, vocab_size=manifest.vocab_size, seq_length=manifest.seq_length, kinds=PRETRAIN_KINDS)
        if held.vocab_sha256 != manifest.vocab_sha256:
            raise ContractError(f"the held-out data in {path} was written with another vocab than {data_dir}: "
                                "rebuild both (bertpipe prepare --force)")
        return HeldOut(path, held, "all", True)
    return HeldOut(data_dir, manifest, "eval", False)


def train_split(manifest: DataManifest) -> str:
    """"all" when the held-out documents are a directory of their own, else "train" (the rest of the shards)."""
    return "all" if manifest.holdout else "train"


def holdout_records(manifest: DataManifest, which: str = "eval") -> int:
    """Records of the held-out split: `which` "all" counts the whole (holdout/) data."""
    if which == "all":
        return manifest.num_records
    names = sorted(manifest.shards)
    if len(names) >= 2:
        return manifest.shards[names[-1]]
    return manifest.num_records // HOLDOUT_MODULO


def _read(files: tuple[str, ...], record_filter, compression: str | None, training: bool, seed: int,
          deterministic: bool, input_context) -> tf.data.Dataset:
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_files = pipelines > 1 and len(files) >= pipelines
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shard_files:
        ds = ds.shard(pipelines, pipeline_id)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def open_file(path):
        records = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20)
        if record_filter is None:
            return records
        modulo, keep, want_eval = record_filter
        records = records.enumerate().filter(
            lambda i, _: tf.equal(i % modulo, keep) if want_eval else tf.not_equal(i % modulo, keep))
        return records.map(lambda _, r: r)

    ds = ds.interleave(open_file, cycle_length=max(1, min(len(files), 8)), block_length=1,
                       num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    if pipelines > 1 and not shard_files:
        ds = ds.shard(pipelines, pipeline_id)
    return ds


def parser(manifest: DataManifest) -> Callable[[tf.Tensor], dict]:
    """serialized (batch,) -> dict of int32 / float32 tensors, shapes from the manifest."""
    spec = schema.parse_spec(manifest.kind, manifest.shapes())

    def parse(serialized):
        feats = tf.io.parse_example(serialized, spec)
        return {k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in feats.items()}

    return parse


def add_instance_slots(batch: dict) -> dict:
    """An unpacked row is one instance whose [CLS] is at 0 (schema docstring)."""
    if schema.CLS_POSITIONS in batch:
        return batch
    rows = tf.shape(batch[schema.TOKEN_IDS])[0]
    out = dict(batch)
    out[schema.CLS_POSITIONS] = tf.zeros([rows, 1], tf.int32)
    out[schema.CLS_WEIGHTS] = tf.ones([rows, 1], tf.float32)
    return out


def make_dataset(data_dir: str, manifest: DataManifest, *, which: str, batch_size: int, training: bool,
                 seed: int = 0, deterministic: bool = True, input_context=None,
                 pack: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None,
                 mask: Callable[[dict], dict] | None = None, shuffle_buffer: int = 10_000,
                 drop_remainder: bool | None = None) -> tf.data.Dataset:
    """Batched dicts of model inputs.

    which: "train" | "eval" | "all" (see `split`). training: repeat forever and
    shuffle (under `seed`). deterministic: the same order every time (the
    default; False lets parallel reads and maps hand out whatever is ready
    first). `pack(rows) -> rows` packs an unbatched dataset of parsed rows;
    `mask(batch) -> batch` masks a parsed batch (dynamic records).
    `input_context` (from `distribute_datasets_from_function`) shards the
    input between workers; then `batch_size` is the per-replica batch.
    """
    part = split(data_dir, manifest, which)
    compression = "GZIP" if manifest.compression == "gzip" else None
    ds = _read(part.files, part.record_filter, compression, training, seed, deterministic, input_context)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    drop = training if drop_remainder is None else drop_remainder
    parse = parser(manifest)
    if pack is None:
        ds = ds.batch(batch_size, drop_remainder=drop).map(parse, num_parallel_calls=AUTOTUNE)
    else:
        # Packing turns rows into fewer rows: parse in chunks, pack row-wise, re-batch.
        ds = ds.batch(256).map(parse, num_parallel_calls=AUTOTUNE).unbatch()
        ds = pack(ds).batch(batch_size, drop_remainder=drop)
    if mask is not None:
        ds = ds.map(mask, num_parallel_calls=AUTOTUNE)
    ds = ds.map(add_instance_slots, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if mask is not None:
        # tf-text's masking ops are stateful: the iterator checkpoint skips their state
        # (the masks after a resume are new draws) instead of failing (module docstring).
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    if input_context is not None:
        # We sharded by hand above; stop tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def padding_fraction(ds: tf.data.Dataset, rows: int) -> float:
    """Share of token slots that are padding over the first `rows` batches' rows."""
    real = total = 0
    for batch in ds:
        mask = batch[schema.PADDING_MASK].numpy()
        real += int((mask > 0).sum())
        total += mask.size
        if total >= rows * mask.shape[-1]:
            break
    return 1.0 - real / max(total, 1)
