"""Sequence packing: several short instances share one row, without leakage.

Layout (pipeline/contract/schema.py docstring): `padding_mask` holds the 1-based index of
the instance each token belongs to (0 = padding); the model lets a token attend
only to tokens with the same index and restarts positions per instance. Each
instance keeps its own [CLS] (`cls_positions`, `cls_weights`) and label
(`nsp_label` or `label`), up to `max_instances` per row; `mask_positions` are
offset into the row; dynamic `word_ids` are offset so units never span two
instances.

Bin assignment is first-fit decreasing over a window of rows, written in numpy
inside `tf.numpy_function`: tf.data has no bin-packing op, and the per-window
work (a few hundred rows) is small next to a training step.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.contract import schema

# Per-instance features (shape (1,) in an unpacked record -> (max_instances,)).
_INSTANCE = (schema.NSP_LABEL, schema.LABEL, schema.EXAMPLE_ID)
_PREDICTION = (schema.MASK_POSITIONS, schema.MASK_IDS, schema.MASK_WEIGHTS)
_TOKEN = (schema.TOKEN_IDS, schema.SEGMENT_IDS, schema.PADDING_MASK, schema.WORD_IDS)


def packed_predictions(max_predictions: int, max_instances: int) -> int:
    """Prediction slots of a packed row: each instance rounds its 15% up, so a
    full row of short instances can carry a few more predictions than one long one."""
    return max_predictions + max_instances


def pack_window(rows: dict[str, np.ndarray], *, seq_length: int, max_instances: int,
                max_predictions: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Pack one window of unpacked rows (numpy dict, leading dim = rows) into fewer rows.

    A bin takes an instance while its tokens, instance count and predictions fit.
    """
    lengths = (rows[schema.PADDING_MASK] > 0).sum(axis=1)
    has_pred = schema.MASK_WEIGHTS in rows
    preds = (rows[schema.MASK_WEIGHTS] > 0).sum(axis=1) if has_pred else np.zeros_like(lengths)
    bins: list[list[int]] = []
    used: list[list[int]] = []  # [tokens, predictions] per bin
    for i in np.argsort(-lengths, kind="stable"):
        for b, members in enumerate(bins):
            if (len(members) < max_instances and used[b][0] + lengths[i] <= seq_length
                    and used[b][1] + preds[i] <= max_predictions):
                members.append(int(i))
                used[b][0] += int(lengths[i])
                used[b][1] += int(preds[i])
                break
        else:
            bins.append([int(i)])
            used.append([int(lengths[i]), int(preds[i])])
    if rng is not None:
        rng.shuffle(bins)  # FFD sorts by length; don't hand the model length-ordered batches

    n = len(bins)
    out: dict[str, np.ndarray] = {}
    for key in _TOKEN:
        if key in rows:
            out[key] = np.full((n, seq_length), -1 if key == schema.WORD_IDS else 0, rows[key].dtype)
    for key in _PREDICTION:
        if key in rows:
            out[key] = np.zeros((n, max_predictions), rows[key].dtype)
    for key in _INSTANCE:
        if key in rows:
            out[key] = np.full((n, max_instances), -1 if key == schema.EXAMPLE_ID else 0, rows[key].dtype)
    out[schema.CLS_POSITIONS] = np.zeros((n, max_instances), np.int32)
    out[schema.CLS_WEIGHTS] = np.zeros((n, max_instances), np.float32)

    for r, members in enumerate(bins):
        offset = pred_offset = word_offset = 0
        for k, i in enumerate(members):
            length = int(lengths[i])
            span = slice(offset, offset + length)
            out[schema.TOKEN_IDS][r, span] = rows[schema.TOKEN_IDS][i, :length]
            out[schema.SEGMENT_IDS][r, span] = rows[schema.SEGMENT_IDS][i, :length]
            out[schema.PADDING_MASK][r, span] = k + 1
            if schema.WORD_IDS in rows:
                words = rows[schema.WORD_IDS][i, :length]
                out[schema.WORD_IDS][r, span] = np.where(words >= 0, words + word_offset, -1)
                word_offset += int(words.max(initial=-1)) + 1
            if has_pred:
                p = int(preds[i])
                dst = slice(pred_offset, pred_offset + p)
                out[schema.MASK_POSITIONS][r, dst] = rows[schema.MASK_POSITIONS][i, :p] + offset
                out[schema.MASK_IDS][r, dst] = rows[schema.MASK_IDS][i, :p]
                out[schema.MASK_WEIGHTS][r, dst] = 1.0
                pred_offset += p
            for key in _INSTANCE:
                if key in rows:
                    out[key][r, k] = rows[key][i, 0]
            out[schema.CLS_POSITIONS][r, k] = offset
            out[schema.CLS_WEIGHTS][r, k] = 1.0
            offset += length
    return out


def pack_dataset(ds: tf.data.Dataset, *, seq_length: int, max_instances: int, max_predictions: int = 0,
                 window: int = 256, seed: int | None = None) -> tf.data.Dataset:
    """Unbatched parsed rows -> unbatched packed rows (see module docstring).

    Assumes real tokens are a prefix of each row (BERT rows are right-padded) and
    that predictions are the first `sum(mask_weights)` slots.
    """
    keys = sorted(ds.element_spec)
    dtypes = {k: ds.element_spec[k].dtype for k in keys}
    out_keys = [k for k in keys if k not in (schema.CLS_POSITIONS, schema.CLS_WEIGHTS)]
    out_keys += [schema.CLS_POSITIONS, schema.CLS_WEIGHTS]
    out_dtypes = [dtypes.get(k, tf.int32 if k == schema.CLS_POSITIONS else tf.float32) for k in out_keys]

    def run(window_index, *arrays):
        # A generator per window from (seed, window): the packing is a function of the input
        # alone, so tf.data can checkpoint the pipeline (a stateful py_func it cannot).
        rng = np.random.default_rng(None if seed is None else [seed, int(window_index)])
        packed = pack_window(dict(zip(keys, arrays, strict=False)), seq_length=seq_length, max_instances=max_instances,
                             max_predictions=max_predictions, rng=rng)
        return [packed[k].astype(d.as_numpy_dtype) for k, d in zip(out_keys, out_dtypes, strict=False)]

    def shape_of(key):
        if key in _PREDICTION:
            return [None, max_predictions]
        if key in _INSTANCE or key in (schema.CLS_POSITIONS, schema.CLS_WEIGHTS):
            return [None, max_instances]
        return [None, seq_length]

    def pack_batch(window_index, batch):
        arrays = tf.numpy_function(run, [window_index] + [batch[k] for k in keys], out_dtypes, stateful=seed is None)
        out = {}
        for key, arr in zip(out_keys, arrays, strict=False):
            arr.set_shape(shape_of(key))
            out[key] = arr
        return out

    return ds.batch(window).enumerate().map(pack_batch).unbatch()
