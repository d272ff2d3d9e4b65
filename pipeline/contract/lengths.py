"""How long a training run is: a step count, or a budget of time or tokens.

Spelled in the config as `budget: 20min`, `budget: 2h`, `budget: 90s` or
`budget: 500M tokens` (k, M, B multiply by 1e3, 1e6, 1e9), and evaluation
cadences as a step count or a duration (`eval_every: 10min`). A token budget
counts sequence slots (rows x sequence length per step, padding included), so it
is a step count known before training starts; a time budget counts the seconds
spent training (evaluation excluded) and is only known as it runs.
"""

from __future__ import annotations

import dataclasses
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h)\s*$")
_TOKENS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kMB]?)\s*tokens?\s*$")
_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_MULTIPLIER = {"": 1.0, "k": 1e3, "M": 1e6, "B": 1e9}
BUDGET_SPELLING = "write it as e.g. 20min, 2h, 90s or 500M tokens"


@dataclasses.dataclass(frozen=True)
class Budget:
    unit: str  # "seconds" or "tokens"
    amount: float

    @property
    def seconds(self) -> float | None:
        return self.amount if self.unit == "seconds" else None

    def steps(self, tokens_per_step: int) -> int:
        """Steps a token budget allows (at least one)."""
        return max(1, -(-int(self.amount) // max(tokens_per_step, 1)))


def parse_duration(text: str) -> float | None:
    """"20min" -> 1200.0 seconds; None when `text` is not a duration."""
    match = _DURATION.match(str(text))
    return float(match.group(1)) * _SECONDS[match.group(2)] if match else None


def parse_budget(text: str) -> Budget:
    """"20min" / "2h" / "500M tokens" -> Budget; ValueError with the spelling otherwise."""
    seconds = parse_duration(text)
    if seconds is not None:
        if seconds <= 0:
            raise ValueError(f"budget {text!r} must be more than zero")
        return Budget("seconds", seconds)
    match = _TOKENS.match(str(text))
    if match:
        amount = float(match.group(1)) * _MULTIPLIER[match.group(2)]
        if amount < 1:
            raise ValueError(f"budget {text!r} must be at least one token")
        return Budget("tokens", amount)
    raise ValueError(f"{text!r} is not a budget: {BUDGET_SPELLING}")
