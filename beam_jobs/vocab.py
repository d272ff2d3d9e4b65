"""`bertpipe vocab`: count words with Beam, learn a BERT WordPiece vocab with tf-text's learner.

    Read -> Words -> CountWords -> Prune(cut-off) -> FormatCounts -> WriteCounts   (Beam, parallel)
    CountWords -> CountOfCounts -> CutOff  (the side input of Prune)
    counts -> wordpiece_tokenizer_learner_lib.learn -> vocab.txt                  (one process)

Word counting is the part that grows with the corpus, so it runs in Beam. The
number of distinct words grows with the corpus too (typos, numbers, names: tens
of millions on web text), so they are pruned in Beam before anything reaches
this process: words seen fewer than `vocab.min_count` times, and all but the
`vocab.max_words` most frequent. The cut-off is one count, found from the
histogram of counts (how many words were seen n times, a list as short as the
distinct counts), so words tied at the cut are kept or dropped together and the
kept set never depends on how words sort; the launcher reads at most
`max_words` pairs. Where the cut-off does not bite, the learner sees exactly
the counts it saw before. The vocab file is laid out for BERT:
[PAD]=0, [UNK], [CLS], [SEP], [MASK], [unused0..N-1], then the learned pieces
(`##` marks a continuation piece), and is written atomically.

The counts travel from the workers to this process as text files in a place
both reach (next to a remote `out_path`, or under `--temp_location`), so the
job runs on any Beam runner; the directory is removed afterwards.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import tempfile
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import corpus
from beam_jobs.options import new_pipeline, pipeline_options
from bert_keras.tokenizer import MASK, PAD, REQUIRED_TOKENS
from pipeline.contract.atomic import atomic_write_text, is_remote, join, open_read, remove_tree
from pipeline.contract.config import DataConfig, VocabConfig
from pipeline.contract.errors import UserError
from pipeline.contract.normalization import Normalization

VOCAB = "bertpipe.vocab"  # metrics namespace: distinct words and the count cut-off
_FLUSH = 200_000  # distinct keys a bundle counts before it emits them


@functools.lru_cache(maxsize=4)
def _splitter(normalization: Normalization):
    from bert_keras.wordpiece_rust import WordSplitter

    return WordSplitter(normalization)


def words(text: str, normalization: Normalization | None = None) -> list[str]:
    """The words WordPiece will see: the project's normalization and BERT's pre-tokenization,
    by the data jobs' tokenizer itself (`bert_keras.wordpiece_rust`), so every learned piece
    is one that tokenization can produce."""
    return _splitter(normalization or Normalization()).words(text)


def _learner():
    """tf-text's WordPiece learner, loaded from its file.

    It is pure Python (numpy and the standard library), but importing it as
    `tensorflow_text.tools...` runs `tensorflow_text/__init__`, which loads TensorFlow
    (3 s and ~900 MB). Loading the one file keeps the vocab job TensorFlow-free and the
    learned vocab unchanged. Hugging Face `tokenizers`' WordPieceTrainer was measured as the
    alternative (bench/bench_vocab_learner.py): it trains from text, not from counts, so the
    launcher would have to replay every word occurrence, and it gave more pieces per held-out word.
    """
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("tensorflow-text is not installed: it provides the WordPiece vocab learner")
    path = f"{spec.submodule_search_locations[0]}/tools/wordpiece_vocab/wordpiece_tokenizer_learner_lib.py"
    module_spec = importlib.util.spec_from_file_location("bertpipe_wordpiece_learner", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def reserved_tokens(num_unused: int) -> list[str]:
    return [PAD] + [t for t in REQUIRED_TOKENS if t != PAD] + [f"[unused{i}]" for i in range(num_unused)]


def learn_from_counts(counts: list[tuple[str, int]], vocab: VocabConfig) -> list[str]:
    """tf-text's WordPiece learner on (word, count) pairs; returns the full vocab list."""
    reserved = reserved_tokens(vocab.num_unused)
    learned = _learner().learn(
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


def _counts_dir(out_path: str, options: PipelineOptions) -> str:
    """Where the workers write the word counts: a place they and this process both reach.

    Next to a remote `out_path` (gs://, s3://, ...); else under the job's
    `--temp_location` when one is given (a remote runner with a local out_path);
    else a local temp dir, which only in-process and local-subprocess runners reach.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    name = f".tmp-wordcounts-{uuid.uuid4().hex[:12]}"
    if is_remote(out_path):
        return FileSystems.join(FileSystems.split(out_path)[0], name)
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        return join(temp_location, name)
    return tempfile.mkdtemp(prefix="bertpipe-wordcounts-")


def count_cutoff(histogram: list[tuple[int, int]], min_count: int, max_words: int) -> int:
    """The lowest count a kept word has: at least `min_count`, and high enough that at
    most `max_words` words reach it. `histogram` is [(count, words seen that often), ...]."""
    kept, cutoff = 0, None
    for count, n in sorted(histogram, reverse=True):
        if count < min_count or kept + n > max_words:
            break
        kept, cutoff = kept + n, count
    return cutoff if cutoff is not None else max(min_count, max((c for c, _ in histogram), default=0) + 1)


class _BundleCountsFn(beam.DoFn):
    """element -> (key, count) of the keys `keys_of(element)` yields, summed over a bundle.

    Beam's combiner lifting does the same per key, but pays Beam's per-element
    cost for every word first; a Counter per bundle (flushed at `_FLUSH` keys, so
    memory stays bounded) halves the job on a 2 M distinct-word corpus.
    """

    def __init__(self, keys_of):
        self._keys_of = keys_of

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        self._counts.update(self._keys_of(element))
        if len(self._counts) >= _FLUSH:
            yield from self._counts.items()
            self._counts = collections.Counter()

    def finish_bundle(self):
        for item in self._counts.items():
            yield WindowedValue(item, 0, [GlobalWindow()])
        self._counts = collections.Counter()


class _CutOffFn(beam.DoFn):
    def __init__(self, vocab: VocabConfig):
        self._min, self._max = vocab.min_count, vocab.max_words

    def process(self, histogram):
        cutoff = count_cutoff(histogram, self._min, self._max)
        Metrics.counter(VOCAB, "distinct_words").inc(sum(n for _, n in histogram))
        Metrics.counter(VOCAB, "count_cutoff").inc(cutoff)
        yield cutoff


def _read_counts(counts_dir: str) -> list[tuple[str, int]]:
    counts: list[tuple[str, int]] = []
    for meta in sorted(FileSystems.match([join(counts_dir, "counts*")])[0].metadata_list, key=lambda m: m.path):
        with open_read(meta.path) as fh:
            for line in fh.read().decode("utf-8").split("\n"):  # not splitlines: it also splits on \x1c, \u2028...
                if not line:
                    continue
                n, word = line.split("\t", 1)
                counts.append((word, int(n)))
    return counts


def learn_vocab(data: DataConfig, vocab: VocabConfig, out_path: str, beam_args: list[str]) -> dict:
    """Learn a vocab from the corpus and write it to `out_path` (a local path or any
    Beam filesystem path); returns stats for tracking."""
    files = corpus.match_corpus(data.corpus)
    options = pipeline_options(beam_args)
    counts_dir = _counts_dir(out_path, options)
    try:
        pipeline = new_pipeline(options)
        normalization = data.normalization
        counts = (
            pipeline
            | "Read" >> corpus.ReadDocuments(files, data)
            | "Words" >> beam.ParDo(_BundleCountsFn(lambda text: words(text, normalization)))
            | "CountWords" >> beam.CombinePerKey(sum)
        )
        cutoff = (
            counts
            | "CountOfCounts" >> beam.ParDo(_BundleCountsFn(lambda wc: (wc[1],)))
            | "WordsPerCount" >> beam.CombinePerKey(sum)
            | "Histogram" >> beam.combiners.ToList()
            | "CutOff" >> beam.ParDo(_CutOffFn(vocab))
        )
        _ = (
            counts
            | "PruneAndFormat" >> beam.FlatMap(lambda wc, least: [f"{wc[1]}\t{wc[0]}"] if wc[1] >= least else [],
                                               least=beam.pvalue.AsSingleton(cutoff))  # fmt: skip
            | "WriteCounts" >> beam.io.WriteToText(join(counts_dir, "counts"))
        )
        result = pipeline.run()
        result.wait_until_finish()
        skipped = corpus.query_counters(result, corpus.SKIPPED)
        noted = corpus.query_counters(result, corpus.NOTED)
        pruning = corpus.query_counters(result, VOCAB)
        counts = _read_counts(counts_dir)
    finally:
        remove_tree(counts_dir)
    if not counts and pruning.get("distinct_words"):
        raise UserError(
            f"vocab.min_count ({vocab.min_count}) / vocab.max_words ({vocab.max_words}) keep none of the "
            f"{pruning['distinct_words']} distinct words: lower min_count or raise max_words"
        )
    if not counts:
        raise UserError(
            f"no words found in data.corpus ({', '.join(data.corpus)}): every document was skipped {skipped}"
        )
    counts.sort(key=lambda wc: (-wc[1], wc[0]))  # deterministic input order for the learner
    tokens = learn_from_counts(counts, vocab)
    atomic_write_text(out_path, "\n".join(tokens) + "\n")
    return {
        "vocab_size": len(tokens),
        "distinct_words": pruning.get("distinct_words", len(counts)),
        "words_kept": len(counts),  # what reached this process: at most vocab.max_words
        "count_cutoff": pruning.get("count_cutoff", 1),
        "words": sum(n for _, n in counts),
        "documents": noted.get("documents_read", 0),
        "skipped": dict(sorted(skipped.items())),
    }
