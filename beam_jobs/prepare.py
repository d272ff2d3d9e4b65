"""`bertpipe prepare`: raw documents -> sharded, masked pretraining TFRecords + manifest.

The pipeline, as labelled steps:

    Read -> SplitSentences -> Tokenize -> InstancesToRecords(donors, lexicon) -> WriteShards
    ReadForDonors -> SplitForDonors -> DonorCandidates -> DonorSample -> TokenizeDonors  (side input)

Logic lives in pure modules (`sentences`, `instances`, `masking`); the DoFns
here only wire them. Randomness is seeded per (seed, document content, copy),
so the same inputs give the same set of records on any number of workers. No
step holds more than one document and one tokenizer batch per worker (plus
the fixed-size donor pool), so memory does not grow with the corpus.
"""

from __future__ import annotations

import collections
import dataclasses
import random

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import corpus, instances, masking, sentences
from beam_jobs.shards import SHARDS, WriteShards, remove_parts_dir
from beam_jobs.tokenize import BATCH_SENTENCES, TokenizeDocumentsFn, tokenize_texts, vocab_info
from bert_keras.tokenizer import load_vocab, special_ids
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_directory
from pipeline.contract.config import DataConfig, PrepareConfig, to_dict
from pipeline.contract.errors import UserError

COUNTS = "bertpipe.counts"  # metrics namespace: instance/token/mask totals for the manifest
DONOR_POOL_SIZE = 20_000  # runs of sentences in the corpus-wide random-B sample (~10 MB of ids)


def split_document(text: str, line_breaks: str) -> tuple[bytes, list[str]]:
    return corpus.document_key(text), sentences.split_sentences(text, line_breaks)


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


def tokenize_lexicon(phrases: list[str], vocab: list[str], lowercase: bool, max_tokens: int):
    """Wordpiece ids of each phrase; entries longer than `max_tokens` could never be masked
    as one unit inside a segment, so they are dropped and counted. Returns (ids, too_long)."""
    from bert_keras.tokenizer import make_tokenizer

    ids = tokenize_texts(make_tokenizer(vocab, lowercase=lowercase), phrases)
    kept = [tuple(a.tolist()) for a in ids if 0 < a.size <= max_tokens]
    return kept, sum(1 for a in ids if a.size > max_tokens)


def load_lexicon(path: str, vocab: list[str], lowercase: bool, max_tokens: int):
    return tokenize_lexicon(read_lexicon(path), vocab, lowercase, max_tokens)


class _LexiconFn(beam.DoFn):
    """phrases -> their ids (a side input), tokenized once in a worker."""

    def __init__(self, vocab_file: str, lowercase: bool, max_tokens: int):
        self._vocab_file, self._lowercase, self._max = vocab_file, lowercase, max_tokens

    def process(self, phrases):
        kept, too_long = tokenize_lexicon(phrases, load_vocab(self._vocab_file), self._lowercase, self._max)
        if too_long:
            Metrics.counter(corpus.SKIPPED, "lexicon_entry_too_long").inc(too_long)
        yield kept


class _DonorsFn(beam.DoFn):
    """The sampled candidates (text) -> DonorPool of wordpiece ids, each distinct sentence tokenized once."""

    def __init__(self, vocab_file: str, lowercase: bool):
        self._vocab_file, self._lowercase = vocab_file, lowercase

    def process(self, candidates):
        from bert_keras.tokenizer import make_tokenizer

        tokenizer = make_tokenizer(load_vocab(self._vocab_file), lowercase=self._lowercase)
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
    """(doc key, tokenized sentences) -> (seed, serialized record) for every dupe copy.

    Instances are built, masked (static) or given word ids (dynamic) one at a
    time, then each copy of a document is encoded in one `serialize_batch` call:
    per-record protobuf building was the job's largest cost. Totals for the
    manifest are summed per bundle and flushed as counters.
    """

    def __init__(self, vocab_file: str, prepare: PrepareConfig, seed: int):
        self._vocab_file, self._prepare, self._seed = vocab_file, prepare, seed
        self._lexicon = None

    def setup(self):
        p = self._prepare
        self._vocab = vocab_info(load_vocab(self._vocab_file), self._vocab_file)
        self._spec = masking.MaskingSpec(
            mode=p.masking,
            masked_lm_prob=p.masked_lm_prob,
            max_predictions=p.max_predictions_per_seq,
            mask_id=self._vocab.mask,
            is_suffix=self._vocab.is_suffix,
            replace_ids=self._vocab.replace_ids,
            max_ngram=p.max_ngram,
        )
        self._kind = schema.PRETRAIN_DYNAMIC if p.dynamic else schema.PRETRAIN_STATIC
        self._shape = schema.shapes(self._kind, p.max_seq_length, 0 if p.dynamic else p.max_predictions_per_seq)

    def start_bundle(self):
        self._totals = collections.Counter()

    def process(self, item, donors, lexicon):
        if self._lexicon is None:  # side inputs are not available in setup
            self._lexicon = lexicon
            self._spec = dataclasses.replace(self._spec, lexicon=masking.lexicon_index(lexicon))
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
            if made:
                seeds = [instances.stable_int(seed, j) for j in range(len(made))]
                yield from zip(seeds, self._encode(made, seeds), strict=True)

    def _encode(self, made: list[instances.Instance], seeds: list[int]) -> list[bytes]:
        """The records of one document copy, as (records, seq) / (records, pred) arrays."""
        p, seq, pred = self._prepare, self._prepare.max_seq_length, self._prepare.max_predictions_per_seq
        n = len(made)
        tokens = np.zeros((n, seq), np.int64)
        segments = np.zeros((n, seq), np.int64)
        padding = np.zeros((n, seq), np.int64)
        values = {schema.TOKEN_IDS: tokens, schema.SEGMENT_IDS: segments, schema.PADDING_MASK: padding,
                  schema.NSP_LABEL: np.array([[int(x.is_random_next)] for x in made], np.int64)}  # fmt: skip
        if p.dynamic:
            values[schema.WORD_IDS] = word_ids = np.full((n, seq), -1, np.int64)
        else:
            values[schema.MASK_POSITIONS] = positions = np.zeros((n, pred), np.int64)
            values[schema.MASK_IDS] = labels = np.zeros((n, pred), np.int64)
            values[schema.MASK_WEIGHTS] = weights = np.zeros((n, pred), np.float32)
        t = self._totals
        for r, (inst, seed) in enumerate(zip(made, seeds, strict=True)):
            length = len(inst.tokens)
            maskable = instances.maskable_positions(inst)
            padding[r, :length] = 1
            segments[r] = instances.segment_ids(inst, seq)
            t["tokens"] += length
            t["maskable_tokens"] += int(maskable.sum())
            t["nsp_random"] += int(inst.is_random_next)
            if p.dynamic:
                units = masking.masking_units(inst.tokens, maskable, self._spec)
                tokens[r, :length] = inst.tokens
                word_ids[r, :length] = masking.word_ids(length, units)
                t["masking_units"] += len(units)
            else:
                m = masking.mask_tokens(inst.tokens, maskable, self._spec, random.Random(seed))
                k = len(m.positions)
                tokens[r, :length] = m.tokens
                positions[r, :k] = m.positions
                labels[r, :k] = m.labels
                weights[r, :k] = 1.0
                t["masked_tokens"] += k
                for kind, name in enumerate(("masked_as_mask", "masked_kept", "masked_random")):
                    t[name] += m.kinds.count(kind)
        t["instances"] += n
        return schema.serialize_batch(self._kind, values, self._shape)

    def finish_bundle(self):
        for name, value in self._totals.items():
            Metrics.counter(COUNTS, name).inc(value)


def build_pipeline(pipeline, files, data, prepare, vocab_file, seed, lexicon, out_dir):
    """Wire the steps onto `pipeline`; returns the PCollection of (shard name, count)."""
    max_chars = 6 * prepare.max_seq_length  # a donor run long enough for any segment B
    lexicon_ids = (
        pipeline
        | "Lexicon" >> beam.Create([lexicon])
        | "TokenizeLexicon" >> beam.ParDo(_LexiconFn(vocab_file, data.lowercase, prepare.max_seq_length - 3))
    )
    donors = (
        pipeline
        | "ReadForDonors" >> corpus.ReadDocuments(files, data, count=False)
        | "SplitForDonors" >> beam.Map(split_document, data.line_breaks)
        | "DonorCandidates" >> beam.FlatMap(lambda kv: instances.donor_candidates(kv[0], kv[1], max_chars))
        | "DonorSample" >> beam.combiners.Top.Of(DONOR_POOL_SIZE, key=lambda c: c[0], reverse=True)
        | "TokenizeDonors" >> beam.ParDo(_DonorsFn(vocab_file, data.lowercase))
    )
    return (
        pipeline
        | "Read" >> corpus.ReadDocuments(files, data)
        | "SplitSentences" >> beam.Map(split_document, data.line_breaks)
        | "Tokenize" >> beam.ParDo(TokenizeDocumentsFn(vocab_file, data.lowercase))
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
    lexicon: list[str] = []
    if prepare.masking == "entity":
        if not prepare.lexicon:
            raise UserError("prepare.masking is entity but prepare.lexicon is not set: give a lexicon file")
        lexicon = read_lexicon(prepare.lexicon)
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
