"""Instances -> serialized pretraining records, a batch at a time, in numpy.

The batch is laid out as (n, seq) / (n, pred) arrays once; masking (`masking.mask_batch`, static
records) or the masking units (`masking.unit_ids`, the `word_ids` of dynamic records) and the
`tf.train.Example` encoding (`schema.serialize_batch`) then run over whole arrays. What is left
per instance is reading its fields into the batch's arrays. Per-instance Python (masking
one instance at a time, protobuf messages) was the job's largest cost.

Each instance's masks come from its own seed (`masking.uniform`), so how instances are batched
never changes a record.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from beam_jobs import masking
from beam_jobs.instances import Instance
from beam_jobs.tokenize import VocabInfo
from pipeline.contract import schema
from pipeline.contract.masking import KINDS, MaskingSpec


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What the records of a job look like: from `PrepareConfig` (`record_spec`)."""

    masking: MaskingSpec
    seq_length: int
    dynamic: bool  # write word ids, mask in the trainer

    @property
    def kind(self) -> str:
        return schema.PRETRAIN_DYNAMIC if self.dynamic else schema.PRETRAIN_STATIC

    @property
    def shape(self) -> dict[str, tuple[int, ...]]:
        return schema.shapes(self.kind, self.seq_length, 0 if self.dynamic else self.masking.max_predictions)


def record_spec(prepare) -> RecordSpec:
    """From a `PrepareConfig`."""
    from pipeline.contract.config import to_dict

    return RecordSpec(MaskingSpec.from_config(to_dict(prepare)), prepare.max_seq_length, prepare.dynamic)


def encode_instances(made: Sequence[Instance], seeds: np.ndarray, spec: RecordSpec, vocab: VocabInfo,
                     lexicon: dict | None, totals: collections.Counter) -> list[bytes]:  # fmt: skip
    """Serialized records of `made` (one uint64 seed each, the key of its masks); adds the
    manifest's totals (instances, tokens, masked tokens by kind, ...) to `totals`."""
    n, seq = len(made), spec.seq_length
    if not n:
        return []
    seeds = np.asarray(seeds, np.uint64)
    lengths = np.fromiter((len(x.tokens) for x in made), np.int64, n)
    len_a = np.fromiter((x.len_a for x in made), np.int64, n)
    col = np.arange(seq)[None, :]
    real = col < lengths[:, None]
    tokens = np.zeros((n, seq), np.int64)
    tokens[real] = np.concatenate([x.tokens for x in made])  # row-major: each row's tokens, then padding
    # Every token but [CLS] and the [SEP]s ([CLS] A [SEP] B [SEP], or [CLS] A [SEP]) can be masked.
    maskable = real & (col != 0) & (col != len_a[:, None] + 1) & (col != lengths[:, None] - 1)
    units = masking.unit_ids(tokens, maskable, spec.masking, vocab.is_suffix, lexicon)
    values = {schema.TOKEN_IDS: tokens, schema.PADDING_MASK: real.astype(np.int64),
              schema.SEGMENT_IDS: (real & (col >= len_a[:, None] + 2)).astype(np.int64),
              schema.NSP_LABEL: np.fromiter((x.is_random_next for x in made), np.int64, n)[:, None]}  # fmt: skip
    totals["instances"] += n
    totals["tokens"] += int(lengths.sum())
    totals["maskable_tokens"] += int(maskable.sum())
    totals["nsp_random"] += int(values[schema.NSP_LABEL].sum())
    if spec.dynamic:
        values[schema.WORD_IDS] = units
        totals["masking_units"] += int((units.max(axis=1) + 1).sum())
    else:
        m = masking.mask_batch(tokens, units, spec.masking, seeds, vocab.mask, vocab.replace_ids)
        values[schema.TOKEN_IDS] = m.tokens
        values[schema.MASK_POSITIONS] = m.positions
        values[schema.MASK_IDS] = m.labels
        values[schema.MASK_WEIGHTS] = (np.arange(spec.masking.max_predictions)[None, :] < m.count[:, None]).astype(np.float32)
        totals["masked_tokens"] += int(m.count.sum())
        for name, count in zip(KINDS, np.bincount(m.kinds[m.kinds >= 0], minlength=3).tolist(), strict=True):
            totals[name] += count
    return schema.serialize_batch(spec.kind, values, spec.shape)
