"""Contract checks that bite before (or, for a corrupt record, at) the first training step:
the vocab's content, every shard present at its size, corrupt records named by shard, and
remote inputs fingerprinted by their metadata."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from bert_keras import data
from bert_keras.pretrain import run_pretraining
from pipeline.contract import schema
from pipeline.contract.config import PretrainConfig
from pipeline.contract.errors import ContractError
from tests.test_data import VOCAB, write_records
from tests.test_trainer import TINY


def swapped_vocab(tmp_path) -> str:
    """The same size as the real vocab, two tokens exchanged: the ids mean other words."""
    lines = open(VOCAB, encoding="utf-8").read().splitlines()
    lines[2000], lines[2001] = lines[2001], lines[2000]
    path = tmp_path / "swapped-vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_the_manifest_records_each_shards_size(tmp_path):
    manifest = write_records(str(tmp_path), num_records=16)
    assert set(manifest.shard_bytes) == set(manifest.shards)
    for name, size in manifest.shard_bytes.items():
        assert size == os.path.getsize(tmp_path / name) > 0


def test_data_written_with_another_vocab_is_refused_in_one_line_exit_3(tmp_path):
    write_records(str(tmp_path / "data"), num_records=16)
    assert data.open_manifest(str(tmp_path / "data"), vocab_file=VOCAB).vocab_size == 30522
    with pytest.raises(ContractError) as err:
        data.open_manifest(str(tmp_path / "data"), vocab_size=30522, vocab_file=swapped_vocab(tmp_path))
    message = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in message
    assert "swapped-vocab.txt" in message and "Rebuild the data with this vocab" in message


def test_a_missing_or_truncated_shard_is_named_before_any_step(tmp_path):
    manifest = write_records(str(tmp_path), num_records=16)
    first, second = sorted(manifest.shards)
    with open(tmp_path / second, "r+b") as fh:
        fh.truncate(os.path.getsize(tmp_path / second) - 10)
    with pytest.raises(ContractError, match=f"shard {tmp_path / second} is .* bytes but the data job wrote"):
        data.open_manifest(str(tmp_path))
    os.remove(tmp_path / first)
    with pytest.raises(ContractError) as err:
        data.open_manifest(str(tmp_path))
    assert f"shard {tmp_path / first} named in" in str(err.value) and "is missing" in str(err.value)
    assert err.value.exit_code == 3


def _pretrain(data_dir, out, steps, checkpoint_every=4):
    cfg = PretrainConfig(batch_size=8, steps=steps, log_every=1, checkpoint_every=checkpoint_every, eval_steps=0,
                         precision="float32", learning_rate=1e-3, packing=False)
    return run_pretraining(TINY, cfg, data_dir, out, vocab_size=30522, seed=0, log_fn=lambda s: None,
                           vocab_file=VOCAB)


def test_a_corrupt_record_stops_training_naming_the_shard_and_the_checkpoint_still_loads(tmp_path):
    data_dir, out = str(tmp_path / "data"), str(tmp_path / "out")
    manifest = write_records(data_dir, num_records=48, num_shards=3)
    _pretrain(data_dir, out, 4)
    # Flip bytes inside a training shard's first record: same size, so only the checksum can tell.
    shard = os.path.join(data_dir, sorted(manifest.shards)[0])
    with open(shard, "r+b") as fh:
        fh.seek(40)
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 0xFF]))
    # The resumed run reads from its saved position (already-read rows come from the checkpoint)
    # until the next pass over the shards reaches the damage.
    with pytest.raises(ContractError) as err:
        _pretrain(data_dir, out, 40, checkpoint_every=100)
    message = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in message
    assert f"shard {shard} is corrupt after its first 0 records" in message
    assert "training stopped at step " in message and "ckpt-4) is kept" in message
    # A fresh run on the damaged data stops at its first step.
    with pytest.raises(ContractError, match="is corrupt after its first 0 records.*training stopped at step 0"):
        _pretrain(data_dir, str(tmp_path / "fresh"), 4)
    ckpt = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert ckpt.endswith("ckpt-4")
    reader = tf.train.load_checkpoint(ckpt)
    assert all(np.isfinite(reader.get_tensor(k)).all() for k, _ in tf.train.list_variables(ckpt)
               if k.startswith("model/") and "ATTRIBUTES/VARIABLE_VALUE" in k)


def test_remote_inputs_are_fingerprinted_by_their_metadata(tmp_path, monkeypatch):
    from pipeline.runner import hash_inputs

    root = tmp_path / "store"
    (root / "bucket" / "corpus").mkdir(parents=True)
    monkeypatch.setenv("BPTEST_ROOT", str(root))
    from tests import object_store_fs  # noqa: F401  (registers bptest://)

    path = root / "bucket" / "corpus" / "a.txt"
    path.write_text("first text")
    first = hash_inputs(["bptest://bucket/corpus/*.txt"])
    assert list(first) == ["bptest://bucket/corpus/a.txt"]
    assert "size=10" in first["bptest://bucket/corpus/a.txt"]
    assert hash_inputs(["bptest://bucket/corpus/*.txt"]) == first  # unchanged: the same fingerprint
    path.write_text("other text")  # same size, rewritten later
    os.utime(path, (1e9, 2e9))
    assert hash_inputs(["bptest://bucket/corpus/*.txt"]) != first
    shutil.copy(path, root / "bucket" / "corpus" / "b.txt")
    assert len(hash_inputs(["bptest://bucket/corpus/*.txt"])) == 2


def test_manifests_without_sizes_still_check_presence(tmp_path):
    write_records(str(tmp_path), num_records=8)
    manifest = schema.read_manifest(str(tmp_path))
    manifest.shard_bytes = {}
    manifest.check_shards(str(tmp_path))  # an older manifest: present is enough
    os.remove(tmp_path / sorted(manifest.shards)[0])
    with pytest.raises(ContractError, match="is missing"):
        manifest.check_shards(str(tmp_path))
