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

import numpy as np

from beam_jobs import masking
from beam_jobs.instances import Instances
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


def encode_instances(made: Instances, spec: RecordSpec, vocab: VocabInfo, lexicon: dict | None,
                     totals: collections.Counter) -> list[bytes]:  # fmt: skip
    """Serialized records of the batch `made` (each instance's seed is the key of its masks); adds
    the manifest's totals (instances, tokens, masked tokens by kind, ...) to `totals`."""
    n = len(made)
    if not n:
        return []
    # Every token but [CLS] and the [SEP]s ([CLS] A [SEP] B [SEP], or [CLS] A [SEP]) can be masked.
    tokens, real, maskable = made.layout(spec.seq_length, vocab.cls, vocab.sep)
    units = masking.unit_ids(tokens, maskable, spec.masking, vocab.is_suffix, lexicon)
    values = {schema.TOKEN_IDS: tokens, schema.PADDING_MASK: real.astype(np.int64),
              schema.SEGMENT_IDS: made.segment_ids(spec.seq_length),
              schema.NSP_LABEL: made.is_random_next.astype(np.int64)[:, None]}  # fmt: skip
    totals["instances"] += n
    totals["tokens"] += int(made.lengths.sum())
    totals["maskable_tokens"] += int(maskable.sum())
    totals["nsp_random"] += int(made.is_random_next.sum())
    if spec.dynamic:
        values[schema.WORD_IDS] = units
        totals["masking_units"] += int((units.max(axis=1) + 1).sum())
    else:
        m = masking.mask_batch(tokens, units, spec.masking, made.seeds, vocab.mask, vocab.replace_ids)
        values[schema.TOKEN_IDS] = m.tokens
        values[schema.MASK_POSITIONS] = m.positions
        values[schema.MASK_IDS] = m.labels
        values[schema.MASK_WEIGHTS] = (np.arange(spec.masking.max_predictions)[None, :] < m.count[:, None]).astype(np.float32)
        totals["masked_tokens"] += int(m.count.sum())
        for name, count in zip(KINDS, np.bincount(m.kinds[m.kinds >= 0], minlength=3).tolist(), strict=True):
            totals[name] += count
    return schema.serialize_batch(spec.kind, values, spec.shape)
