"""The tokenizers, built here only: BERT's WordPiece over a vocab file, with the project's normalization.

Two implementations of the same steps (`pipeline.contract.normalization`), with equal ids
(tests/test_normalization.py): `make_tokenizer`, tf-text's FastBertTokenizer in the graph
(fine-tuning data, the trainer, the exported SavedModel), and `make_rust_tokenizer`, Hugging
Face `tokenizers` (the pretraining data and vocab jobs, whose workers then load no TensorFlow).
"""

from __future__ import annotations

import dataclasses

from pipeline.contract.atomic import exists, is_remote, open_read
from pipeline.contract.errors import ContractError, UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
REQUIRED_TOKENS = (PAD, UNK, CLS, SEP, MASK)


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def load_vocab(path: str) -> list[str]:
    """Read a vocab file (one token a line, id = line number)."""
    if is_remote(path):  # gs://, s3://, ...: Beam's filesystems, the same ones the corpus is read with
        if not exists(path):
            raise UserError(f"vocab file {path} not found")
        with open_read(path) as fh:
            raw = fh.read()
    else:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError:
            raise UserError(f"vocab file {path} not found or not readable") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"vocab file {path} is not UTF-8 text") from None
    tokens = text.splitlines()
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise UserError(f"vocab file {path} is empty")
    return tokens


def special_ids(vocab: list[str], source: str = "vocab") -> SpecialIds:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK]; a vocab missing one is an error."""
    index = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in REQUIRED_TOKENS if t not in index]
    if missing:
        raise ContractError(f"{source} lacks {', '.join(missing)}: a BERT vocab needs {' '.join(REQUIRED_TOKENS)}")
    return SpecialIds(index[PAD], index[UNK], index[CLS], index[SEP], index[MASK])


def make_tokenizer(vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None):
    """The in-graph tokenizer: `bert_keras.wordpiece.WordPieceTokenizer` over `vocab` (a list of tokens).

    `strip_accents=None` follows `lowercase` (BERT's rule). Imported here on first use, so
    reading a vocab never loads TensorFlow (a Beam driver or a CLI that only checks a vocab stays small).
    """
    from bert_keras.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer(vocab, lowercase, strip_accents)


def make_rust_tokenizer(vocab: list[str], normalization):
    """The data jobs' tokenizer: `bert_keras.wordpiece_rust.RustWordPiece` (no TensorFlow);
    `normalization` is a `pipeline.contract.normalization.Normalization`."""
    from bert_keras.wordpiece_rust import RustWordPiece

    return RustWordPiece(vocab, normalization)
