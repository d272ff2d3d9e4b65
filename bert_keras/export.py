"""Export a fine-tuned task as one SavedModel that takes raw text.

The graph holds the whole path from strings to answers: the run's
FastBertTokenizer (`bert_keras.tokenizer.make_tokenizer`, the same one the data
jobs use), tf-text trimming and packing, the Keras model, and the decoding of
its logits. A client needs only tensorflow and tensorflow_text:

    m = tf.saved_model.load(out_dir)
    m.signatures["serving_default"](text=tf.constant(["great film"]))
        # {"label": [b"positive"], "label_id": [1], "probabilities": [[0.1, 0.9]]}

Signatures (inputs -> outputs, every input a (batch,) string): serving_default is the
task type's (`bert_keras.tasks`: its `input_names` and `serving_fn`), e.g.
    classification, long_document  serving_default(text) -> label, label_id, probabilities
    pair            serving_default(text_a, text_b), also as `pair` -> the same
    qa              serving_default(question, context) -> answer, score, start_char, end_char
and every type has embed(text) -> pooled, mean_pooled; serve_examples(serialized) -> as
serving_default; tokenize(text) -> token_ids, segment_ids, padding_mask (the packed
model input, to check serving against training data).

Rows are padded to the longest row of the batch (never above max_seq_length),
and batches of 16 or more run as length-sorted slices, each cut to its own
longest row (`bert_keras.export_inputs`), so short texts do not pay for padding.

Contract with the task models (`bert_keras.task_models`): `task_model.encoder` is the
`BertEncoder`; `task_model(features, training=False)` takes the batch dict named
by `pipeline.contract.schema` and returns a dict of logits: classification / pair:
"logits" (batch, classes) or (batch, 1, classes), or those logits alone; qa: "start_logits" and "end_logits",
each (batch, seq); long_document: features shaped (batch, chunks, seq) plus
CHUNK_MASK (batch, chunks) -> "logits" (batch, classes).

Assets: assets/vocab.txt (or assets/tokenizer.json, whose BPE runs in the graph) and assets/labels.txt (tf.saved_model.Asset), and
assets.extra/bertpipe_export.json (task type, labels, lengths, options,
signatures) next to any `extra_assets` (e.g. the resolved run config).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import types

import tensorflow as tf

from bert_keras import compat, distribute
from bert_keras.export_inputs import length_bucketed, length_buckets, pack_segments, pad_to_bucket
from bert_keras.layers import Dense, bf16_matmuls
from bert_keras.tasks import TASKS
from bert_keras.tokenizer import (
    TOKENIZER_JSON,
    VOCAB_TXT,
    is_tokenizer_json,
    load_vocab,
    serving_tokenizer,
    special_ids,
)
from pipeline.contract import atomic
from pipeline.contract.atomic import atomic_directory
from pipeline.contract.errors import UserError
from pipeline.contract.normalization import Normalization
from pipeline.contract.schema import PADDING_MASK

EXPORT_INFO = "bertpipe_export.json"  # in assets.extra/
FORMAT_VERSION = 1
EMBEDDING = "embedding"  # the encoder alone: serving_default is embed

# Signature inputs and outputs every export shares (a task type's own are in bert_keras.tasks).
TEXT = "text"
LABEL_OUT, LABEL_ID_OUT, PROBABILITIES_OUT = "label", "label_id", "probabilities"
POOLED_OUT, MEAN_POOLED_OUT = "pooled", "mean_pooled"

_STRINGS = tf.TensorSpec([None], tf.string)


def classification_logits(outputs):
    """The model's class logits: its "logits" output, or the output itself (a hand-built head, e.g. the benches')."""
    logits = tf.cast(outputs["logits"] if isinstance(outputs, dict) else outputs, tf.float32)
    if logits.shape.rank == 3:  # (batch, instances=1, classes) -> (batch, classes)
        logits = logits[:, 0]
    return logits


# ---- the exported module ---------------------------------------------------------------
class _Server(tf.Module):
    """Tokenizer + model + decoding; its tf.functions become the SavedModel's signatures.

    The task type's `serving_fn(server)` builds serving_default from the helpers here
    (`features`, `logits`, `labelled`) and the attributes (`model`, `tokenizer`,
    `special`, `max_seq_length`, `options`)."""

    def __init__(self, model, encoder, task_type, vocab, tokenizer, labels, max_seq_length, options, assets,
                 compiled: bool = False):
        super().__init__(name="bertpipe_server")
        self.model = model
        self.encoder = encoder
        self.tokenizer = tokenizer  # bert_keras.tokenizer.serving_tokenizer: WordPiece or a tokenizer.json's BPE
        self.special = special_ids(vocab)
        self.task_type = task_type
        self.max_seq_length = max_seq_length
        self.options = options
        self.labels = tf.constant(labels or [""], tf.string)
        for name, path in assets.items():  # tracked, so they are copied into assets/
            setattr(self, name, tf.saved_model.Asset(path))
        # The numeric part (ids -> logits) as its own function: XLA-compiled with `compiled`, fed rows
        # padded to a few fixed widths so it compiles a few programs, not one per request length.
        # The string ops (tokenizer, trimming, packing) stay outside it: XLA has no kernels for them.
        self.buckets = length_buckets(max_seq_length) if compiled else None
        # The model, the encoder and the tokenizer each as one tf.function: every signature and every
        # length bucket of `length_bucketed` calls the same concrete function (traced once per export)
        # instead of tracing its own copy of the graph. Inlined, a tiny ModernBERT's five exports took
        # 557 s to write, nearly all of it tracing.
        # They live on a plain holder, not on this module: tf.saved_model.save would otherwise list
        # every tf.function attribute and trace it again in its own save context (another 60 s for
        # that ModernBERT); the SavedModel keeps the signatures, traced once by `signatures()`.
        self.fn = types.SimpleNamespace()
        # Each runs its ~200 small ops in a row on one thread (`compat.single_threaded_function`): with
        # TensorFlow's default executor each op may hop to another inter-op thread, which cost a
        # single request a third of its time (MiniLM-L6, one text, bf16, intra 1 / inter 2: 7.5-8.0
        # ms p50, 5.2-5.6 ms this way), while a batch's length-sorted slices still run in parallel.
        self.fn.numeric = compat.single_threaded_function(self._model_logits, jit_compile=True if compiled else None)
        self.fn.embed_numeric = compat.single_threaded_function(self._embed_features)
        self.fn.pieces = tf.function(self.tokenizer.tokenize, input_signature=[_STRINGS])

        self.fn.embed = tf.function(self._embed, input_signature=[_STRINGS])
        self.fn.tokenize = tf.function(self._tokenize, input_signature=[_STRINGS])
        if task_type == EMBEDDING:
            self.input_names, self.aliases = [TEXT], ()
            self.fn.serving_default = self.fn.embed
        else:
            kind = TASKS[task_type]
            self.input_names, self.aliases = list(kind.input_names), kind.signature_aliases
            self.fn.serving_default = tf.function(kind.serving_fn(self), input_signature=[_STRINGS] * len(kind.input_names))
        self.fn.serve_examples = tf.function(self._serve_examples, input_signature=[_STRINGS])

    def signatures(self) -> dict:
        sigs = {
            "serving_default": self.fn.serving_default,
            "embed": self.fn.embed,
            "tokenize": self.fn.tokenize,
            "serve_examples": self.fn.serve_examples,
        }
        sigs.update({alias: self.fn.serving_default for alias in self.aliases})
        return {name: fn.get_concrete_function() for name, fn in sigs.items()}

    # -- helpers of the task types' serving functions
    def labelled(self, logits):
        probabilities = tf.nn.softmax(logits, axis=-1)  # (batch, classes)
        label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {LABEL_OUT: tf.gather(self.labels, label_id), LABEL_ID_OUT: label_id, PROBABILITIES_OUT: probabilities}

    def features(self, *texts):
        return pack_segments([self.pieces(t) for t in texts], self.special, self.max_seq_length)

    def pieces(self, text):
        """(batch,) strings -> ragged (batch, pieces) ids, by the one traced tokenizer function."""
        return self.fn.pieces(text)

    def logits(self, features):
        if self.buckets is not None:
            features = pad_to_bucket(features, self.buckets)
        return self.fn.numeric(features)

    def _model_logits(self, features):
        return classification_logits(self.model(features, training=False))

    classification_logits = staticmethod(classification_logits)

    # -- signatures every export has
    def _tokenize(self, text):
        return self.features(text)

    def _embed(self, text):
        return length_bucketed(self.fn.embed_numeric, self.features(text))

    def _embed_features(self, features):
        out = self.encoder(features, training=False)
        sequence = tf.cast(out["sequence_output"], tf.float32)  # (batch, seq, hidden)
        real = tf.cast(tf.not_equal(features[PADDING_MASK], 0), tf.float32)[..., None]  # (batch, seq, 1)
        mean = tf.math.divide_no_nan(tf.reduce_sum(sequence * real, axis=1), tf.reduce_sum(real, axis=1))
        return {POOLED_OUT: tf.cast(out["pooled_output"][:, 0], tf.float32), MEAN_POOLED_OUT: mean}

    def _serve_examples(self, serialized):
        spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in self.input_names}
        parsed = tf.io.parse_example(serialized, spec)
        return self.fn.serving_default(**parsed)


# ---- writing ----------------------------------------------------------------------------
PRECISIONS = ("float32", "bfloat16")


SERVE_PRECISIONS = ("auto",) + PRECISIONS


def serving_precision(precision: str) -> str:
    """`export.precision` -> "float32" or "bfloat16". "auto": bfloat16 matmuls on CPUs with AMX, where
    they served 1.8x the float32 export's texts/s at batch 32 (`bench/bench_serving.py`, 2-core Xeon),
    float32 elsewhere.
    The choice is the exporting machine's: serve on another CPU kind, and say it."""
    if precision == "auto":
        return "bfloat16" if distribute.cpu_has_amx() else "float32"
    if precision not in PRECISIONS:
        raise UserError(f"export precision {precision!r} is not one of {', '.join(SERVE_PRECISIONS)}")
    return precision


def _bf16_kernels(model) -> list[tf.Variable]:
    """A bfloat16 copy of every plain `Dense` kernel of `model`, tagged with its layer (see `_compute_precision`)."""
    kernels = []
    for layer in compat.all_layers(model):
        if isinstance(layer, Dense) and not (layer.lora_enabled or layer.quantization_mode):
            kernel = tf.Variable(tf.cast(layer.kernel, tf.bfloat16), trainable=False,
                                 name=layer.kernel.path.replace("/", "_") + "_bf16")
            kernel.layer_id = id(layer)
            kernels.append(kernel)
    return kernels


@contextlib.contextmanager
def _compute_precision(model, precision: str, kernels16: list[tf.Variable]):
    """Trace the signatures with every layer computing in float32, and with "bfloat16" each Dense's
    matmul in bf16 from its stored bf16 kernel (`bert_keras.layers.bf16_matmuls`; `kernels16`).

    bf16 matmuls are ~3x float32's on CPUs with AMX, also fast with AVX512-BF16 and on TPUs and
    recent GPUs, and emulated (slow) elsewhere, so `export.precision: auto` picks them on AMX
    only. Everything else stays float32: bf16 element-wise kernels and per-call kernel casts
    (the mixed_bfloat16 policy) cost more than they save. The layers' own policies are
    restored afterwards: the caller's model is not changed.
    """
    layers = compat.all_layers(model)
    saved = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = "float32"  # whatever policy the model was built (or trained) under
        with bf16_matmuls({k.layer_id: k for k in kernels16} if precision == "bfloat16" else {}):
            yield
    finally:
        for layer, policy in zip(layers, saved, strict=True):
            layer.dtype_policy = policy

def _check(task_type, labels, max_seq_length, encoder, task_options):
    if task_type not in TASKS:
        raise UserError(f"unknown task type {task_type!r}: export knows {', '.join(TASKS)}")
    kind = TASKS[task_type]
    if kind.has_labels and len(labels) < 2:
        raise UserError(f"a {task_type} export needs at least 2 label names, got {labels!r}")
    if not 4 <= max_seq_length <= encoder.max_position_embeddings:
        raise UserError(
            f"max_seq_length {max_seq_length} must be between 4 and the model's {encoder.max_position_embeddings} positions"
        )
    unknown = sorted(set(task_options) - set(kind.export_defaults))
    if unknown:
        raise UserError(f"export option(s) {', '.join(unknown)} do not apply to {task_type} tasks")
    options = {**kind.export_defaults, **task_options}
    if "doc_stride" in options and not 1 <= options["doc_stride"] < max_seq_length:
        raise UserError(f"doc_stride {options['doc_stride']} must be between 1 and max_seq_length - 1")
    if "max_query_length" in options and not 1 <= options["max_query_length"] < max_seq_length - 3:
        raise UserError("max_query_length must leave room for the context in max_seq_length")
    return options


def _write_extra(directory: str, name: str, value) -> None:
    path = os.path.join(directory, name)  # local or remote (the export's directory may be on gs://)
    if isinstance(value, os.PathLike):
        atomic.copy_file(os.fspath(value), path)
    elif isinstance(value, bytes):
        atomic.atomic_write_bytes(path, value)
    elif isinstance(value, str):
        atomic.atomic_write_text(path, value)
    else:
        atomic.atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _save(server: _Server, out_dir: str, info: dict, extra_assets: dict | None, precision: str = "float32") -> str:
    precision = serving_precision(precision)
    info["precision"] = precision
    # Tracked by the module, so the SavedModel stores them; the float32 kernels stay too (the export's weights).
    server.bf16_kernels = _bf16_kernels(server.model) if precision == "bfloat16" else []
    with _compute_precision(server.model, precision, server.bf16_kernels):
        signatures = server.signatures()
    info["signatures"] = {
        name: {"inputs": sorted(fn.function_type.parameters), "outputs": sorted(fn.structured_outputs)}
        for name, fn in signatures.items()
    }
    with atomic_directory(out_dir) as tmp, _compute_precision(server.model, precision, server.bf16_kernels):
        tf.saved_model.save(server, tmp, signatures=signatures)
        extra = os.path.join(tmp, "assets.extra")
        atomic.makedirs(extra)
        for name, value in (extra_assets or {}).items():
            if os.path.basename(name) != name or name == EXPORT_INFO:
                raise UserError(f"extra asset name {name!r} must be a plain file name other than {EXPORT_INFO}")
            _write_extra(extra, name, value)
        _write_extra(extra, EXPORT_INFO, info)
    return out_dir


def _staged_assets(stage: str, vocab_file: str, labels: list[str]) -> dict[str, str]:
    """Copy vocab (or tokenizer.json) and labels to a staging folder; Asset copies them into the SavedModel's assets/."""
    vocab_name = TOKENIZER_JSON if is_tokenizer_json(vocab_file) else VOCAB_TXT
    vocab_path, labels_path = os.path.join(stage, vocab_name), os.path.join(stage, "labels.txt")
    with tf.io.gfile.GFile(vocab_file, "rb") as src, open(vocab_path, "wb") as dst:
        dst.write(src.read())
    pathlib.Path(labels_path).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return {"vocab_file": vocab_path, "labels_file": labels_path}


def export_task(
    task_model,
    task_type: str,
    vocab_file: str,
    lowercase: bool,
    labels: list[str],
    max_seq_length: int,
    out_dir: str,
    extra_assets: dict | None = None,
    precision: str = "float32",
    strip_accents: bool | None = None,
    compiled: bool = False,
    **task_options,
) -> str:
    """Write one raw-text SavedModel for a fine-tuned task to `out_dir` (atomically); return `out_dir`.

    `task_options`: qa takes doc_stride, max_query_length, max_answer_length and
    allow_no_answer (SQuAD 2.0: answer "" when the [CLS] null score wins);
    long_document takes doc_stride and max_chunks. `extra_assets` maps file names
    in assets.extra/ to str/bytes content, a JSON-able object, or a path (os.PathLike) to copy.
    `precision="bfloat16"` runs every Dense matmul in bf16 from a stored bf16 copy of its kernel,
    the rest in float32 (`_compute_precision`): 1.8x the float32 export's texts/s on a 2-core
    Xeon with AMX, probabilities within ~1e-2; `serving_precision("auto")` says which to use here.
    `lowercase` / `strip_accents` are the training data's normalization (`data.*`;
    `strip_accents=None` follows `lowercase`).
    `compiled=True` XLA-compiles the numeric part (ids -> logits) of classification and pair
    signatures, fed rows padded to `length_buckets(max_seq_length)` (16, 32, 64, ...), so a
    served model compiles a few programs per batch size on first use, never one per length.
    """
    encoder = getattr(task_model, "encoder", None)
    if encoder is None:
        raise UserError(f"{type(task_model).__name__} has no .encoder: export_task needs a bert_keras task model")
    labels = [str(label) for label in labels or []]
    options = _check(task_type, labels, max_seq_length, encoder, task_options)
    vocab = load_vocab(vocab_file)
    if len(vocab) != encoder.vocab_size:
        raise UserError(f"vocab file {vocab_file} has {len(vocab)} tokens but the model has {encoder.vocab_size}")
    info = {
        "format_version": FORMAT_VERSION,
        "task_type": task_type,
        "labels": labels,
        "lowercase": bool(lowercase),
        "strip_accents": Normalization.of(lowercase, strip_accents).strip_accents,
        "max_seq_length": int(max_seq_length),
        "vocab_size": len(vocab),
        "task_options": options,
    }
    with tempfile.TemporaryDirectory(prefix="bertpipe-export-") as stage:
        assets = _staged_assets(stage, vocab_file, labels)
        server = _Server(task_model, encoder, task_type, vocab, serving_tokenizer(vocab_file, lowercase, strip_accents),
                         labels, max_seq_length, options, assets, compiled)
        info["compiled"] = {"xla": bool(compiled), "buckets": server.buckets}
        return _save(server, out_dir, info, extra_assets, precision)


def export_encoder_embedding(encoder, vocab_file: str, lowercase: bool, max_seq_length: int, out_dir: str,
                             strip_accents: bool | None = None) -> str:
    """A SavedModel whose serving_default (and embed) map text to pooled and mean-pooled vectors."""
    vocab = load_vocab(vocab_file)
    if len(vocab) != encoder.vocab_size:
        raise UserError(f"vocab file {vocab_file} has {len(vocab)} tokens but the encoder has {encoder.vocab_size}")
    _check("classification", ["", ""], max_seq_length, encoder, {})
    info = {
        "format_version": FORMAT_VERSION,
        "task_type": EMBEDDING,
        "labels": [],
        "lowercase": bool(lowercase),
        "strip_accents": Normalization.of(lowercase, strip_accents).strip_accents,
        "max_seq_length": int(max_seq_length),
        "vocab_size": len(vocab),
        "task_options": {},
    }
    with tempfile.TemporaryDirectory(prefix="bertpipe-export-") as stage:
        assets = _staged_assets(stage, vocab_file, [])
        server = _Server(encoder, encoder, EMBEDDING, vocab, serving_tokenizer(vocab_file, lowercase, strip_accents),
                         [], max_seq_length, {}, assets)
        return _save(server, out_dir, info, None)


def read_export_info(model_dir: str) -> dict:
    """The export's bertpipe_export.json (task type, labels, signatures), or a one-line error."""
    path = os.path.join(model_dir, "assets.extra", EXPORT_INFO)
    if not atomic.exists(os.path.join(model_dir, "saved_model.pb")):
        raise UserError(f"{model_dir} is not a SavedModel (no saved_model.pb): point at a bertpipe export directory")
    if not atomic.exists(path):
        raise UserError(f"{model_dir} has no assets.extra/{EXPORT_INFO}: not a bertpipe export")
    return json.loads(atomic.read_text(path))
