"""`bertpipe vocab`: count words with Beam, learn a BERT WordPiece vocab with tf-text.

    Read -> Words -> CountWords -> FormatCounts -> WriteCounts   (Beam, parallel)
    counts -> wordpiece_tokenizer_learner_lib.learn -> vocab.txt  (one process)

Word counting is the part that grows with the corpus, so it runs in Beam; the
learner only sees (word, count) pairs, whose number grows with the vocabulary
of the language, not with the corpus. The vocab file is laid out for BERT:
[PAD]=0, [UNK], [CLS], [SEP], [MASK], [unused0..N-1], then the learned pieces
(`##` marks a continuation piece), and is written atomically.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import unicodedata

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import corpus
from bert_keras.tokenizer import MASK, PAD, REQUIRED_TOKENS
from pipeline.atomic import atomic_write_text
from pipeline.config import DataConfig, VocabConfig
from pipeline.errors import UserError

# BERT's BasicTokenizer splits on whitespace and around every punctuation
# character; \w without "_" approximates that in one C-speed regex (BERT counts
# "_" as punctuation, hence it is a token of its own here too).
_WORDS = re.compile(r"[^\W_]+|[^\w\s]|_")


def normalize(text: str, lowercase: bool, strip_accents: bool) -> str:
    """The tokenizer's normalization (lower case, NFD, drop combining marks)."""
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text


def words(text: str, lowercase: bool = True, strip_accents: bool = True) -> list[str]:
    return _WORDS.findall(normalize(text, lowercase, strip_accents))


def reserved_tokens(num_unused: int) -> list[str]:
    return [PAD] + [t for t in REQUIRED_TOKENS if t != PAD] + [f"[unused{i}]" for i in range(num_unused)]


def learn_from_counts(counts: list[tuple[str, int]], vocab: VocabConfig) -> list[str]:
    """tf-text's WordPiece learner on (word, count) pairs; returns the full vocab list."""
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    reserved = reserved_tokens(vocab.num_unused)
    learned = learner.learn(
        counts,
        vocab_size=vocab.size,
        reserved_tokens=reserved,
        lower_thresh=vocab.lower_threshold,
        num_iterations=vocab.num_iterations,
        max_token_length=vocab.max_token_length,
    )
    # The learner puts reserved tokens first already; keep that order and drop repeats.
    out = list(reserved) + [t for t in learned if t not in set(reserved)]
    if out[0] != PAD or MASK not in out:
        raise UserError("the learned vocab lost its special tokens; report this as a bug")
    return out


def learn_vocab(data: DataConfig, vocab: VocabConfig, out_path: str, beam_args: list[str]) -> dict:
    """Learn a vocab from the corpus and write it to `out_path`; returns stats for tracking."""
    files = corpus.expand_corpus(data.corpus)
    with tempfile.TemporaryDirectory(prefix="bertpipe-wordcounts-") as tmp:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        _ = (
            pipeline
            | "Read" >> corpus.ReadDocuments(files, data)
            | "Words" >> beam.FlatMap(words, data.lowercase, data.strip_accents)
            | "CountWords" >> beam.combiners.Count.PerElement()
            | "FormatCounts" >> beam.MapTuple(lambda word, n: f"{n}\t{word}")
            | "WriteCounts" >> beam.io.WriteToText(os.path.join(tmp, "counts"))
        )
        result = pipeline.run()
        result.wait_until_finish()
        skipped = corpus.query_counters(result, corpus.SKIPPED)
        noted = corpus.query_counters(result, corpus.NOTED)
        counts: list[tuple[str, int]] = []
        for path in sorted(glob.glob(os.path.join(tmp, "counts*"))):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    n, word = line.rstrip("\n").split("\t", 1)
                    counts.append((word, int(n)))
    if not counts:
        raise UserError(f"no words found in data.corpus ({', '.join(data.corpus)}): every document was skipped {skipped}")
    counts.sort(key=lambda wc: (-wc[1], wc[0]))  # deterministic input order for the learner
    tokens = learn_from_counts(counts, vocab)
    atomic_write_text(out_path, "\n".join(tokens) + "\n")
    return {
        "vocab_size": len(tokens),
        "distinct_words": len(counts),
        "words": sum(n for _, n in counts),
        "documents": noted.get("documents_read", 0),
        "skipped": dict(sorted(skipped.items())),
    }
