"""Train / dev / test for a fine-tuning task: which split each row of the training file goes to.

Rows are assigned by group: the value of `split_field` (a speech, a document, a speaker)
or, without one, the row itself, so no group straddles two splits. Each group's place
is a hash of (seed, group), independent of row order; the groups with the smallest
hashes go to test (only when there is no `test_file`: `test_fraction` of the groups),
the next ones to dev (`dev_fraction` of the groups), the rest to train. So the shares
are exact in groups (round(fraction x groups), at least one group each when the
fraction is above 0 and the file has groups to spare), not the noisy result of a
threshold on each hash: 18 speeches and dev_fraction 0.1 always give 2 dev speeches.

Streaming: the first pass keeps 8 bytes per distinct group (the sorted hashes); the
second pass asks `split(row, index)` for each row.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from beam_jobs.instances import stable_int

TRAIN, DEV, TEST = "train", "dev", "test"


def group_key(row: dict, index: int, split_field: str | None) -> str:
    """What rows must stay together by: the split_field's value, else the row's own index."""
    return f"group:{row.get(split_field)}" if split_field else f"row:{index}"


def carved(groups: int, fraction: float, keep: int) -> int:
    """Groups for a split of `fraction` of `groups`, leaving at least `keep` for the others."""
    if fraction <= 0 or groups <= keep:
        return 0
    return min(max(1, round(fraction * groups)), groups - keep)


class Splitter:
    """`split(row, index)` -> TRAIN, DEV or TEST; `counts` holds the groups per split."""

    def __init__(self, keys: Iterable[str], seed: int, dev_fraction: float, test_fraction: float | None):
        # Distinct group hashes, ascending: rank decides the split.
        self.seed = seed
        hashes = np.unique(np.fromiter((stable_int(seed, k) for k in keys), dtype=np.uint64))
        n = len(hashes)
        n_test = carved(n, test_fraction or 0.0, keep=2 if dev_fraction > 0 else 1)
        n_dev = carved(n, dev_fraction, keep=n_test + 1)
        self.counts = {TEST: n_test, DEV: n_dev, TRAIN: n - n_test - n_dev}
        # Thresholds on the hash: below `test_below` is test, below `dev_below` dev, the rest train.
        self._test_below = int(hashes[n_test]) if n_test else 0
        self._dev_below = int(hashes[n_test + n_dev]) if n_dev else self._test_below

    def of_key(self, key: str) -> str:
        h = stable_int(self.seed, key)
        if h < self._test_below:
            return TEST
        return DEV if h < self._dev_below else TRAIN

    def split(self, row: dict, index: int, split_field: str | None) -> str:
        return self.of_key(group_key(row, index, split_field))
