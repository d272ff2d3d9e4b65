"""What a changed config key does to a training run that already has checkpoints.

Two kinds of key, named here and nowhere else (README, "Interrupted work"):

- keys that only steer the run (`STEERING_KEYS`): how often it logs, checkpoints and
  evaluates, how many checkpoints it keeps, how much held-out data it reads. A
  change resumes the run where it stopped;
- every other key defines the result: the model, the data, the objectives, the
  optimizer, the schedule's shape, the seed. A change starts a new run; the old
  output is kept beside it (`pipeline/runner.py`).

The run's length (`LENGTH_KEYS`: steps, a budget, epochs) sits between the two:
raised, the run continues from its last checkpoint with the schedule recomputed over
the new length; lowered (or a budget changed from time to tokens), it is a result
change, since the weights cannot be untrained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.contract.config import flatten
from pipeline.contract.lengths import parse_budget

STEERING_KEYS = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_steps",
                           "eval_batch_size"})
LENGTH_KEYS = frozenset({"steps", "budget", "epochs"})


def key_kind(dotted: str) -> str:
    """"steer", "length" or "result" for a dotted key such as "pretrain.log_every"."""
    name = dotted.rsplit(".", 1)[-1]
    if name in STEERING_KEYS:
        return "steer"
    return "length" if name in LENGTH_KEYS else "result"


def raised(dotted: str, old: Any, new: Any) -> bool:
    """True when a length key's new value continues the old run (same unit, not shorter)."""
    if old is None or new is None:
        return False
    if dotted.rsplit(".", 1)[-1] == "budget":
        try:
            before, after = parse_budget(old), parse_budget(new)
        except ValueError:
            return False
        return before.unit == after.unit and after.amount >= before.amount
    try:
        return float(new) >= float(old)
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} ({self.old!r} -> {self.new!r})"


@dataclasses.dataclass
class Changes:
    result: list[Change] = dataclasses.field(default_factory=list)  # start again
    extended: list[Change] = dataclasses.field(default_factory=list)  # length raised: continue
    steering: list[Change] = dataclasses.field(default_factory=list)  # resume

    @property
    def resumable(self) -> bool:
        return not self.result


_MISSING = "<unset>"


def compare(old: dict[str, Any], new: dict[str, Any]) -> Changes:
    """Class every key whose value differs between two config sections."""
    before, after = flatten(old), flatten(new)
    changes = Changes()
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if a == b:
            continue
        kind = key_kind(key)
        change = Change(key, a, b)
        if kind == "steer":
            changes.steering.append(change)
        elif kind == "length" and raised(key, a if a != _MISSING else None, b if b != _MISSING else None):
            changes.extended.append(change)
        else:
            changes.result.append(change)
    return changes


def result_part(section: Any) -> Any:
    """`section` without its steering keys, at any depth: what a stage's fingerprint covers."""
    if isinstance(section, dict):
        return {k: result_part(v) for k, v in section.items() if k not in STEERING_KEYS}
    if isinstance(section, list):
        return [result_part(v) for v in section]
    return section
