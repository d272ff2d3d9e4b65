"""Text normalization, defined once: what every tokenizer of bertpipe does to text before WordPiece.

The steps, in order (google-research/bert `BasicTokenizer`, as FastBertTokenizer applies it):

1. clean: control and format characters (Unicode Cc and Cf, NUL included) become a space;
2. lowercase (`data.lowercase`): full Unicode lower case, final sigma included ("ΟΔΟΣ" -> "οδος");
3. strip accents (`data.strip_accents`; unset: the same as `lowercase`, BERT's rule): NFD, then
   drop the nonspacing marks (Mn), so "Café" -> "Cafe".

Then pre-tokenization splits on whitespace, around punctuation (Unicode P* and the ASCII
symbols) and around CJK ideographs, and WordPiece splits each word into vocab pieces.

Implementations, all derived from a `Normalization` and the regexes below (RE2 and Oniguruma,
the regex engines of TensorFlow and of Hugging Face `tokenizers`, read them alike):

- `bert_keras.wordpiece_rust`: Hugging Face `tokenizers` (Rust), the data jobs' tokenizer and
  the vocab job's word splitter, so the data workers load no TensorFlow;
- `bert_keras.wordpiece`: TensorFlow ops + tf-text's FastBertTokenizer, in the training input
  and inside every exported SavedModel.

`tests/test_normalization.py` checks that both give the same ids on the shipped corpora and the
bad-input fixtures under every `lowercase` / `strip_accents` combination, and that a vocab
learned under a combination is made only of pieces that tokenization under it can produce.
"""

from __future__ import annotations

import dataclasses

# Step 1: every Cc/Cf character (NUL, U+0001..U+001F, U+007F..U+009F, soft hyphen, zero-width
# joiners, ...) becomes a space. FastBertTokenizer already treats them as separators; NUL is
# named here because ICU's NFD (step 3 in TensorFlow) ends a string at the first NUL.
CONTROL = r"[\p{Cc}\p{Cf}]"
# Step 3, after NFD: the combining marks that carry accents.
ACCENT = r"\p{Mn}"


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Which of the optional steps run (cleaning always does)."""

    lowercase: bool = True
    strip_accents: bool = True

    @classmethod
    def of(cls, lowercase: bool, strip_accents: bool | None = None) -> Normalization:
        """`strip_accents=None` follows `lowercase`: uncased BERT strips accents, cased BERT keeps them."""
        return cls(bool(lowercase), bool(lowercase) if strip_accents is None else bool(strip_accents))
