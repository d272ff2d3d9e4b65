"""Extractive QA inside the exported graph: windows, model, best span, characters.

A (question, context) batch becomes every window of every context
(google-research/bert run_squad.py's doc spans: `doc_stride` apart, each
`max_seq_length - 3 - question pieces` long), the model scores all windows in
one call, and the best span is stitched back per example:
- a start token counts only in the window where it has the most context on
  both sides (BERT's `_check_is_max_context`, earliest window on ties);
- spans end at or after their start and are at most `max_answer_length` pieces;
- the score is start_logit + end_logit; with `allow_no_answer` (SQuAD 2.0) the
  answer is "" when the [CLS] null score (lowest over windows, as BERT) beats it;
  an empty answer reports the null score. This is `bert_keras.qa_postprocess`
  with the exact best span instead of BERT's top-20 starts x top-20 ends
  shortcut (the same span whenever it is among those, i.e. nearly always).
The answer is the context's bytes between the chosen pieces' offsets
(FastBertTokenizer.tokenize_with_offsets gives byte offsets into the raw
string); start_char / end_char count Unicode code points, i.e. Python string
indices, end exclusive. No span (an empty context) gives "" and -1 offsets.

Written with tensor ops rather than tf-text because no tf-text op decodes spans;
every step is vectorized over (windows, pieces) so one graph serves any batch.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text

from bert_keras.export_inputs import pad_packed, sliding_windows

ANSWER_OUT, SCORE_OUT, START_CHAR_OUT, END_CHAR_OUT = "answer", "score", "start_char", "end_char"
_NEG = -1.0e30  # "no span here"; far below any real logit sum


def _chars_before(text, byte_offset):
    """Code points in text[:byte_offset]; invalid UTF-8 bytes count one each (Python's errors="replace")."""
    prefix = tf.strings.substr(text, tf.zeros_like(byte_offset), byte_offset, unit="BYTE")
    prefix = tf.strings.unicode_transcode(prefix, "UTF-8", "UTF-8", errors="replace")
    return tf.cast(tf.strings.length(prefix, unit="UTF8_CHAR"), tf.int64)


def _max_context(window_len, starts, doc, row_starts, num_tokens, width):
    """(num_windows, width) bool: piece j of window w is in its max-context window."""
    j = tf.range(width, dtype=tf.int64)[None, :]  # (1, width)
    valid = j < window_len[:, None]
    # BERT's score: min(left context, right context) + 0.01 * window length.
    score = tf.cast(tf.minimum(j, window_len[:, None] - 1 - j), tf.float32) + 0.01 * tf.cast(window_len, tf.float32)[
        :, None
    ]
    # Global piece id across the batch; invalid slots go to a spare segment `num_tokens`.
    token = tf.where(valid, tf.gather(row_starts, doc)[:, None] + starts[:, None] + j, num_tokens)
    best = tf.math.unsorted_segment_max(score, token, num_tokens + 1)
    is_best = score >= tf.gather(best, token)
    window = tf.broadcast_to(tf.range(tf.size(doc, out_type=tf.int64))[:, None], tf.shape(token))
    big = tf.constant(2**62, tf.int64)
    first = tf.math.unsorted_segment_min(tf.where(is_best, window, big), token, num_tokens + 1)
    return valid & tf.equal(window, tf.gather(first, token))


def answer_spans(
    tokenizer,
    special,
    run_model,
    question,
    context,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    max_answer_length: int,
    allow_no_answer: bool,
):
    """(batch,) questions and contexts -> {answer, score, start_char, end_char}, each (batch,)."""
    q = tokenizer.tokenize(question)[:, :max_query_length]  # ragged (batch, q)
    ctx, byte_starts, byte_ends = tokenizer.tokenize_with_offsets(context)  # ragged (batch, c) each
    q_len = q.row_lengths()
    room = max_seq_length - 3 - q_len  # (batch,) context pieces per window
    # BERT advances by min(window, doc_stride), so a stride above the room never skips pieces.
    pieces, doc, starts, counts = sliding_windows(ctx, room, tf.minimum(room, doc_stride))

    # ---- run the model on every window: [CLS] question [SEP] window [SEP]
    ids, segment_ids = tf_text.combine_segments([tf.gather(q, doc), pieces], special.cls, special.sep)
    start_logits, end_logits = run_model(pad_packed(ids, segment_ids))  # each (num_windows, seq)
    start_logits, end_logits = tf.cast(start_logits, tf.float32), tf.cast(end_logits, tf.float32)

    # ---- context logits per window: piece j sits at packed position q_len + 2 + j
    window_len = pieces.row_lengths()  # (num_windows,)
    width = tf.reduce_max(tf.concat([window_len, tf.ones([1], tf.int64)], 0))
    j = tf.range(width, dtype=tf.int64)[None, :]
    last = tf.cast(tf.shape(start_logits)[1] - 1, tf.int64)
    position = tf.minimum(tf.gather(q_len, doc)[:, None] + 2 + j, last)  # (num_windows, width)
    s = tf.gather(start_logits, position, batch_dims=1)
    e = tf.gather(end_logits, position, batch_dims=1)
    max_ctx = _max_context(window_len, starts, doc, ctx.row_starts(), tf.size(ctx.flat_values, tf.int64), width)
    valid = j < window_len[:, None]

    # ---- every (start, end) pair of a window: (num_windows, width, width)
    length = j[:, None, :] - j[:, :, None]  # end - start
    ok = max_ctx[:, :, None] & valid[:, None, :] & (length >= 0) & (length < max_answer_length)
    span = tf.where(ok, s[:, :, None] + e[:, None, :], _NEG)
    flat = tf.reshape(span, [tf.shape(span)[0], -1])  # (num_windows, width*width)
    window_best = tf.reduce_max(flat, axis=1)  # (num_windows,); empty windows: _NEG
    window_arg = tf.argmax(flat, axis=1)

    # ---- best window per example (its windows are consecutive)
    per_example = tf.RaggedTensor.from_row_lengths(window_best, counts).to_tensor(default_value=_NEG)
    w = tf.ragged.range(counts).row_starts() + tf.argmax(per_example, axis=1)  # (batch,) window index
    score = tf.gather(window_best, w)
    arg = tf.gather(window_arg, w)
    first_piece = tf.gather(starts, w) + arg // width  # piece index in the context row
    last_piece = tf.gather(starts, w) + arg % width
    found = score > _NEG / 2
    # Null score: [CLS] start + end, the lowest over the example's windows (BERT, qa_postprocess).
    null = tf.math.unsorted_segment_min(start_logits[:, 0] + end_logits[:, 0], doc, tf.size(counts, tf.int64))
    if allow_no_answer:
        found &= ~(null > score)
    score = tf.where(found, score, null)

    # ---- pieces -> bytes -> characters
    row = ctx.row_starts()
    safe = tf.maximum(tf.size(byte_starts.flat_values, tf.int64) - 1, 0)
    flat_starts = tf.concat([byte_starts.flat_values, tf.zeros([1], tf.int64)], 0)  # a spare 0 for "not found"
    flat_ends = tf.concat([byte_ends.flat_values, tf.zeros([1], tf.int64)], 0)
    begin = tf.where(found, tf.gather(flat_starts, tf.minimum(row + first_piece, safe)), 0)
    end = tf.where(found, tf.gather(flat_ends, tf.minimum(row + last_piece, safe)), 0)
    answer = tf.strings.substr(context, begin, end - begin, unit="BYTE")
    start_char = tf.where(found, _chars_before(context, begin), -1)
    end_char = tf.where(found, _chars_before(context, end), -1)
    return {ANSWER_OUT: answer, SCORE_OUT: score, START_CHAR_OUT: start_char, END_CHAR_OUT: end_char}
