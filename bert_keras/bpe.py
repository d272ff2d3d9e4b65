"""Byte-level BPE from a Hugging Face `tokenizer.json` (ModernBERT's, GPT-2's, RoBERTa's kind).

Two faces of one tokenizer file:
- `load_tokenizer_json(path)`: the `tokenizers.Tokenizer` itself (Rust, the reference), and
  `RustBytePair(path)` around it, the data jobs' tokenizer (`tokenize(texts)` -> int32 arrays);
- `BytePairTokenizer`: the same ids inside the TensorFlow graph, for exported SavedModels.
  keras-hub's `BytePairTokenizer` does the byte-level split and the merges (its TF path: GPT-2's
  pre-tokenization regex, the merge ranks, a cache of merged words); this module adds what a
  tokenizer.json says around it: the NFC normalizer, special tokens kept whole, and byte offsets
  into the original strings for extractive QA, the interface of `bert_keras.wordpiece`:
  `tokenize(strings)` -> ragged int64 (batch, pieces); `tokenize_with_offsets(strings)` -> ids,
  starts, ends, byte offsets [start, end) in the original strings.

Offsets: byte-level BPE tokens partition the normalized text's bytes, so a token's span is the
running sum of its byte lengths. They are mapped back to the original text per "cluster" (a
character and the combining marks after it, the unit NFC composes within), a token starting
inside a cluster starting at the cluster and one ending inside it ending with it, so a span
always cuts the original at character boundaries. As in `tokenizers`,
a post-processor that trims offsets (ByteLevel / RobertaProcessing with trim_offsets) leaves a
token's leading and trailing spaces out of its span; ModernBERT's (TemplateProcessing) keeps them.

Supported tokenizer.json layouts (anything else is a one-line error naming the key): model BPE
without dropout; normalizer null or NFC; pre_tokenizer ByteLevel with use_regex and no add_prefix_space.
keras-hub keeps merged words in a table that grows with the distinct words it sees (a serving
process's memory grows with its vocabulary of inputs, bounded by it).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_text as tf_text

from pipeline.contract.errors import UserError

_SPACE = "Ġ"  # the byte-level alphabet's character for byte 0x20


def load_tokenizer_json(path: str):
    """A `tokenizers.Tokenizer` from `path` (a tokenizer.json), with a one-line error when it is not one."""
    import tokenizers

    if not os.path.isfile(path):
        raise UserError(f"tokenizer file {path} not found")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise UserError(f"{path} is not a Hugging Face tokenizer.json ({str(err).splitlines()[0]})") from None


class RustBytePair:
    """The data jobs' tokenizer for a tokenizer.json: `tokenize(texts)` -> one int32 id array per
    text (no special tokens), as `beam_jobs.tokenize.tokenize_texts` takes it; `vocab` lists the
    tokens by id (added tokens included), for `bert_keras.tokenizer.special_ids`.

    Picklable by the file's text, so Beam workers need not see the file; the Rust tokenizer is
    built on first use in each worker.
    """

    def __init__(self, path: str):
        load_tokenizer_json(path)  # a one-line error now, not in a worker
        with open(path, encoding="utf-8") as fh:
            self.text = fh.read()
        self._tokenizer = None

    def __getstate__(self):
        return {"text": self.text}

    def __setstate__(self, state):
        self.text, self._tokenizer = state["text"], None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import tokenizers

            self._tokenizer = tokenizers.Tokenizer.from_str(self.text)
        return self._tokenizer

    @property
    def vocab(self) -> list[str]:
        index = self.tokenizer.get_vocab(with_added_tokens=True)
        tokens = [""] * (max(index.values()) + 1)
        for token, i in index.items():
            tokens[i] = token
        return tokens

    def tokenize(self, texts: list[str]):
        import numpy as np

        encoded = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encoded]

    # The fine-tuning data's interface (`bert_keras.tasks.base.PieceTokenizer`).
    def pieces(self, texts: list[str]):
        return self.tokenize(texts)

    def pieces_with_offsets(self, texts: list[str]):
        """(ids, char starts, char ends) per text: `tokenizers`' offsets, Python string indices, ends exclusive."""
        import numpy as np

        out = []
        for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            spans = np.asarray(e.offsets, np.int64).reshape(-1, 2)  # (pieces, 2)
            out.append((np.asarray(e.ids, np.int64), spans[:, 0], spans[:, 1]))
        return out


def _spec(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"tokenizer file {path} not found") from None
    except ValueError:
        raise UserError(f"{path} is not valid JSON") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        raise UserError(f"{path}: model.type must be BPE without dropout for the in-graph tokenizer")
    for key in ("ignore_merges", "continuing_subword_prefix", "end_of_word_suffix"):  # not GPT-2's BPE
        if model.get(key):
            raise UserError(f"{path}: model.{key} is set; the in-graph tokenizer implements GPT-2's byte-level BPE")
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise UserError(f"{path}: normalizer {normalizer!r} is not supported in-graph (null or NFC)")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise UserError(f"{path}: pre_tokenizer must be ByteLevel with use_regex and without add_prefix_space "
                        "for the in-graph tokenizer")
    return spec


def _offset_trimming(spec: dict) -> tuple[bool, bool]:
    """(trim, keep_first_space): whether the post-processor trims spaces off offsets (tokenizers'
    ByteLevel / RobertaProcessing with trim_offsets; the pre-tokenizer's own flag does not act on
    offsets), and whether its add_prefix_space keeps one leading space of the first token."""
    post = spec.get("post_processor") or {}
    for step in post.get("processors", []) if post.get("type") == "Sequence" else [post]:
        if step.get("type") in ("ByteLevel", "RobertaProcessing") and step.get("trim_offsets", True):
            return True, bool(step.get("add_prefix_space", True))
    return False, False


class BytePairTokenizer(tf.Module):
    """A tokenizer.json's byte-level BPE in the graph; a `tf.Module`, so a SavedModel carries it."""

    def __init__(self, path: str):
        super().__init__(name="byte_pair_tokenizer")
        import keras_hub

        spec = _spec(path)
        model = spec["model"]
        vocab = dict(model["vocab"])
        special = []
        for token in spec.get("added_tokens") or []:
            vocab[token["content"]] = token["id"]
            if token.get("special"):
                special.append(token["content"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # both tokenizers layouts
        self.nfc = (spec.get("normalizer") or {}).get("type") == "NFC"
        self.trim_offsets, self.keep_first_space = _offset_trimming(spec)
        self.vocab_size = max(vocab.values()) + 1
        self.special_ids = {t: vocab[t] for t in special}
        # String output: the pieces' byte lengths give the offsets; ids come from the same table.
        self.bpe = keras_hub.tokenizers.BytePairTokenizer(vocab, merges, unsplittable_tokens=special or None,
                                                          dtype="string", _allow_python_workflow=False)
        # Traced: called eagerly, keras-hub hands back Python lists instead of ragged tensors.
        self._merge = tf.function(self.bpe.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])

    def _normalize(self, strings):
        strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
        return tf_text.normalize_utf8(strings, "NFC") if self.nfc else strings

    def _pieces(self, normalized):
        return self._merge(normalized)  # ragged (batch, pieces) of byte-level strings

    def _ids(self, pieces):
        return tf.cast(self.bpe.token_to_id_map.lookup(pieces), tf.int64)

    def tokenize(self, strings):
        return self._ids(self._pieces(self._normalize(tf.convert_to_tensor(strings, dtype=tf.string))))

    def tokenize_with_offsets(self, strings):
        """Ids and byte offsets into the original strings.

        The text is normalized one cluster at a time, which is NFC of the whole text except
        where NFC joins two starters (Hangul conjoining jamo); there only the ids may differ
        from `tokenize`'s, and the offsets still match the ids returned here.
        """
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        strings = tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace")
        # (batch, clusters): each character with the combining marks after it, the unit NFC composes within.
        clusters = tf_text.regex_split(strings, r"\P{M}\p{M}*|\p{M}+", r"\P{M}\p{M}*|\p{M}+")
        normalized_clusters = clusters.with_flat_values(self._normalize(clusters.flat_values))
        pieces = self._pieces(tf.strings.reduce_join(normalized_clusters, axis=-1))
        lengths = tf.cast(tf.strings.length(pieces, unit="UTF8_CHAR"), tf.int64)  # one character per byte
        ends = tf.cumsum(lengths, axis=-1)
        starts = ends - lengths
        if self.trim_offsets:  # as tokenizers' ByteLevel post-processor (process_offsets)
            lead = tf.cast(tf.strings.length(tf.strings.regex_replace(pieces, "^(Ġ*).*$", "\\1"), "UTF8_CHAR"), tf.int64)
            trail = tf.cast(tf.strings.length(tf.strings.regex_replace(pieces, "^.*?(Ġ*)$", "\\1"), "UTF8_CHAR"),
                            tf.int64)
            if self.keep_first_space:  # the first token's single leading space stays (its add_prefix_space)
                first = tf.logical_or(tf.equal(tf.ragged.range(pieces.row_lengths()), 0), tf.equal(starts, 0))
                lead = tf.where(tf.logical_and(first, tf.equal(lead, 1)), tf.zeros_like(lead), lead)
            starts = tf.minimum(starts + lead, ends)
            ends = tf.maximum(ends - trail, starts)
        return self._ids(pieces), *_to_source(starts, ends, clusters, normalized_clusters)


def _to_source(starts, ends, clusters, normalized_clusters):
    """Byte offsets in the normalized text -> byte offsets in the original, through the clusters.

    A start inside a cluster moves to the cluster's start, an end inside one to its end; a start
    at the very end stays at the end (a sentinel cluster of length 0 closes every row).
    """
    def begins(parts):  # (batch, clusters + 1): each cluster's first byte, then the row's length
        lengths = tf.cast(tf.strings.length(parts), tf.int64)
        total = tf.reduce_sum(lengths, axis=-1, keepdims=True)
        return tf.concat([tf.cumsum(lengths, axis=-1, exclusive=True), total], axis=1)

    norm_begin = begins(normalized_clusters).to_tensor(default_value=tf.int64.max)
    source_begin = begins(clusters).to_tensor()
    source_end = tf.concat([source_begin[:, 1:], source_begin[:, -1:]], axis=1)  # (a padded slot is never hit)

    def back(offsets, is_end):
        dense = offsets.to_tensor()
        position = tf.maximum(dense - 1, 0) if is_end else dense
        idx = tf.maximum(tf.searchsorted(norm_begin, position, side="right") - 1, 0)  # the cluster holding it
        mapped = tf.gather(source_end if is_end else source_begin, idx, batch_dims=1)
        if is_end:  # an empty span at a cluster boundary ends where it starts
            mapped = tf.where(tf.equal(dense, 0), tf.zeros_like(mapped), mapped)  # (traced, a bare 0 is int32)
        return tf.RaggedTensor.from_tensor(mapped, lengths=offsets.row_lengths())

    return back(starts, is_end=False), back(ends, is_end=True)
