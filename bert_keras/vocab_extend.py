"""Extend a BERT vocabulary with domain tokens and resize a model's embeddings to match.

For continued pretraining on a new domain (legal, clinical, ...): words the
domain uses often but the vocab splits into many pieces become whole tokens.
New tokens first take the `[unusedN]` slots BERT reserves for exactly this
(ids and the embedding table stay as they are), and only then are appended.
Resizing keeps every existing embedding row and output bias; appended rows
start at the mean of the existing rows, so a new token begins as an "average"
word rather than a random vector with a random logit.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from pipeline.contract.errors import UserError

_UNUSED = re.compile(r"\[unused\d+\]")


@dataclasses.dataclass
class VocabExtension:
    vocab: list[str]
    filled_unused: list[str]  # took an [unusedN] slot
    appended: list[str]  # added at the end (ids >= the old size)
    skipped: dict[str, int]  # reason -> count: already present, contains whitespace, empty

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n) or "none"
        return (
            f"vocab extended to {len(self.vocab)} tokens: {len(self.filled_unused)} in [unused] slots, "
            f"{len(self.appended)} appended; skipped: {skipped}"
        )


def extend_vocab(vocab: list[str], new_tokens, lowercase: bool = True) -> VocabExtension:
    """Add `new_tokens` (whole words) to `vocab`: [unusedN] slots first, then appended.

    With `lowercase` (an uncased vocab) tokens are lower-cased, as the tokenizer
    lower-cases text before lookup; otherwise an added "Medicare" would never match.
    A token with whitespace cannot be one wordpiece and is skipped.
    """
    out = list(vocab)
    present = set(out)
    free = [i for i, tok in enumerate(out) if _UNUSED.fullmatch(tok)]
    filled, appended = [], []
    skipped = {"already present": 0, "contain whitespace": 0, "empty": 0}
    for raw in new_tokens:
        tok = raw.strip().lower() if lowercase else raw.strip()
        if not tok:
            skipped["empty"] += 1
        elif any(c.isspace() for c in tok):
            skipped["contain whitespace"] += 1
        elif tok in present:
            skipped["already present"] += 1
        else:
            present.add(tok)
            if free:
                out[free.pop(0)] = tok
                filled.append(tok)
            else:
                out.append(tok)
                appended.append(tok)
    return VocabExtension(out, filled, appended, skipped)


def write_vocab(path: str, vocab: list[str]) -> str:
    from pipeline.contract.atomic import atomic_write_text

    atomic_write_text(path, "".join(tok + "\n" for tok in vocab))
    return path


def resize_embeddings(model, vocab_size: int):
    """A copy of `model` (BertEncoder or BertPretrainingModel) with a `vocab_size` token table.

    Every existing row of the word embeddings (and of the MLM output bias) is
    kept at its id; new rows are the mean of the old ones. Shrinking is refused:
    it would drop trained rows.
    """
    from bert_keras.encoder import BertEncoder
    from bert_keras.pretraining_model import BertPretrainingModel
    from bert_keras.weights import assign_state, export_state

    encoder = model if isinstance(model, BertEncoder) else getattr(model, "encoder", None)
    if not isinstance(model, (BertEncoder, BertPretrainingModel)):
        raise UserError(f"resize the vocab of the encoder or pretraining model before building a {type(model).__name__}")
    old = encoder.vocab_size
    if vocab_size < old:
        raise UserError(f"new vocab has {vocab_size} tokens, fewer than the model's {old}: a vocab can only grow")
    state = export_state(model)
    extra = vocab_size - old
    table = state["embeddings.word_embeddings.weight"]  # (old, hidden)
    state["embeddings.word_embeddings.weight"] = np.concatenate([table, np.repeat(table.mean(0, keepdims=True), extra, 0)])
    if "cls.predictions.bias" in state:
        bias = state["cls.predictions.bias"]
        state["cls.predictions.bias"] = np.concatenate([bias, np.full(extra, bias.mean(), np.float32)])
    config = {**encoder.get_config(), "vocab_size": vocab_size}
    new_encoder = BertEncoder.from_config(config)
    new = new_encoder if isinstance(model, BertEncoder) else BertPretrainingModel(new_encoder)
    assign_state(new, state, "resized model")
    return new
