"""The stage runner: run what changed, skip what did not, never trust half an output.

Each stage writes into `<work_dir>/<stage>/` and, as its very last act, an
atomic `stage.json`: the stage's fingerprint (a hash of its config section,
the content of its input files and the fingerprints of the stages it reads),
the inputs' hashes, its outputs and the MLflow run that made it. A stage is
complete only if `stage.json` exists and its fingerprint equals the one the
current config and inputs give; otherwise it runs again, and since every
downstream fingerprint includes this one, so does everything after it.
`--force` reruns regardless.

Stages that can resume (pretraining, fine-tuning) keep their checkpoints in the
stage directory across an interrupted run with the same fingerprint; a changed
fingerprint clears the directory first, so a resume never mixes two configs.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from pipeline.contract.atomic import (
    atomic_write_text,
    ensure_writable_dir,
    exists,
    is_remote,
    join,
    open_read,
    remove_file,
    remove_tree,
)
from pipeline.contract.errors import UserError

log = logging.getLogger("bertpipe")

STAGE_FILE = "stage.json"
INPROGRESS_FILE = ".inprogress.json"


@dataclasses.dataclass
class StageContext:
    """What a stage function gets: where to write, and where its inputs are."""

    name: str
    out_dir: str
    upstream: dict[str, dict[str, Any]]  # stage name -> that stage's stage.json
    tracker: Any  # pipeline.tracking.Tracker or None


@dataclasses.dataclass
class Stage:
    name: str
    run: Callable[[StageContext], dict[str, Any]]  # returns the outputs to record
    section: dict[str, Any]  # resolved config that determines the output
    inputs: list[str] = dataclasses.field(default_factory=list)  # files or globs whose content matters
    upstream: list[str] = dataclasses.field(default_factory=list)
    resumable: bool = False
    artifacts: Callable[[dict[str, Any]], list[str]] = lambda outputs: []


def hash_inputs(patterns: list[str]) -> dict[str, str]:
    """sha256 of every local file matched by `patterns`; remote paths are hashed by name only."""
    from pipeline.contract.schema import file_sha256

    hashes: dict[str, str] = {}
    for pattern in patterns:
        if "://" in pattern:
            hashes[pattern] = "remote:" + hashlib.sha256(pattern.encode()).hexdigest()
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        for path in matches:
            if os.path.isdir(path):
                for root, _, files in sorted(os.walk(path)):
                    for f in sorted(files):
                        full = os.path.join(root, f)
                        hashes[full] = file_sha256(full)
            elif os.path.exists(path):
                hashes[path] = file_sha256(path)
    return hashes


def fingerprint(stage: Stage, input_hashes: dict[str, str], upstream_prints: dict[str, str]) -> str:
    blob = json.dumps(
        {"stage": stage.name, "section": stage.section, "inputs": input_hashes, "upstream": upstream_prints},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def read_stage_record(work_dir: str, name: str) -> dict[str, Any] | None:
    path = join(join(work_dir, _dirname(name)), STAGE_FILE)
    try:
        return _read_json(path) if exists(path) else None
    except (OSError, ValueError):
        return None


def _read_json(path: str) -> Any:
    # A local path or any Beam filesystem path (the data jobs can write to gs://, s3://, ...).
    with open_read(path) as fh:
        return json.loads(fh.read().decode("utf-8"))


def _dirname(name: str) -> str:
    # "finetune:sentiment" -> "finetune/sentiment"
    return name.replace(":", os.sep)


@dataclasses.dataclass
class StageResult:
    name: str
    status: str  # "ran", "cached"
    record: dict[str, Any]
    seconds: float


def run_stages(stages: list[Stage], work_dir: str, tracker: Any = None, force: bool = False) -> list[StageResult]:
    """Run `stages` in order (each after its upstream), skipping up-to-date ones."""
    ensure_writable_dir(work_dir)
    records: dict[str, dict[str, Any]] = {}
    results: list[StageResult] = []
    for stage in stages:
        for up in stage.upstream:
            if up not in records:
                rec = read_stage_record(work_dir, up)
                if rec is None:
                    raise UserError(f"stage {stage.name} needs the output of {up}: run `bertpipe {up.split(':')[0]}` first")
                records[up] = rec
        input_hashes = hash_inputs(stage.inputs)
        print_ = fingerprint(stage, input_hashes, {up: records[up]["fingerprint"] for up in stage.upstream})
        out_dir = join(work_dir, _dirname(stage.name))
        previous = read_stage_record(work_dir, stage.name)
        if previous and previous.get("fingerprint") == print_ and not force:
            log.info("[%s] up to date (inputs and config unchanged), skipping", stage.name)
            records[stage.name] = previous
            results.append(StageResult(stage.name, "cached", previous, 0.0))
            continue
        results.append(_run_one(stage, out_dir, print_, input_hashes, records, tracker, force))
        records[stage.name] = results[-1].record
    return results


def _prepare_dir(stage: Stage, out_dir: str, print_: str, force: bool) -> None:
    """Clear a stale output; keep a resumable stage's partial output of the same fingerprint."""
    marker = join(out_dir, INPROGRESS_FILE)
    keep = False
    if stage.resumable and not force and exists(marker):
        try:
            keep = _read_json(marker).get("fingerprint") == print_
        except (OSError, ValueError):
            keep = False
    if is_remote(out_dir) and not keep:
        remove_tree(out_dir)  # object stores: a "directory" never exists, its objects do
    elif os.path.exists(out_dir) and not keep:
        shutil.rmtree(out_dir)
    ensure_writable_dir(out_dir)
    if keep:
        log.info("[%s] resuming the interrupted run in %s", stage.name, out_dir)
    atomic_write_text(marker, json.dumps({"fingerprint": print_}))


# Storage failures surface from deep inside Beam workers or TensorFlow wrapped in their
# own exception types; the message is the stable part, so it is what we match.
_STORAGE_ERRORS = {
    errno.ENOSPC: "No space left on device",
    errno.EROFS: "Read-only file system",
    errno.EDQUOT: "Disk quota exceeded",
}


def _storage_error(err: BaseException) -> str | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRORS:
            return _STORAGE_ERRORS[seen.errno]
        for text in _STORAGE_ERRORS.values():
            if text in str(seen):
                return text
        seen = seen.__cause__ or seen.__context__
    return None


def _run_one(stage, out_dir, print_, input_hashes, records, tracker, force) -> StageResult:
    try:
        return _run_one_unguarded(stage, out_dir, print_, input_hashes, records, tracker, force)
    except UserError:
        raise
    except Exception as err:
        reason = _storage_error(err)
        if reason is None:
            raise
        raise UserError(
            f"stage {stage.name} could not write {out_dir}: {reason}; free space or point run.work_dir elsewhere, "
            "then rerun (the stage was not marked complete)"
        ) from None


def _run_one_unguarded(stage, out_dir, print_, input_hashes, records, tracker, force) -> StageResult:
    _prepare_dir(stage, out_dir, print_, force)
    log.info("[%s] running -> %s", stage.name, out_dir)
    start = time.time()
    upstream = {up: records[up] for up in stage.upstream}
    if tracker is not None:
        with tracker.stage_run(stage.name, stage.section) as run_id:
            outputs = stage.run(StageContext(stage.name, out_dir, upstream, tracker))
            record = _record(stage, print_, input_hashes, outputs, start, run_id)
            _write_record(out_dir, record)
            tracker.metrics({"stage_seconds": record["seconds"]})
            tracker.artifact(join(out_dir, STAGE_FILE))
            for path in stage.artifacts(outputs):
                tracker.artifact(path)
    else:
        outputs = stage.run(StageContext(stage.name, out_dir, upstream, None))
        record = _record(stage, print_, input_hashes, outputs, start, None)
        _write_record(out_dir, record)
    log.info("[%s] done in %.1f s", stage.name, record["seconds"])
    return StageResult(stage.name, "ran", record, record["seconds"])


def _record(stage, print_, input_hashes, outputs, start, run_id) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "fingerprint": print_,
        "config": stage.section,
        "inputs": input_hashes,
        "upstream": stage.upstream,
        "outputs": outputs,
        "mlflow_run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - start, 2),
    }


def _write_record(out_dir: str, record: dict[str, Any]) -> None:
    atomic_write_text(join(out_dir, STAGE_FILE), json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    remove_file(join(out_dir, INPROGRESS_FILE))
