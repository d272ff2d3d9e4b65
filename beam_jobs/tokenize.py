"""Batched wordpiece tokenization inside Beam workers, without TensorFlow.

The data jobs' tokenizer is `bert_keras.wordpiece_rust.RustWordPiece` (Hugging Face
`tokenizers` behind a chunk cache; ids equal the serving FastBertTokenizer's). One call per
few thousand sentences, batched across documents, so the per-call cost vanishes. The tokenizer
is built once per worker in `setup`.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from bert_keras.tokenizer import data_tokenizer, special_ids
from pipeline.contract.masking import replacement_ids
from pipeline.contract.normalization import Normalization

BATCH_SENTENCES = 4096  # sentences per tokenizer call


@dataclasses.dataclass(frozen=True)
class VocabInfo:
    size: int
    cls: int
    sep: int
    pad: int
    mask: int
    is_suffix: np.ndarray  # bool, (vocab,): token starts with "##"
    replace_ids: np.ndarray  # int32, (n,): ordinary tokens, the 10% random replacements


def vocab_info(vocab: list[str], source: str) -> VocabInfo:
    ids = special_ids(vocab, source)
    is_suffix = np.array([t.startswith("##") for t in vocab], dtype=bool)
    return VocabInfo(len(vocab), ids.cls, ids.sep, ids.pad, ids.mask, is_suffix, replacement_ids(vocab))


def tokenize_texts(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """One int32 id array per text, from a single call of either tokenizer (`bert_keras.tokenizer`)."""
    if not texts:
        return []
    ragged = tokenizer.tokenize(texts)
    if isinstance(ragged, list):  # RustWordPiece: already one array per text
        return ragged
    flat = ragged.flat_values.numpy().astype(np.int32)  # tf.RaggedTensor (batch, pieces)
    splits = ragged.row_splits.numpy()
    return [flat[splits[i] : splits[i + 1]] for i in range(len(texts))]


class TokenizeDocumentsFn(beam.DoFn):
    """(key, [sentence, ...]) -> (key, [int32 ids, ...]), empty sentences dropped.

    Documents are buffered until a batch is full, then tokenized together.
    """

    def __init__(self, vocab_file: str, normalization: Normalization):
        self._vocab_file, self._normalization = vocab_file, normalization

    def setup(self):
        self._tokenizer = data_tokenizer(self._vocab_file, self._normalization)

    def start_bundle(self):
        self._docs, self._count = [], 0

    def _flush(self):
        texts = [s for _, sentences in self._docs for s in sentences]
        pieces = iter(tokenize_texts(self._tokenizer, texts))
        out = []
        for key, sentences in self._docs:
            ids = [next(pieces) for _ in sentences]
            out.append((key, [a for a in ids if a.size]))
        self._docs, self._count = [], 0
        return out

    def process(self, item):
        self._docs.append(item)
        self._count += len(item[1])
        if self._count >= BATCH_SENTENCES:
            yield from self._flush()

    def finish_bundle(self):
        if self._docs:
            for item in self._flush():
                yield WindowedValue(item, 0, [GlobalWindow()])
