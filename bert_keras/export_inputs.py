"""In-graph model inputs for the exported SavedModels: trimming, packing, windows, length buckets.

All tf-text and tensor ops, traced into the serving signatures by
`bert_keras.export` and `bert_keras.export_qa`; each mirrors the training data's
Python packing (the data conversions in `bert_keras.tasks`), which the export tests check.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text

from pipeline.contract.schema import PADDING_MASK, SEGMENT_IDS, TOKEN_IDS


def pad_packed(ids, segments):
    """Ragged (batch, pieces) ids and segment ids -> int32 model inputs padded to the longest row."""
    # At least 1 column keeps an empty batch (or an all-empty one) well formed.
    longest = tf.reduce_max(tf.concat([ids.row_lengths(), tf.ones([1], tf.int64)], 0))
    token_ids, mask = tf_text.pad_model_inputs(ids, longest)
    segment_ids, _ = tf_text.pad_model_inputs(segments, longest)
    return {
        TOKEN_IDS: tf.cast(token_ids, tf.int32),
        SEGMENT_IDS: tf.cast(segment_ids, tf.int32),
        PADDING_MASK: tf.cast(mask, tf.int32),
    }


def pack_segments(segments, special, max_seq_length: int):
    """[CLS] A [SEP] (B [SEP]) from ragged wordpiece ids, trimmed to fit `max_seq_length`.

    RoundRobinTrimmer takes one piece from each segment in turn until the budget
    is spent: exactly google-research/bert's `_truncate_seq_pair` (pop from the
    longer side, from B on ties) and Hugging Face's longest_first; one segment
    is simply truncated.
    """
    budget = max_seq_length - 1 - len(segments)  # [CLS] plus one [SEP] per segment
    trimmed = tf_text.RoundRobinTrimmer(budget).trim(segments)
    ids, segment_ids = tf_text.combine_segments(trimmed, special.cls, special.sep)
    return pad_packed(ids, segment_ids)


def sliding_windows(tokens, window, stride, max_windows: int | None = None):
    """Split each row of ragged `tokens` (batch, pieces) into windows `stride` apart.

    `window` and `stride` are scalars or (batch,) tensors (QA: the room the
    question leaves). Windows start at 0, stride, 2*stride, ... until one reaches
    the row's end (google-research/bert run_squad.py's doc spans, the windows of
    `bert_keras.tasks.qa` and `long_document`); an empty row gets one empty window;
    `max_windows` keeps the first ones. Written with ragged index maths
    rather than `tf_text.sliding_window` because window and count vary per row.
    Returns (pieces ragged (num_windows, <=window), doc (num_windows,) row of each
    window, starts (num_windows,) first piece index in its row, counts (batch,)).
    """
    lengths = tokens.row_lengths()  # (batch,)
    window = tf.broadcast_to(tf.cast(window, tf.int64), tf.shape(lengths))
    stride = tf.broadcast_to(tf.cast(stride, tf.int64), tf.shape(lengths))
    counts = 1 + (tf.maximum(lengths - window, 0) + stride - 1) // stride
    if max_windows:
        counts = tf.minimum(counts, max_windows)
    doc = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int64)), counts)  # (num_windows,)
    starts = tf.ragged.range(counts).flat_values * tf.gather(stride, doc)
    ends = tf.minimum(starts + tf.gather(window, doc), tf.gather(lengths, doc))
    base = tf.gather(tokens.row_starts(), doc)  # offset of each window's row in flat_values
    pieces = tf.gather(tokens.flat_values, tf.ragged.range(base + starts, base + ends))
    return pieces, doc, starts, counts


# Batches of at least BUCKET_MIN_BATCH rows run as BUCKETS slices of rows of similar
# length, each cut to its own longest row: short texts (reviews: 25 pieces on
# average, 60 for the longest of 32) then stop paying for the batch's longest one.
BUCKETS, BUCKET_MIN_BATCH = 4, 16


def length_bucketed(run, features):
    """run(features) -> (batch, ...) tensors, computed on length-sorted slices and put back in order."""
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(features[PADDING_MASK], 0), tf.int32), axis=1)  # (batch,)
    batch = tf.shape(lengths)[0]

    def sliced():
        order = tf.argsort(lengths, stable=True)
        outs = []
        for i in range(BUCKETS):  # every slice is non-empty: batch >= BUCKET_MIN_BATCH >= BUCKETS
            rows = order[batch * i // BUCKETS : batch * (i + 1) // BUCKETS]
            width = tf.reduce_max(tf.gather(lengths, rows))
            outs.append(run({k: tf.gather(v, rows)[:, :width] for k, v in features.items()}))
        merged = tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *outs)
        back = tf.math.invert_permutation(order)
        return tf.nest.map_structure(lambda t: tf.gather(t, back), merged)

    return tf.cond(batch >= BUCKET_MIN_BATCH, sliced, lambda: run(features))


def length_buckets(max_seq_length: int, smallest: int = 16) -> list[int]:
    """Row widths a compiled model sees: 16, 32, 64, ... up to max_seq_length (always the last one)."""
    out, width = [], smallest
    while width < max_seq_length:
        out.append(width)
        width *= 2
    return out + [max_seq_length]


def pad_to_bucket(features, buckets: list[int]):
    """Pad (batch, width) inputs with zeros to the smallest bucket >= width: an XLA-compiled model then
    compiles one program per (batch, bucket), at most len(buckets) per batch size, instead of one per width."""
    width = tf.shape(features[PADDING_MASK])[1]
    sizes = tf.constant(buckets, tf.int32)
    target = tf.reduce_min(tf.boolean_mask(sizes, sizes >= width))
    return {k: tf.pad(v, [[0, 0], [0, target - width]]) for k, v in features.items()}
