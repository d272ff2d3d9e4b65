"""Storage faults are one clear line, and a stage that hit one is never marked complete."""

import os
import shutil
import subprocess
import sys

import pytest

from pipeline.contract.errors import UserError
from pipeline.runner import STAGE_FILE, Stage, run_stages
from tests.disks import tmpfs


def _writer(megabytes):
    def run(ctx):
        with open(os.path.join(ctx.out_dir, "big.bin"), "wb") as fh:
            for _ in range(megabytes):
                fh.write(b"\0" * (1 << 20))
        return {}

    return run


def test_full_disk_is_a_clear_error_and_the_stage_is_not_complete(tmp_path):
    with tmpfs(str(tmp_path / "disk"), size="512k") as disk:
        with pytest.raises(UserError, match="No space left on device; free space or point run.work_dir elsewhere"):
            run_stages([Stage("prepare", _writer(4), {})], disk)
        assert not os.path.exists(os.path.join(disk, "prepare", STAGE_FILE))


def test_read_only_work_dir_is_a_clear_error(tmp_path):
    with tmpfs(str(tmp_path / "ro"), read_only=True) as ro:
        with pytest.raises(UserError, match="cannot write to"):
            run_stages([Stage("prepare", _writer(1), {})], os.path.join(ro, "run"))


def test_cli_on_a_read_only_directory_says_so_in_one_line(tmp_path):
    with tmpfs(str(tmp_path / "ro"), read_only=True) as ro:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--no-mlflow", "--work-dir", os.path.join(ro, "run")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr.strip().splitlines()[-1]


def _records(data_dir):
    import tensorflow as tf

    from pipeline.contract import schema

    manifest = schema.read_manifest(data_dir)
    out = []
    for path in schema.shard_paths(data_dir, manifest):
        for raw in tf.data.TFRecordDataset(path):
            # Compare parsed features: a protobuf map's byte order differs between processes.
            features = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append(tuple((k, tuple(features[k].int64_list.value) or tuple(features[k].float_list.value)) for k in sorted(features)))
    return sorted(out)


@pytest.mark.slow
def test_killed_beam_job_leaves_nothing_complete_and_the_rerun_equals_a_clean_run(tmp_path):
    import signal
    import time

    work = tmp_path / "killed"
    common = ["--no-mlflow", "--set", "prepare.dupe_factor=3", "--set", "vocab.vocab_file=../data/vocab/bert-base-uncased-vocab.txt"]
    cmd = [sys.executable, "-m", "pipeline.cli", "prepare", "--work-dir", str(work), *common]
    # The vocab_file override is relative to the current directory: run from configs/.
    cwd = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prepare_dir = work / "prepare"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if prepare_dir.exists() and any(p.name.startswith(".tmp-data") for p in prepare_dir.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    time.sleep(1.0)  # let it write part of its shards
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (prepare_dir / STAGE_FILE).exists()
    assert not (prepare_dir / "data" / "manifest.json").exists()

    rerun = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not any(p.name.startswith(".tmp-") for p in prepare_dir.iterdir())
    clean_work = tmp_path / "clean"
    clean = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "prepare", "--work-dir", str(clean_work), *common],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed_records = _records(str(prepare_dir / "data"))
    assert len(killed_records) > 1000
    assert killed_records == _records(str(clean_work / "prepare" / "data"))


def test_a_disk_filling_up_during_a_checkpoint_write_keeps_the_previous_checkpoint_loadable(tmp_path):
    from bert_keras.pretrain import run_pretraining
    from pipeline.contract.config import PretrainConfig
    from tests.test_data import VOCAB, write_records
    from tests.test_trainer import TINY, make_trainer

    data_dir = str(tmp_path / "data")
    write_records(data_dir, num_records=48, max_tokens=24)
    cfg = PretrainConfig(batch_size=8, steps=6, log_every=1, checkpoint_every=2, keep_checkpoints=1, eval_steps=0,
                         precision="float32", learning_rate=1e-3)

    def stage(ctx):
        return run_pretraining(TINY, cfg, data_dir, ctx.out_dir, vocab_size=30522, seed=0, log_fn=lambda s: None,
                               vocab_file=VOCAB)

    # One checkpoint's size, measured: the disk below holds one and a half of them.
    sizing = run_stages([Stage("pretrain", stage, {"k": 1}, resumable=True)], str(tmp_path / "sizing"))
    ckpt_dir = os.path.join(os.path.dirname(sizing[0].record["outputs"]["checkpoint"]))
    one = sum(os.path.getsize(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir) if f.startswith("ckpt-6"))
    with tmpfs(str(tmp_path / "disk"), size=f"{int(one * 1.5) // 1024}k") as disk:
        with pytest.raises(UserError) as err:
            run_stages([Stage("pretrain", stage, {"k": 1}, resumable=True)], disk)
        message = str(err.value)
        assert "\n" not in message and "No space left on device" in message
        assert "stage pretrain could not write" in message and "was not marked complete" in message
        assert not os.path.exists(os.path.join(disk, "pretrain", STAGE_FILE))
        kept = os.path.join(disk, "pretrain", "checkpoints")
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(kept)
        assert latest.endswith("ckpt-2")  # the state file still names the last complete checkpoint
        # Space freed (here: the checkpoints moved to a disk with room), it loads: model, optimizer, step.
        shutil.copytree(kept, tmp_path / "freed" / "checkpoints")
    trainer = make_trainer(tmp_path / "freed", cfg)
    assert trainer.restore() == 2
    assert int(trainer.optimizer.iterations.numpy()) == 2
