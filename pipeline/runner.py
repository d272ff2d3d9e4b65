"""The stage runner: run what changed, skip what did not, never trust half an output,
never lose training.

Each stage writes into `<work_dir>/<stage>/` and, as its very last act, an
atomic `stage.json`: the stage's fingerprint (a hash of its config section less
the keys that only steer a run, the content of its input files and the
fingerprints of the stages it reads), the whole section, the inputs' hashes,
its outputs and the MLflow run that made it. A stage is complete only if
`stage.json` exists and both its fingerprint and its section equal what the
current config and inputs give; otherwise it runs again, and since every
downstream fingerprint includes this one, so does everything after it (a
steering change, which leaves the fingerprint alone, reruns only the stage).

A stage that trains (`resumable`) keeps its checkpoints; what a change does is
decided by `pipeline.contract.keys` from the old and the new section (README,
"Interrupted work"):
- only steering keys changed: the run resumes from its last checkpoint;
- a length (steps, budget, epochs) raised: the run continues from its last
  checkpoint, and the stage's schedule is recomputed over the new length;
- anything else (a result-defining key, an input, an upstream result): the old
  output is moved aside to `<stage>.previous-N/` and the stage starts again. When
  the config later matches a kept output again, that one is moved back and resumed.
Only `--force` deletes. Stages that do not train (vocab, prepare, export) are
rebuilt from their inputs when stale: their outputs are replaced atomically.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pipeline.contract.atomic import (
    atomic_write_text,
    ensure_writable_dir,
    exists,
    has_files,
    is_remote,
    join,
    list_names,
    move_tree,
    open_read,
    remove_file,
    remove_tree,
)
from pipeline.contract.errors import UserError
from pipeline.contract.keys import Change, compare, result_part

log = logging.getLogger("bertpipe")

STAGE_FILE = "stage.json"
INPROGRESS_FILE = ".inprogress.json"
PREVIOUS = ".previous-"  # <stage dir>.previous-N: an earlier output kept aside


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
    """sha256 of every local file matched by `patterns`; remote files (gs://, s3://, ...) by
    the metadata their Beam FileSystem reports (size, last update, checksum where it has
    one), since reading a remote corpus whole to hash it would cost as much as the job."""
    from pipeline.contract.schema import file_sha256

    hashes: dict[str, str] = {}
    for pattern in patterns:
        if is_remote(pattern):
            hashes.update(_remote_fingerprints(pattern))
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


def _remote_fingerprints(pattern: str) -> dict[str, str]:
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam wraps a listing failure in its BeamIOError
        raise UserError(f"cannot list input {pattern}: {str(err).splitlines()[0][:200]}") from None
    out = {}
    for meta in sorted(found, key=lambda m: m.path):
        try:
            checksum = FileSystems.checksum(meta.path)
        except Exception:  # not every filesystem reports one; size and time still do
            checksum = None
        out[meta.path] = f"remote:size={meta.size_in_bytes},updated={meta.last_updated_in_seconds},checksum={checksum}"
    return out


def fingerprint(stage: Stage, input_hashes: dict[str, str], upstream_prints: dict[str, str]) -> str:
    """What the stage's output depends on: its section less the steering keys, its inputs and upstream."""
    blob = json.dumps(
        {"stage": stage.name, "section": result_part(stage.section), "inputs": input_hashes,
         "upstream": upstream_prints},
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


def run_stages(stages: list[Stage], work_dir: str, tracker: Any = None,
               force: bool | set[str] = False) -> list[StageResult]:
    """Run `stages` in order (each after its upstream), skipping up-to-date ones.
    `force`: True, or the names of the stages to rerun from scratch (their old output deleted)."""
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
        forced = force is True or stage.name in (force or ())
        state = {"fingerprint": "", "config": stage.section, "inputs": hash_inputs(stage.inputs),
                 "upstream_fingerprints": {up: records[up]["fingerprint"] for up in stage.upstream}}
        state["fingerprint"] = fingerprint(stage, state["inputs"], state["upstream_fingerprints"])
        out_dir = join(work_dir, _dirname(stage.name))
        previous = read_stage_record(work_dir, stage.name)
        if (previous and previous.get("fingerprint") == state["fingerprint"] and _same(previous.get("config"),
                                                                                     stage.section) and not forced):
            log.info("[%s] up to date (inputs and config unchanged), skipping", stage.name)
            records[stage.name] = previous
            results.append(StageResult(stage.name, "cached", previous, 0.0))
            continue
        results.append(_run_one(stage, out_dir, state, records, tracker, forced))
        records[stage.name] = results[-1].record
    return results


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def differences(old: dict[str, Any], new: dict[str, Any]):
    """The config changes between a stage's recorded state and its current one, with a
    change of input content or of an upstream stage's result counted as result-defining."""
    changes = compare(old.get("config") or {}, new["config"])
    if "upstream_fingerprints" not in old:  # recorded by an older bertpipe: nothing to compare
        changes.result.append(Change("(an output recorded by an older bertpipe)", "?", "?"))
        return changes
    for name in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(name) != new["inputs"].get(name):
            changes.result.append(Change(f"input {name}", "changed", ""))
    for up, print_ in sorted(new["upstream_fingerprints"].items()):
        if old["upstream_fingerprints"].get(up) != print_:
            changes.result.append(Change(f"the result of stage {up}", "changed", ""))
    return changes


def _describe(changes: list[Change]) -> str:
    return ", ".join(c.key if c.old == "changed" or c.old == "?" else str(c) for c in changes)


def _recorded_state(directory: str) -> dict[str, Any] | None:
    """What made the output in `directory`: its in-progress marker, else its stage record."""
    for name in (INPROGRESS_FILE, STAGE_FILE):
        path = join(directory, name)
        if exists(path):
            try:
                return _read_json(path)
            except (OSError, ValueError):
                return {}
    return None


def _kept_outputs(out_dir: str) -> list[str]:
    parent, base = out_dir.rstrip("/").rsplit("/", 1)
    found = [join(parent, n) for n in list_names(parent) if n.startswith(base + PREVIOUS)]
    return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit() else 0)


def _keep_aside(out_dir: str) -> str:
    taken = {p.rsplit("-", 1)[1] for p in _kept_outputs(out_dir)}
    n = 1
    while str(n) in taken:
        n += 1
    kept = f"{out_dir.rstrip('/')}{PREVIOUS}{n}"
    # Locally one rename on the same filesystem: nothing is copied or lost; on an object store
    # a copy then a delete, the records last in and first out.
    move_tree(out_dir, kept, markers=(STAGE_FILE, INPROGRESS_FILE))
    return kept


def _prepare_dir(stage: Stage, out_dir: str, state: dict[str, Any], force: bool) -> None:
    """Make `out_dir` ready: resume, continue, or keep the old output aside and start again."""
    marker = join(out_dir, INPROGRESS_FILE)
    if not stage.resumable or force:
        if force and stage.resumable and has_files(out_dir):
            log.info("[%s] --force: deleting the previous output in %s", stage.name, out_dir)
        remove_tree(out_dir)  # on object stores a "directory" never exists, its objects do
    elif has_files(out_dir):
        recorded = _recorded_state(out_dir)
        changes = differences(recorded or {}, state) if recorded is not None else None
        if changes is not None and changes.resumable:
            _say_resume(stage.name, out_dir, changes)
        else:
            _start_again(stage.name, out_dir, state, changes)
    else:
        _bring_back(stage.name, out_dir, state)
    ensure_writable_dir(out_dir)
    remove_file(join(out_dir, STAGE_FILE))  # running again: complete only once it finishes
    atomic_write_text(marker, json.dumps(state, sort_keys=True, default=str))


def _say_resume(name: str, out_dir: str, changes) -> None:
    if changes.extended:
        log.info("[%s] %s raised: continuing from the last checkpoint in %s, with the learning-rate schedule "
                 "recomputed over the new length", name, _describe(changes.extended), out_dir)
    if changes.steering:
        log.info("[%s] only run-steering keys changed (%s): resuming from the last checkpoint in %s",
                 name, _describe(changes.steering), out_dir)
    if not changes.extended and not changes.steering:
        log.info("[%s] resuming the interrupted run in %s", name, out_dir)


def _start_again(name: str, out_dir: str, state: dict[str, Any], changes) -> None:
    why = _describe(changes.result) if changes is not None else "no record of what made it"
    kept = _keep_aside(out_dir)
    log.info("[%s] result-defining changes since %s was written: %s; it is kept in %s and the stage starts "
             "again (--force deletes instead)", name, out_dir, why, kept)
    _bring_back(name, out_dir, state)


def _bring_back(name: str, out_dir: str, state: dict[str, Any]) -> None:
    """A kept output that the current config would resume replaces the empty directory."""
    for kept in reversed(_kept_outputs(out_dir)):
        recorded = _recorded_state(kept)
        if recorded and differences(recorded, state).resumable:
            if not is_remote(out_dir) and os.path.exists(out_dir):
                os.rmdir(out_dir)  # empty: _prepare_dir brings back only in place of nothing
            move_tree(kept, out_dir, markers=(STAGE_FILE, INPROGRESS_FILE))
            log.info("[%s] the config matches the output kept in %s again: moved back to %s and resumed",
                     name, kept, out_dir)
            return


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


def _run_one(stage, out_dir, state, records, tracker, force) -> StageResult:
    try:
        return _run_one_unguarded(stage, out_dir, state, records, tracker, force)
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


def _run_one_unguarded(stage, out_dir, state, records, tracker, force) -> StageResult:
    _prepare_dir(stage, out_dir, state, force)
    log.info("[%s] running -> %s", stage.name, out_dir)
    start = time.time()
    upstream = {up: records[up] for up in stage.upstream}
    if tracker is not None:
        with tracker.stage_run(stage.name, stage.section) as run_id:
            outputs = stage.run(StageContext(stage.name, out_dir, upstream, tracker))
            record = _record(stage, state, outputs, start, run_id)
            _write_record(out_dir, record)
            tracker.metrics({"stage_seconds": record["seconds"]})
            tracker.artifact(join(out_dir, STAGE_FILE))
            for path in stage.artifacts(outputs):
                tracker.artifact(path)
    else:
        outputs = stage.run(StageContext(stage.name, out_dir, upstream, None))
        record = _record(stage, state, outputs, start, None)
        _write_record(out_dir, record)
    log.info("[%s] done in %.1f s", stage.name, record["seconds"])
    return StageResult(stage.name, "ran", record, record["seconds"])


def _record(stage, state, outputs, start, run_id) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "fingerprint": state["fingerprint"],
        "config": stage.section,
        "inputs": state["inputs"],
        "upstream": stage.upstream,
        "upstream_fingerprints": state["upstream_fingerprints"],
        "outputs": outputs,
        "mlflow_run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - start, 2),
    }


def _write_record(out_dir: str, record: dict[str, Any]) -> None:
    atomic_write_text(join(out_dir, STAGE_FILE), json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    remove_file(join(out_dir, INPROGRESS_FILE))
