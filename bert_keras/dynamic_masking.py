"""Masking per training step, in tf.data, for PRETRAIN_DYNAMIC records.

The rule (units, budget over tokens, choice, 80/10/10, span lengths, replacement set) is
defined in `pipeline/contract/masking.py`; the Beam job's static records draw the same rule in
numpy (`beam_jobs/masking.py`), and tests/test_masking_agreement.py compares the two on the
same text.

Dynamic records carry `word_ids`: the unit of every token (-1 for [CLS], [SEP] and padding,
which are never masked). The Beam job already merged lexicon entities into one unit, so
"entity" masks whole units like "whole_word"; "token" makes each piece a unit and "span" cuts
the words into spans here, anew every step. Everything is dense (batch, seq) tensors: a
random priority per unit, an argsort, a cumulative sum of the sorted unit lengths against the
row's budget. Packed rows (several instances) share one budget: their units never span two
instances (`packing.py` offsets the word ids), so the choice stays inside instances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.contract import schema
from pipeline.contract.errors import ContractError
from pipeline.contract.masking import MASK_PROB, MODES, RANDOM_PROB, MaskingSpec, replacement_ids, span_cdf

__all__ = ["MODES", "MaskingSpec", "MaskingVocab", "masking_vocab", "spec_from_manifest", "mask_batch", "masker"]


@dataclasses.dataclass(frozen=True)
class MaskingVocab:
    mask_id: int
    replace_ids: np.ndarray  # int32 (n,): `pipeline.contract.masking.replacement_ids`


def masking_vocab(vocab: list[str], source: str = "vocab") -> MaskingVocab:
    if "[MASK]" not in vocab:
        raise ContractError(f"{source} has no [MASK] token: dynamic masking needs one")
    return MaskingVocab(vocab.index("[MASK]"), replacement_ids(vocab))


def spec_from_manifest(manifest: schema.DataManifest) -> MaskingSpec:
    """Masking settings of a dynamic data job (its manifest's config)."""
    prepare = manifest.config.get("prepare", manifest.config)
    return MaskingSpec.from_config({**prepare, "masking": manifest.masking if manifest.masking in MODES
                                    else prepare.get("masking", "whole_word")})  # fmt: skip


def _shift_right(x: tf.Tensor, fill) -> tf.Tensor:
    return tf.pad(x[:, :-1], [[0, 0], [1, 0]], constant_values=fill)


def _units(word_ids: tf.Tensor, spec: MaskingSpec) -> tf.Tensor:
    """(batch, seq) unit index per token (0, 1, ... per row), -1 outside units."""
    maskable = word_ids >= 0
    starts = maskable if spec.mode == "token" else maskable & tf.not_equal(word_ids, _shift_right(word_ids, -1))
    if spec.mode == "span":
        words = tf.where(maskable, tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, -1)  # word index per token
        shape = tf.shape(word_ids)
        cdf = tf.broadcast_to(tf.constant(span_cdf(spec.max_ngram), tf.float32), [shape[0], spec.max_ngram])
        lengths = 1 + tf.searchsorted(cdf, tf.random.uniform(shape), side="right", out_type=tf.int32)  # (batch, seq)
        ends = tf.cumsum(lengths, axis=1)  # word index where span j ends (exclusive)
        positions = tf.broadcast_to(tf.range(shape[1], dtype=tf.int32), shape)
        span_of_word = tf.searchsorted(ends, positions, side="right", out_type=tf.int32)
        span = tf.where(maskable, tf.gather(span_of_word, tf.maximum(words, 0), batch_dims=1), -1)
        starts = maskable & tf.not_equal(span, _shift_right(span, -1))  # a [SEP] between cuts the span
    return tf.where(maskable, tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, -1)


def mask_batch(batch: dict, spec: MaskingSpec, vocab: MaskingVocab) -> dict:
    """Masks a parsed batch; adds MASK_POSITIONS / MASK_IDS / MASK_WEIGHTS (batch, pred), drops WORD_IDS."""
    tokens, word_ids = batch[schema.TOKEN_IDS], tf.cast(batch[schema.WORD_IDS], tf.int32)
    shape, pred = tf.shape(tokens), spec.max_predictions
    seq = shape[1]
    units = _units(word_ids, spec)  # (batch, seq)
    maskable = units >= 0
    count = tf.reduce_sum(tf.cast(maskable, tf.float32), axis=1)
    k = tf.cast(tf.minimum(float(pred), tf.maximum(1.0, tf.round(count * spec.masked_lm_prob))), tf.int32)  # (batch,)
    # Tokens per unit, (batch, seq): non-units counted in an extra column that is dropped.
    lengths = tf.math.bincount(tf.where(maskable, units, seq), minlength=seq + 1, maxlength=seq + 1, axis=-1,
                               dtype=tf.int32)[:, :seq]  # fmt: skip
    priority = tf.where(lengths > 0, tf.random.uniform(shape), 2.0)  # empty unit slots sort last
    order = tf.argsort(priority, axis=1, stable=True)  # (batch, units) in random order
    fits = tf.cumsum(tf.gather(lengths, order, batch_dims=1), axis=1) <= k[:, None]
    taken = tf.gather(fits, tf.argsort(order, axis=1), batch_dims=1)  # back to unit order
    chosen = maskable & tf.gather(taken, tf.maximum(units, 0), batch_dims=1)  # (batch, seq)
    r = tf.random.uniform(shape)
    as_mask, as_random = chosen & (r < MASK_PROB), chosen & (r >= MASK_PROB) & (r < MASK_PROB + RANDOM_PROB)
    replace = tf.constant(vocab.replace_ids, tf.int32)
    pick = tf.cast(tf.random.uniform(shape) * float(len(vocab.replace_ids)), tf.int32)
    random_ids = tf.cast(tf.gather(replace, tf.minimum(pick, len(vocab.replace_ids) - 1)), tokens.dtype)
    masked = tf.where(as_mask, tf.cast(vocab.mask_id, tokens.dtype), tf.where(as_random, random_ids, tokens))
    # Chosen columns first, ascending; a row has at most k <= pred of them.
    cols = tf.argsort(tf.where(chosen, 0, 1), axis=1, stable=True)[:, :pred]
    cols = tf.pad(cols, [[0, 0], [0, tf.maximum(0, pred - tf.shape(cols)[1])]])  # (batch, pred)
    valid = tf.range(pred)[None, :] < tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1, keepdims=True)
    out = {key: v for key, v in batch.items() if key != schema.WORD_IDS}
    out[schema.TOKEN_IDS] = masked
    out[schema.MASK_POSITIONS] = tf.cast(tf.where(valid, cols, 0), tokens.dtype)
    out[schema.MASK_IDS] = tf.where(valid, tf.gather(tokens, cols, batch_dims=1), tf.zeros_like(cols, tokens.dtype))
    out[schema.MASK_WEIGHTS] = tf.cast(valid, tf.float32)
    return out


def masker(spec: MaskingSpec, vocab: MaskingVocab) -> Callable[[dict], dict]:
    return lambda batch: mask_batch(batch, spec, vocab)
