"""Masking per training step, in tf.data, for PRETRAIN_DYNAMIC records.

Dynamic records carry `word_ids`: the masking unit of every token (-1 for
[CLS], [SEP] and padding, which are never masked). The Beam job already merged
lexicon entities into one unit, so "entity" masks whole units like
"whole_word". Units are grouped into a ragged (batch, units, pieces) tensor and
tf-text's `mask_language_model` with `RandomItemSelector` and
`MaskValuesChooser` picks units and replaces each of their pieces with [MASK]
(80%), a random id (10%) or itself (10%), as BERT does.

Modes: token (every piece its own unit), whole_word / entity (units from
`word_ids`), span (runs of consecutive words: each word starts a new span with
probability 2 / (max_ngram + 1), so spans average (max_ngram + 1) / 2 words;
a run never crosses a [SEP] or an instance boundary).

`RandomItemSelector` selects `rate` of the units, up to `max_predictions`
units per row; pieces beyond `max_predictions` (long words) are left unmasked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf
import tensorflow_text as tf_text

from pipeline.contract import schema
from pipeline.contract.config import MASKING_MODES
from pipeline.contract.errors import ContractError

MODES = MASKING_MODES


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    mode: str
    rate: float
    max_predictions: int
    vocab_size: int
    mask_id: int
    max_ngram: int = 3

    def __post_init__(self):
        if self.mode not in MODES:
            raise ContractError(f"masking mode {self.mode!r} is not one of {', '.join(MODES)}")


def spec_from_manifest(manifest: schema.DataManifest, mask_id: int) -> MaskingSpec:
    """Masking settings of a dynamic data job (its manifest's masking and config)."""
    prepare = manifest.config.get("prepare", manifest.config)
    rate = float(prepare.get("masked_lm_prob", 0.15))
    max_pred = manifest.max_predictions or int(prepare.get("max_predictions_per_seq", 0)) or max(
        1, round(manifest.seq_length * rate))
    mode = manifest.masking if manifest.masking in MODES else prepare.get("masking", "whole_word")
    return MaskingSpec(mode, rate, max_pred, manifest.vocab_size, mask_id, int(prepare.get("max_ngram", 3)))


def _unit_starts(word_ids: tf.Tensor, spec: MaskingSpec) -> tf.Tensor:
    """(batch, seq) bool: True where a new masking unit begins."""
    selectable = word_ids >= 0
    if spec.mode == "token":
        return selectable
    prev = tf.pad(word_ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    new_word = selectable & tf.not_equal(word_ids, prev)
    if spec.mode != "span":
        return new_word
    after_gap = selectable & (prev < 0)
    p_start = 2.0 / (spec.max_ngram + 1)
    return (new_word & (tf.random.uniform(tf.shape(word_ids)) < p_start)) | after_gap


def mask_batch(batch: dict, spec: MaskingSpec) -> dict:
    """Masks a parsed batch; adds MASK_POSITIONS / MASK_IDS / MASK_WEIGHTS (batch, pred)."""
    tokens, word_ids = batch[schema.TOKEN_IDS], batch[schema.WORD_IDS]
    rows = tf.shape(tokens)[0]
    pred = spec.max_predictions
    starts = _unit_starts(word_ids, spec)
    where = tf.where(word_ids >= 0)  # (n, 2) [row, col], row-major: pieces in order
    pieces = tf.gather_nd(tokens, where)  # (n,)
    unit_of_piece = tf.gather_nd(tf.reshape(tf.cumsum(tf.reshape(tf.cast(starts, tf.int64), [-1])),
                                            tf.shape(starts)), where) - 1
    units_per_row = tf.reduce_sum(tf.cast(starts, tf.int64), axis=1)
    # (batch, units, pieces): the selector picks whole units (axis=1).
    by_unit = tf.RaggedTensor.from_row_lengths(
        tf.RaggedTensor.from_value_rowids(pieces, unit_of_piece, nrows=tf.reduce_sum(units_per_row)),
        units_per_row)
    selector = tf_text.RandomItemSelector(max_selections_per_batch=pred, selection_rate=spec.rate)
    chooser = tf_text.MaskValuesChooser(spec.vocab_size, spec.mask_id, 0.8, 0.1)
    masked, positions, labels = tf_text.mask_language_model(by_unit, selector, chooser, axis=1)
    # positions index each row's selectable pieces; keep the first `pred` of them.
    positions = positions[:, :pred]
    row_starts = tf.cast(masked.row_starts(), positions.dtype)
    kept_flat = tf.reshape(positions.values + tf.gather(row_starts, positions.value_rowids()), [-1, 1])
    kept = tf.scatter_nd(kept_flat, tf.ones_like(kept_flat[:, 0], tf.bool), tf.shape(pieces, tf.int64))
    new_pieces = tf.where(kept, masked.flat_values, pieces)
    out = {k: v for k, v in batch.items() if k != schema.WORD_IDS}
    out[schema.TOKEN_IDS] = tf.tensor_scatter_nd_update(tokens, where, new_pieces)
    cols = tf.RaggedTensor.from_value_rowids(tf.cast(where[:, 1], tf.int32), where[:, 0], nrows=tf.cast(rows, tf.int64))
    mask_cols = tf.gather(cols, positions, batch_dims=1)
    out[schema.MASK_POSITIONS] = mask_cols.to_tensor(0, shape=[None, pred])
    out[schema.MASK_IDS] = tf.cast(labels[:, :pred].to_tensor(0, shape=[None, pred]), tokens.dtype)
    out[schema.MASK_WEIGHTS] = tf.ones_like(mask_cols, tf.float32).to_tensor(0.0, shape=[None, pred])
    return out


def masker(spec: MaskingSpec) -> Callable[[dict], dict]:
    return lambda batch: mask_batch(batch, spec)
