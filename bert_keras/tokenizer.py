"""The tokenizers, built here only: BERT's WordPiece over a vocab file, with the project's normalization,
or the byte-level BPE of a Hugging Face `tokenizer.json` (ModernBERT's), with the normalization it says.

Which one is the file's business, decided here once (`is_tokenizer_json`): a path ending in `.json` is a
tokenizer.json, anything else a WordPiece vocab.txt (one token a line). Every stage takes that one path
(`vocab.vocab_file`, or what an `hf:DIR` checkpoint brings: `checkpoint_vocab`) and asks here for:
- `load_vocab(path)`: the tokens by id (a tokenizer.json's added tokens included);
- `data_tokenizer(path, normalization)`: the data jobs' tokenizer, Hugging Face `tokenizers`, no
  TensorFlow (`bert_keras.wordpiece_rust.RustWordPiece` or `bert_keras.bpe.RustBytePair`);
- `serving_tokenizer(path, lowercase)`: the same ids in the graph, for exported SavedModels
  (`bert_keras.wordpiece.WordPieceTokenizer` or `bert_keras.bpe.BytePairTokenizer`).
The WordPiece pair has equal ids (tests/test_normalization.py), the BPE pair too (tests/test_bpe_tokenizer.py).
A tokenizer.json carries its own normalization, so `data.lowercase` and `data.strip_accents` do not apply to it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from pipeline.contract.atomic import exists, is_remote, open_read
from pipeline.contract.errors import ContractError, UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
VOCAB_TXT, TOKENIZER_JSON = "vocab.txt", "tokenizer.json"  # what a checkpoint directory may bring
REQUIRED_TOKENS = (PAD, UNK, CLS, SEP, MASK)


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def is_tokenizer_json(path: str) -> bool:
    """Whether `path` names a Hugging Face tokenizer.json (else a WordPiece vocab.txt)."""
    return str(path).endswith(".json")


def checkpoint_vocab(directory: str) -> str:
    """The tokenizer file an imported checkpoint directory brings: its vocab.txt (BERT's), else its
    tokenizer.json (ModernBERT's); the vocab.txt path when it has neither, so the error names it."""
    txt, js = os.path.join(directory, VOCAB_TXT), os.path.join(directory, TOKENIZER_JSON)
    return js if not exists(txt) and exists(js) else txt


def _read_bytes(path: str, what: str) -> bytes:
    if is_remote(path):  # gs://, s3://, ...: Beam's filesystems, the same ones the corpus is read with
        if not exists(path):
            raise UserError(f"{what} {path} not found")
        with open_read(path) as fh:
            return fh.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        raise UserError(f"{what} {path} not found or not readable") from None


def _tokenizer_json_tokens(path: str, raw: bytes) -> list[str]:
    try:
        spec = json.loads(raw)
        index = dict(spec["model"]["vocab"])
        index.update({t["content"]: t["id"] for t in spec.get("added_tokens") or []})
    except (ValueError, KeyError, TypeError):
        raise UserError(f"tokenizer file {path} is not a Hugging Face tokenizer.json with a model.vocab") from None
    if not index:
        raise UserError(f"tokenizer file {path} has an empty vocab")
    tokens = [""] * (max(index.values()) + 1)  # ids without a token stay "" (never produced)
    for token, i in index.items():
        tokens[i] = token
    return tokens


def load_vocab(path: str) -> list[str]:
    """The tokens by id of a vocab file (one token a line, id = line number) or a tokenizer.json."""
    if is_tokenizer_json(path):
        return _tokenizer_json_tokens(path, _read_bytes(path, "tokenizer file"))
    raw = _read_bytes(path, "vocab file")
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


def data_tokenizer(vocab_file: str, normalization):
    """The data jobs' tokenizer for the run's vocab or tokenizer file (`tokenize(texts)` -> int32 arrays)."""
    if is_tokenizer_json(vocab_file):
        from bert_keras.bpe import RustBytePair

        return RustBytePair(_local(vocab_file))
    return make_rust_tokenizer(load_vocab(vocab_file), normalization)


def serving_tokenizer(vocab_file: str, lowercase: bool = True, strip_accents: bool | None = None):
    """The in-graph tokenizer for the run's vocab or tokenizer file (`tokenize`, `tokenize_with_offsets`);
    the normalization applies to WordPiece (a tokenizer.json has its own)."""
    if is_tokenizer_json(vocab_file):
        from bert_keras.bpe import BytePairTokenizer

        return BytePairTokenizer(_local(vocab_file))
    return make_tokenizer(load_vocab(vocab_file), lowercase, strip_accents)


def _local(path: str) -> str:
    """A local copy of a remote tokenizer.json (the `tokenizers` reader opens local files only)."""
    if not is_remote(path):
        return path
    import tempfile

    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as fh:
        fh.write(_read_bytes(path, "tokenizer file"))
    return fh.name
