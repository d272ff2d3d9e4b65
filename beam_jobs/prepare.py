"""`bertpipe prepare`: raw documents -> sharded, masked pretraining TFRecords + manifest.

The pipeline, as labelled steps (one read of the corpus):

    Read -> SplitSentences -> Tokenize -> PlanInstances -+-> (ready instances) ------------------+
                                                        +-> (requests, donor runs) -> GroupDonors  |
                                                              -> MatchDonors -> (random-next) ---+-> EncodeRecords -> WriteShards
    and the same, from the held-out documents, into holdout/ (masked at 15%, whole words).

Logic lives in pure modules (`sentences`, `instances`, `donors`, `masking`, `records`);
the DoFns here only wire them. Randomness is seeded per (seed, document
content, copy), so the same inputs give the same set of records on any number
of workers. No step holds more than one document and one tokenizer batch per
worker, or one donor bucket (`donors.py`), so memory does not grow with the corpus. The workers
tokenize with Hugging Face `tokenizers` and never load TensorFlow; each instance's
masks come from its own seed, so how instances are batched never changes a record.

Held-out split (`prepare.holdout_fraction`): documents whose content hash falls
in the fraction (independent of the seed, so every run holds out the same
documents) never reach the training shards, not even as a random B. They are
written once, statically masked at `HOLDOUT_MASKED_LM_PROB` with whole-word
masking whatever the training data's masking, as a complete data directory of
its own (`holdout/`, with its manifest): runs with different masking rates, or
static against dynamic masking, evaluate the same held-out MLM loss.
"""

from __future__ import annotations

import collections
import random

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import corpus, donors, instances, masking, records, sentences
from beam_jobs.options import new_pipeline, pipeline_options
from beam_jobs.shards import SHARDS, WriteShards, remove_parts_dir, remove_tree
from beam_jobs.tokenize import TokenizeDocumentsFn, tokenize_texts, vocab_info
from bert_keras.tokenizer import data_tokenizer, load_vocab, make_rust_tokenizer, special_ids
from pipeline.contract import schema
from pipeline.contract.atomic import atomic_directory, join
from pipeline.contract.config import DataConfig, PrepareConfig, to_dict
from pipeline.contract.errors import UserError
from pipeline.contract.masking import default_max_predictions, needs_lexicon
from pipeline.contract.normalization import Normalization

COUNTS = "bertpipe.counts"  # metrics namespace: instance/token/mask totals for the manifest
HOLDOUT_COUNTS = "bertpipe.holdout_counts"  # the same for the held-out split
HOLDOUT_SHARDS = "bertpipe.holdout_shards"
HOLDOUT_DIR = "holdout"  # relative to the data directory; it holds its own manifest.json
DONORS_DIR = ".donors"  # the donor join's part files while the job runs
HOLDOUT_MASKED_LM_PROB = 0.15  # BERT's rate: held-out loss compares across training rates up to 0.4
HOLDOUT_MASKING = "whole_word"
TRAIN, HOLDOUT, DONORS = "train", "holdout", "donors"  # PlanInstances / MatchDonors outputs
_SPLITS = (TRAIN, HOLDOUT)
_GZIP_RATIO = 3  # text bytes per .gz byte, for sizing donor buckets
BATCH_INSTANCES = 2048  # instances masked and serialized together (~2 MB of arrays at seq 128)
COPY_GROUP_TOKENS = 1 << 21  # document tokens x dupe copies whose instances are built together


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


def tokenize_lexicon(phrases: list[str], tokenizer, max_tokens: int):
    """Token ids of each phrase (`tokenizer`: the data jobs' one); entries longer than `max_tokens` could
    never be masked as one unit inside a segment, so they are dropped and counted. Returns (ids, too_long)."""
    ids = tokenize_texts(tokenizer, phrases)
    kept = [tuple(a.tolist()) for a in ids if 0 < a.size <= max_tokens]
    return kept, sum(1 for a in ids if a.size > max_tokens)


def load_lexicon(path: str, vocab: list[str], normalization: Normalization, max_tokens: int):
    return tokenize_lexicon(read_lexicon(path), make_rust_tokenizer(vocab, normalization), max_tokens)


class _LexiconFn(beam.DoFn):
    """phrases -> their ids (a side input), tokenized once in a worker."""

    def __init__(self, vocab_file: str, normalization: Normalization, max_tokens: int):
        self._vocab_file, self._normalization, self._max = vocab_file, normalization, max_tokens

    def process(self, phrases):
        kept, too_long = tokenize_lexicon(phrases, data_tokenizer(self._vocab_file, self._normalization), self._max)
        if too_long:
            Metrics.counter(corpus.SKIPPED, "lexicon_entry_too_long").inc(too_long)
        yield kept


def is_holdout(doc_key: bytes, fraction: float) -> bool:
    """Is this document held out? A hash of its content alone: the same documents for
    every seed and run, and identical copies of a document on the same side."""
    return fraction > 0 and instances.stable_int(b"holdout", doc_key) < fraction * 2**64


def holdout_config(prepare: PrepareConfig) -> PrepareConfig:
    """The held-out split's masking: static, whole words, at BERT's rate, whatever training uses."""
    return prepare.model_copy(update={
        "masking": HOLDOUT_MASKING, "masked_lm_prob": HOLDOUT_MASKED_LM_PROB, "dynamic": False, "lexicon": None,
        "max_predictions_per_seq": default_max_predictions(prepare.max_seq_length, HOLDOUT_MASKED_LM_PROB), "dupe_factor": 1,
    })  # fmt: skip


class _PlanFn(beam.DoFn):
    """(doc key, tokenized sentences) -> an `instances.Instances` batch of a document's ready
    instances (all its dupe copies), tagged by split; its donor requests and runs, packed per
    (split, bucket), go to the bundle's part files, named per (split, bucket) in `DONORS`."""

    def __init__(self, vocab_file: str, prepare: PrepareConfig, seed: int, buckets: tuple[int, int],
                 holdout_fraction: float, donors_dir: str):  # fmt: skip
        self._vocab_file, self._prepare, self._seed = vocab_file, prepare, seed
        self._buckets, self._fraction, self._donors_dir = buckets, holdout_fraction, donors_dir

    def setup(self):
        self._vocab = vocab_info(load_vocab(self._vocab_file), self._vocab_file)
        self._wide = self._vocab.size > 2**16  # ids packed as uint16 when they fit

    def start_bundle(self):
        self._parts = donors.DonorParts(self._donors_dir)

    def finish_bundle(self):
        yield from self._parts.close_as(DONORS)

    def process(self, item):
        key, doc = item
        p, v = self._prepare, self._vocab
        split = HOLDOUT if is_holdout(key, self._fraction) else TRAIN
        namespace = HOLDOUT_COUNTS if split == HOLDOUT else COUNTS
        Metrics.counter(namespace, "documents").inc()
        Metrics.counter(namespace, "sentences").inc(len(doc))
        nsp = p.objective == "mlm_nsp"
        if nsp and len(doc) < 2:  # no sentence boundary: no true next segment to learn from
            Metrics.counter(corpus.SKIPPED, "one_sentence_document").inc()
            return
        lengths = [len(s) for s in doc]
        flat = np.concatenate(doc) if doc else np.zeros(0, np.int32)
        bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        copies = 1 if split == HOLDOUT else p.dupe_factor
        # BERT's loop runs per copy; the array work after it runs once for a group of copies (numpy
        # calls per copy were most of the cost on short documents), the group at most
        # COPY_GROUP_TOKENS tokens of copies, so a huge document's copies are not all held at once.
        group = max(1, COPY_GROUP_TOKENS // max(1, len(flat)))
        plans, item_seeds, run_starts, run_seeds = [], [], [], []
        for copy in range(copies):
            copy_seed = instances.stable_int(self._seed, key, copy)
            rng = random.Random(copy_seed)
            if not nsp:
                windows = instances.mlm_windows(doc, p.max_seq_length, p.short_seq_prob, v.is_suffix, rng, copy_seed)
                if len(windows):
                    yield TaggedOutput(split, windows)
                continue
            plan = instances.plan_instances(lengths, p.max_seq_length, p.short_seq_prob, rng)
            plans.append(plan)
            item_seeds.append(instances.seeds(len(plan), copy_seed, instances.ITEMS))
            # As many donor runs as this copy asked for: runs are drawn evenly over the corpus's text.
            asked = int(plan.requests.sum())
            run_starts += instances.donor_starts(len(doc), asked, rng)
            run_seeds.append(instances.seeds(asked, copy_seed, instances.RUNS))
            if len(plans) == group or copy == copies - 1:
                yield from self._instances(key, split, flat, bounds, instances.concat_columns(plans),
                                           np.concatenate(item_seeds), run_starts, np.concatenate(run_seeds))  # fmt: skip
                plans, item_seeds, run_starts, run_seeds = [], [], [], []

    def _instances(self, key, split, flat, bounds, plan, seeds, run_starts, run_seeds):
        """Copies' ready instances (output `split`), their requests and donor runs (to the part files)."""
        which, max_num_tokens = _SPLITS.index(split), self._prepare.max_seq_length - 3
        asks = plan.requests
        ready = ~asks
        if ready.any():
            a_start, a_end, b_end = plan.a_start[ready], plan.a_end[ready], plan.b_end[ready]
            yield TaggedOutput(split, instances.pairs(flat, a_start, a_end - a_start, a_end, b_end - a_end, False,
                                                      max_num_tokens, seeds[ready]))  # fmt: skip
        if not asks.any():
            return
        seeds = seeds[asks]
        a_start, len_a = instances.trim_requests(plan.a_start[asks], plan.a_end[asks], max_num_tokens, seeds)
        requests = donors.Requests(seeds, plan.target_b[asks], len_a, instances.gather(flat, a_start, len_a))
        lo, counts, ends = instances.donor_runs(bounds, run_starts, max_num_tokens)
        runs = donors.Runs(run_seeds, counts, ends, instances.gather(flat, lo, ends[np.cumsum(counts) - 1]))
        doc_hash, buckets = instances.stable_int(key), np.uint64(self._buckets[which])
        req_bucket, run_bucket = requests.seeds % buckets, runs.keys % buckets
        for bucket in np.union1d(req_bucket, run_bucket).tolist():
            pick = (req_bucket == bucket, run_bucket == bucket)
            payload = donors.pack(doc_hash, requests.select(pick[0]) if buckets > 1 else requests,
                                  runs.select(pick[1]) if buckets > 1 else runs, self._wide)  # fmt: skip
            self._parts.add((which, bucket), payload)


class _RecordsFn(beam.DoFn):
    """`instances.Instances` batches -> batches of (seeds, serialized records) for WriteShards.

    The ready instances of a document copy, or a donor bucket's random-next ones, are
    gathered across elements and encoded `BATCH_INSTANCES` at a time
    (`records.encode_instances`, numpy over whole arrays): per-instance Python in masking
    was the job's largest cost, and one Beam element per batch instead of per record
    saves Beam's per-element overhead. Totals for the manifest are summed per bundle and
    flushed as counters in `namespace`.
    """

    def __init__(self, vocab_file: str, prepare: PrepareConfig, namespace: str = COUNTS):
        self._vocab_file, self._prepare, self._namespace = vocab_file, prepare, namespace
        self._lexicon = None

    def setup(self):
        self._vocab = vocab_info(load_vocab(self._vocab_file), self._vocab_file)
        self._spec = records.record_spec(self._prepare)

    def start_bundle(self):
        self._totals = collections.Counter()
        self._pending: list[instances.Instances] = []
        self._count = 0

    def process(self, batch: instances.Instances, lexicon=()):
        if self._lexicon is None:  # side inputs are not available in setup
            self._lexicon = masking.lexicon_index(lexicon)
        self._pending.append(batch)
        self._count += len(batch)
        if self._count >= BATCH_INSTANCES:
            yield self._flush()

    def finish_bundle(self):
        if self._pending:
            yield WindowedValue(self._flush(), 0, [GlobalWindow()])
        for name, value in self._totals.items():
            Metrics.counter(self._namespace, name).inc(value)

    def _flush(self) -> tuple[np.ndarray, list[bytes]]:
        batch = instances.concat_columns(self._pending)
        self._pending, self._count = [], 0
        return batch.seeds, records.encode_instances(batch, self._spec, self._vocab, self._lexicon, self._totals)


def build_pipeline(pipeline, files, data, prepare, vocab_file, seed, lexicon, out_dir, buckets=(1, 1)):
    """Wire the steps onto `pipeline`; returns {split: PCollection of (shard name, count)}."""
    special_ids(load_vocab(vocab_file), vocab_file)  # a vocab without [MASK]/[CLS]/[SEP] stops here
    side_inputs = {}
    if lexicon:  # entity masking: the phrases' ids, tokenized once in a worker, for every encoder
        lexicon_ids = (
            pipeline
            | "Lexicon" >> beam.Create([lexicon])
            | "TokenizeLexicon" >> beam.ParDo(_LexiconFn(vocab_file, data.normalization, prepare.max_seq_length - 3))
        )
        side_inputs["lexicon"] = beam.pvalue.AsSingleton(lexicon_ids)
    planned = (
        pipeline
        | "Read" >> corpus.ReadDocuments(files, data)
        | "SplitSentences" >> beam.Map(split_document, data.line_breaks)
        | "Tokenize" >> beam.ParDo(TokenizeDocumentsFn(vocab_file, data.normalization))
        | "PlanInstances"
        >> beam.ParDo(_PlanFn(vocab_file, prepare, seed, buckets, prepare.holdout_fraction,
                              join(out_dir, DONORS_DIR))).with_outputs(
            *_SPLITS, DONORS)
    )  # fmt: skip
    random_next = (
        planned[DONORS]
        | "GroupDonors" >> beam.GroupByKey()
        | "MatchDonors"
        >> beam.ParDo(donors.MatchDonorsFn(prepare.max_seq_length, _SPLITS, (COUNTS, HOLDOUT_COUNTS),
                                           corpus.SKIPPED)).with_outputs(*_SPLITS)
    )  # fmt: skip
    written = {}
    for split in _SPLITS:
        if split == HOLDOUT and not prepare.holdout_fraction:
            continue
        cfg, namespace = (prepare, COUNTS) if split == TRAIN else (holdout_config(prepare), HOLDOUT_COUNTS)
        out = out_dir if split == TRAIN else join(out_dir, HOLDOUT_DIR)
        shards = prepare.num_shards if split == TRAIN else 1
        # Encoded and written where they are made (no Flatten of instances: see WriteShards).
        records = tuple(
            instances_ | f"Encode{split.title()}{source}"
            >> beam.ParDo(_RecordsFn(vocab_file, cfg, namespace), **side_inputs)
            for source, instances_ in (("Ready", planned[split]), ("RandomNext", random_next[split]))
        )  # fmt: skip
        written[split] = records | f"Write{split.title()}Shards" >> WriteShards(
            out, shards, prepare.compression, SHARDS if split == TRAIN else HOLDOUT_SHARDS)
    return written


def query_distributions(result, namespace: str) -> dict[str, dict[str, float]]:
    """{name: {max, mean, count}} of the distribution metrics of a namespace."""
    from apache_beam.metrics.metric import MetricsFilter

    out = {}
    for d in result.metrics().query(MetricsFilter().with_namespace(namespace))["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        if value is not None and value.count:
            out[d.key.metric.name] = {"max": value.max, "mean": value.mean, "count": value.count}
    return out


def _counts(totals: dict[str, int], seq_length: int, distributions: dict[str, dict[str, float]]) -> dict[str, float]:
    n = totals.get("instances", 0)
    counts = {k: float(v) for k, v in sorted(totals.items())}
    counts["padding_fraction"] = 1.0 - totals.get("tokens", 0) / (n * seq_length) if n else 0.0
    counts["nsp_random_fraction"] = totals.get("nsp_random", 0) / n if n else 0.0
    if "masked_tokens" in totals:
        counts["masked_rate"] = totals["masked_tokens"] / max(1, totals.get("maskable_tokens", 0))
    uses = distributions.get("donor_run_uses")
    if uses:  # how many random-next instances share one donor run (1 is ideal)
        counts["donor_max_reuse"], counts["donor_mean_reuse"] = float(uses["max"]), float(uses["mean"])
    return counts


def _manifest(prepare: PrepareConfig, vocab_file: str, vocab_size: int, result, shards_ns: str, counts_ns: str,
              skipped: dict[str, int], config: dict, holdout: str | None = None) -> schema.DataManifest:
    kind = schema.PRETRAIN_DYNAMIC if prepare.dynamic else schema.PRETRAIN_STATIC
    return schema.DataManifest(
        kind=kind,
        seq_length=prepare.max_seq_length,
        vocab_file=vocab_file,
        vocab_sha256=schema.file_sha256(vocab_file),
        vocab_size=vocab_size,
        shards=dict(sorted(corpus.query_counters(result, shards_ns).items())),
        max_predictions=0 if prepare.dynamic else prepare.max_predictions_per_seq,
        masking=prepare.masking,
        compression=prepare.compression,
        counts=_counts(corpus.query_counters(result, counts_ns), prepare.max_seq_length,
                       query_distributions(result, counts_ns)),
        skipped=dict(sorted(skipped.items())),
        config=config,
        nsp=prepare.objective == "mlm_nsp",
        holdout=holdout,
    )  # fmt: skip


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
    files = corpus.match_corpus(data.corpus)
    vocab = load_vocab(vocab_file)
    special_ids(vocab, f"vocab file {vocab_file}")  # a vocab without [MASK]/[CLS]/[SEP] stops here
    lexicon = read_lexicon(prepare.lexicon) if needs_lexicon(prepare.masking) else []  # PrepareConfig checked it is set
    # Donor buckets from the corpus size (known before the job starts, so the same on every runner).
    text_bytes = sum(m.size_in_bytes * (_GZIP_RATIO if m.path.endswith(".gz") else 1) for m in files)
    fraction = prepare.holdout_fraction
    buckets = (donors.num_buckets(int(text_bytes * (1 - fraction) * prepare.dupe_factor)),
               donors.num_buckets(int(text_bytes * fraction)))  # fmt: skip
    config = {"data": to_dict(data), "prepare": to_dict(prepare), "seed": seed, "files": len(files),
              "donor_buckets": list(buckets)}  # fmt: skip
    with atomic_directory(out_dir) as tmp:
        pipeline = new_pipeline(pipeline_options(prepare.beam_args))
        written = build_pipeline(pipeline, files, data, prepare, vocab_file, seed, lexicon, tmp, buckets)
        result = pipeline.run()
        result.wait_until_finish()
        remove_parts_dir(tmp)
        remove_tree(join(tmp, DONORS_DIR))
        skipped = corpus.query_counters(result, corpus.SKIPPED)
        holdout = None
        if HOLDOUT in written:
            holdout = HOLDOUT_DIR
            remove_parts_dir(join(tmp, HOLDOUT_DIR))
            held = _manifest(holdout_config(prepare), vocab_file, len(vocab), result, HOLDOUT_SHARDS, HOLDOUT_COUNTS,
                             {}, config | {"split": "held-out documents", "holdout_fraction": fraction})  # fmt: skip
            schema.write_manifest(join(tmp, HOLDOUT_DIR), held)
        manifest = _manifest(prepare, vocab_file, len(vocab), result, SHARDS, COUNTS, skipped, config, holdout)
        manifest.counts.update({f"documents_{k}" if k != "documents_read" else k: float(v)
                                for k, v in corpus.query_counters(result, corpus.NOTED).items()})  # fmt: skip
        schema.write_manifest(tmp, manifest)
    return manifest
