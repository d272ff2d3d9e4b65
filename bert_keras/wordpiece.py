"""WordPiece tokenization in the graph: the project's normalization in front of tf-text's FastBertTokenizer.

Built through `bert_keras.tokenizer.make_tokenizer`, the one entry point every stage uses. The
normalization steps are defined once in `pipeline.contract.normalization`; the data jobs' Rust
tokenizer (`bert_keras.wordpiece_rust`) implements the same steps and gives the same ids.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tf_text

from bert_keras.tokenizer import UNK
from pipeline.contract.normalization import ACCENT, CONTROL, Normalization


def normalize(strings, normalization: Normalization):
    """`pipeline.contract.normalization`'s steps, in-graph (Google BERT / Hugging Face BasicTokenizer).

    FastBertTokenizer's built-in `lower_case_nfd_strip_accents` also applies
    compatibility decomposition (NFKC-style case folding), so "½" becomes
    "1⁄2" and "…" becomes "...", which the reference tokenizer keeps as single
    vocab tokens ("½" is id 1092 in bert-base-uncased). Measured on the shipped
    sotu sample: 7 of 8,568 sentences differ with it; 0 with these steps.
    Invalid UTF-8 bytes become U+FFFD first, so no input can make the graph fail,
    and control characters become spaces before NFD, which ends a string at a NUL.
    """
    strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
    strings = tf.strings.regex_replace(strings, CONTROL, " ")
    if normalization.lowercase:
        strings = tf.strings.lower(strings, encoding="utf-8")
    if normalization.strip_accents:
        strings = tf_text.normalize_utf8(strings, "NFD")
        strings = tf.strings.regex_replace(strings, ACCENT, "")
    return strings


class WordPieceTokenizer(tf.Module):
    """FastBertTokenizer behind the project's normalization: ids identical to Hugging Face's BertTokenizer.

    A `tf.Module`, so an exported SavedModel carries it (and its vocab) inside the graph.
    `tokenize(strings)` -> ragged int64 ids (batch, pieces).
    `tokenize_with_offsets(strings)` -> ids plus byte offsets [start, end) of each piece
    in the ORIGINAL strings (not the normalized ones), for mapping answers back to text.
    """

    def __init__(self, vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None):
        super().__init__(name="wordpiece_tokenizer")
        self.normalization = Normalization.of(lowercase, strip_accents)
        self.lowercase = self.normalization.lowercase
        self.fast = tf_text.FastBertTokenizer(
            vocab=vocab,
            suffix_indicator="##",
            max_bytes_per_word=100,
            token_out_type=tf.int64,
            unknown_token=UNK,
            no_pretokenization=False,
            support_detokenization=False,
            lower_case_nfd_strip_accents=False,  # `normalize` does it, the reference way
        )

    def tokenize(self, strings):
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        return self.fast.tokenize(normalize(strings, self.normalization))

    def tokenize_with_offsets(self, strings):
        """Normalize character by character, so each normalized byte maps back to its source character.

        Every normalization step acts on one character at a time, so normalizing each
        character alone and joining gives the same
        string as normalizing the whole (one exception: a word-final capital sigma
        lower-cases to "σ" here, to "ς" in `tokenize`); the per-character lengths then map a
        byte offset in the normalized text to the character it came from.
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        # (batch, chars): code points and their byte starts in the original strings.
        codepoints, starts = tf.strings.unicode_decode_with_offsets(strings, "UTF-8", errors="replace")
        char_strings = tf.strings.unicode_encode(tf.expand_dims(codepoints.flat_values, -1), "UTF-8")
        char_strings = normalize(char_strings, self.normalization)
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
