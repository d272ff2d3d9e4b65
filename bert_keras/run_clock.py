"""Where a training run stands along its length: steps done, seconds spent, progress.

A run's length is a step count or a time budget (a token budget is a step count,
`pipeline/contract/lengths.py`). Before each step the trainer asks for the
schedule's progress: the share of the run that will be done at the end of that
step, so the last step runs at the schedule's final value and a time budget ends
with the learning rate where the schedule ends. Training time excludes evaluation
(which `paused()` brackets) and is saved with every checkpoint, so a resumed run
counts what it spent before the kill, up to its last checkpoint. The first step
of each process is not counted either: it traces and compiles the step function
(seconds to minutes, more on a busy machine), which says nothing about training.
"""

from __future__ import annotations

import contextlib
import time

# Weight of the newest step in the step-time estimate: smooths the jitter of one step
# while following a slowdown (another job on the machine) within a few dozen steps.
STEP_TIME_WEIGHT = 0.1


class RunClock:
    def __init__(self, steps: int | None, budget_seconds: float | None, spent_before: float):
        if (steps is None) == (budget_seconds is None):
            raise ValueError("a run has a step count or a time budget, exactly one")
        self.steps, self.budget = steps, budget_seconds
        self.spent_before = spent_before
        self.eval_seconds = 0.0  # not training: evaluation, and the first step's tracing
        self._start = time.perf_counter()
        self._step_seconds: float | None = None
        self._first = True

    def spent(self) -> float:
        """Training seconds of this run, from its first step (before a resume too)."""
        return self.spent_before + time.perf_counter() - self._start - self.eval_seconds

    def finished(self, step: int) -> bool:
        if self.steps is not None:
            return step >= self.steps
        return self.spent() >= self.budget

    def progress(self, step: int) -> float:
        """Share of the run done at the end of the step with 0-based index `step`."""
        if self.steps is not None:
            return min(1.0, (step + 1) / self.steps)
        return min(1.0, (self.spent() + (self._step_seconds or 0.0)) / self.budget)

    def step_took(self, seconds: float) -> None:
        if self._first:  # the first step of a process traces the step function: not training time
            self._first = False
            self.eval_seconds += seconds
            return
        if self._step_seconds is None:
            self._step_seconds = seconds
        else:
            self._step_seconds += STEP_TIME_WEIGHT * (seconds - self._step_seconds)

    @contextlib.contextmanager
    def paused(self):
        """Time inside (held-out evaluation) is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - start
