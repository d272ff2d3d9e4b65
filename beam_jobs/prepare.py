"""`bertpipe prepare`: raw documents -> sharded, masked pretraining TFRecords + manifest.

The pipeline, as labelled steps:

    Read -> SplitSentences -> Tokenize -> InstancesToRecords(donors, lexicon) -> WriteShards
    ReadForDonors -> SplitForDonors -> DonorCandidates -> DonorSample -> TokenizeDonors  (side input)

Logic lives in pure modules (`sentences`, `instances`, `masking`, `records`);
the DoFns here only wire them. Randomness is seeded per (seed, document content,
copy), and each instance's masks by its own seed, so the same inputs give the
same set of records on any number of workers. No step holds more than one
document, one tokenizer batch and one batch of instances per worker (plus the
fixed-size donor pool), so memory does not grow with the corpus. The workers
tokenize with Hugging Face `tokenizers` and never load TensorFlow.
"""

from __future__ import annotations

import collections
import random

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import corpus, instances, masking, records, sentences
from beam_jobs.shards import SHARDS, WriteShards, remove_parts_dir
from beam_jobs.tokenize import BATCH_SENTENCES, TokenizeDocumentsFn, tokenize_texts, vocab_info
from bert_keras.tokenizer import load_vocab, make_rust_tokenizer, special_ids
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_directory
from pipeline.contract.config import DataConfig, PrepareConfig, to_dict
from pipeline.contract.errors import UserError
from pipeline.contract.masking import needs_lexicon
from pipeline.contract.normalization import Normalization

COUNTS = "bertpipe.counts"  # metrics namespace: instance/token/mask totals for the manifest
DONOR_POOL_SIZE = 20_000  # runs of sentences in the corpus-wide random-B sample (~10 MB of ids)
BATCH_INSTANCES = 2048  # instances masked and serialized together (~2 MB of arrays at seq 128)


def split_document(text: str) -> tuple[bytes, list[str]]:
    return corpus.document_key(text), sentences.split_sentences(text)


def read_lexicon(path: str) -> list[str]:
    """The phrases of a lexicon file (one a line, `#` comments); read without TensorFlow."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as fh:
            raw = fh.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"lexicon file {path} (prepare.lexicon) is not UTF-8 text") from None
    except Exception as err:  # Beam wraps filesystem errors in its own types
        raise UserError(f"cannot read lexicon file {path} (prepare.lexicon): {err}") from None
    phrases = [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not phrases:
        raise UserError(f"lexicon file {path} (prepare.lexicon) has no entries: one phrase a line")
    return phrases


def tokenize_lexicon(phrases: list[str], vocab: list[str], normalization: Normalization, max_tokens: int):
    """Wordpiece ids of each phrase; entries longer than `max_tokens` could never be masked
    as one unit inside a segment, so they are dropped and counted. Returns (ids, too_long)."""
    ids = tokenize_texts(make_rust_tokenizer(vocab, normalization), phrases)
    kept = [tuple(a.tolist()) for a in ids if 0 < a.size <= max_tokens]
    return kept, sum(1 for a in ids if a.size > max_tokens)


def load_lexicon(path: str, vocab: list[str], normalization: Normalization, max_tokens: int):
    return tokenize_lexicon(read_lexicon(path), vocab, normalization, max_tokens)


class _LexiconFn(beam.DoFn):
    """phrases -> their ids (a side input), tokenized once in a worker."""

    def __init__(self, vocab_file: str, normalization: Normalization, max_tokens: int):
        self._vocab_file, self._normalization, self._max = vocab_file, normalization, max_tokens

    def process(self, phrases):
        kept, too_long = tokenize_lexicon(phrases, load_vocab(self._vocab_file), self._normalization, self._max)
        if too_long:
            Metrics.counter(corpus.SKIPPED, "lexicon_entry_too_long").inc(too_long)
        yield kept


class _DonorsFn(beam.DoFn):
    """The sampled candidates (text) -> DonorPool of wordpiece ids, each distinct sentence tokenized once."""

    def __init__(self, vocab_file: str, normalization: Normalization):
        self._vocab_file, self._normalization = vocab_file, normalization

    def process(self, candidates):
        tokenizer = make_rust_tokenizer(load_vocab(self._vocab_file), self._normalization)
        # Runs start at every sentence, so each sentence is in several runs: tokenize each
        # distinct sentence once (same text, same ids) instead of ~5x the pool's text.
        unique = list(dict.fromkeys(s for _, _, run in candidates for s in run))
        ids = {}
        for start in range(0, len(unique), BATCH_SENTENCES):  # bounded batches, as the main path:
            batch = unique[start : start + BATCH_SENTENCES]  # one call on the whole pool cost +300 MB RSS
            ids.update(zip(batch, tokenize_texts(tokenizer, batch), strict=True))
        runs = [(doc, [ids[s] for s in run if ids[s].size]) for _, doc, run in candidates]
        yield instances.make_pool(runs)


class _RecordsFn(beam.DoFn):
    """(doc key, tokenized sentences) -> batches of (content hashes, serialized records) for WriteShards.

    Instances are built one document copy at a time (sequential over sentences, as BERT), then
    gathered across documents and encoded `BATCH_INSTANCES` at a time (`records.encode_instances`):
    per-instance Python in masking was the job's largest cost, and one Beam element per batch
    instead of per record saves Beam's per-element overhead. Totals for the manifest are summed
    per bundle and flushed as counters.
    """

    def __init__(self, vocab_file: str, prepare: PrepareConfig, seed: int):
        self._vocab_file, self._prepare, self._seed = vocab_file, prepare, seed
        self._lexicon = None

    def setup(self):
        self._vocab = vocab_info(load_vocab(self._vocab_file), self._vocab_file)
        self._spec = records.record_spec(self._prepare)

    def start_bundle(self):
        self._totals = collections.Counter()
        self._pending: list[instances.Instance] = []
        self._seeds: list[int] = []

    def process(self, item, donors, lexicon):
        if self._lexicon is None:  # side inputs are not available in setup
            self._lexicon = masking.lexicon_index(lexicon)
        key, doc = item
        if len(doc) < 2:  # no sentence boundary: no true next segment to learn from
            Metrics.counter(corpus.SKIPPED, "one_sentence_document").inc()
            return
        doc_hash = instances.stable_int(key)
        p = self._prepare
        for copy in range(p.dupe_factor):
            seed = instances.stable_int(self._seed, key, copy)
            made, dropped = instances.create_instances(
                doc, doc_hash, donors, p.max_seq_length, p.short_seq_prob,
                self._vocab.cls, self._vocab.sep, random.Random(seed),
            )  # fmt: skip
            if dropped:
                Metrics.counter(corpus.SKIPPED, "no_other_document_for_random_next").inc(dropped)
            self._pending += made
            self._seeds += [instances.stable_int(seed, j) for j in range(len(made))]  # masks' key and shard
        if len(self._pending) >= BATCH_INSTANCES:
            yield self._flush()

    def finish_bundle(self):
        if self._pending:
            yield WindowedValue(self._flush(), 0, [GlobalWindow()])
        for name, value in self._totals.items():
            Metrics.counter(COUNTS, name).inc(value)

    def _flush(self) -> tuple[np.ndarray, list[bytes]]:
        seeds = np.asarray(self._seeds, np.uint64)
        encoded = records.encode_instances(self._pending, seeds, self._spec, self._vocab, self._lexicon, self._totals)
        self._pending, self._seeds = [], []
        return seeds, encoded


def build_pipeline(pipeline, files, data, prepare, vocab_file, seed, lexicon, out_dir):
    """Wire the steps onto `pipeline`; returns the PCollection of (shard name, count)."""
    max_chars = 6 * prepare.max_seq_length  # a donor run long enough for any segment B
    lexicon_ids = (
        pipeline
        | "Lexicon" >> beam.Create([lexicon])
        | "TokenizeLexicon" >> beam.ParDo(_LexiconFn(vocab_file, data.normalization, prepare.max_seq_length - 3))
    )
    donors = (
        pipeline
        | "ReadForDonors" >> corpus.ReadDocuments(files, data, count=False)
        | "SplitForDonors" >> beam.Map(split_document)
        | "DonorCandidates" >> beam.FlatMap(lambda kv: instances.donor_candidates(kv[0], kv[1], max_chars))
        | "DonorSample" >> beam.combiners.Top.Of(DONOR_POOL_SIZE, key=lambda c: c[0], reverse=True)
        | "TokenizeDonors" >> beam.ParDo(_DonorsFn(vocab_file, data.normalization))
    )
    return (
        pipeline
        | "Read" >> corpus.ReadDocuments(files, data)
        | "SplitSentences" >> beam.Map(split_document)
        | "Tokenize" >> beam.ParDo(TokenizeDocumentsFn(vocab_file, data.normalization))
        | "InstancesToRecords"
        >> beam.ParDo(_RecordsFn(vocab_file, prepare, seed), donors=beam.pvalue.AsSingleton(donors),
                      lexicon=beam.pvalue.AsSingleton(lexicon_ids))  # fmt: skip
        | "WriteShards" >> WriteShards(out_dir, prepare.num_shards, prepare.compression)
    )


def _counts(totals: dict[str, int], seq_length: int) -> dict[str, float]:
    n = totals.get("instances", 0)
    counts = {k: float(v) for k, v in sorted(totals.items())}
    counts["padding_fraction"] = 1.0 - totals.get("tokens", 0) / (n * seq_length) if n else 0.0
    counts["nsp_random_fraction"] = totals.get("nsp_random", 0) / n if n else 0.0
    if "masked_tokens" in totals:
        counts["masked_rate"] = totals["masked_tokens"] / max(1, totals.get("maskable_tokens", 0))
    return counts


def prepare_pretraining_data(
    data: DataConfig,
    prepare: PrepareConfig,
    vocab_file: str,
    out_dir: str,
    seed: int,
) -> schema.DataManifest:
    """Run the prepare job (runner and options from `prepare.beam_args`); returns the manifest.

    The shards and manifest appear in `out_dir` only when the job succeeded:
    they are written to a temporary sibling directory and renamed into place.
    """
    files = corpus.expand_corpus(data.corpus)
    vocab = load_vocab(vocab_file)
    special_ids(vocab, f"vocab file {vocab_file}")  # a vocab without [MASK]/[CLS]/[SEP] stops here
    lexicon = read_lexicon(prepare.lexicon) if needs_lexicon(prepare.masking) else []  # PrepareConfig checked it is set
    kind = schema.PRETRAIN_DYNAMIC if prepare.dynamic else schema.PRETRAIN_STATIC
    with atomic_directory(out_dir) as tmp:
        pipeline = beam.Pipeline(options=PipelineOptions(list(prepare.beam_args)))
        build_pipeline(pipeline, files, data, prepare, vocab_file, seed, lexicon, tmp)
        result = pipeline.run()
        result.wait_until_finish()
        remove_parts_dir(tmp)
        skipped = corpus.query_counters(result, corpus.SKIPPED)
        totals = corpus.query_counters(result, COUNTS)
        totals.update({f"documents_{k}" if k != "documents_read" else k: v
                       for k, v in corpus.query_counters(result, corpus.NOTED).items()})  # fmt: skip
        shards = corpus.query_counters(result, SHARDS)
        manifest = schema.DataManifest(
            kind=kind,
            seq_length=prepare.max_seq_length,
            vocab_file=vocab_file,
            vocab_sha256=schema.file_sha256(vocab_file),
            vocab_size=len(vocab),
            shards=dict(sorted(shards.items())),
            max_predictions=0 if prepare.dynamic else prepare.max_predictions_per_seq,
            masking=prepare.masking,
            compression=prepare.compression,
            counts=_counts(totals, prepare.max_seq_length),
            skipped=dict(sorted(skipped.items())),
            config={"data": to_dict(data), "prepare": to_dict(prepare), "seed": seed, "files": len(files)},
        )
        schema.write_manifest(tmp, manifest)
    return manifest
