"""Batch scoring at scale: JSONL in, predictions out, with Beam's RunInference.

    score_jsonl("runs/demo/export/sentiment", "gs://bucket/in-*.jsonl", "gs://bucket/out/pred",
                ["--runner=DataflowRunner", ...])

Reads JSON lines, keeps the text fields the SavedModel's serving_default takes,
scores them with RunInference (its batching, per-worker model sharing and
metrics: num_inferences, inference_batch_latency_micro_secs, load_model_latency
...), and writes `{id?, ...outputs}` JSON lines to `<output_prefix>-SSSSS-of-NNNNN.jsonl`.
Lines that are not JSON objects with those string fields go, with the reason,
to `<output_prefix>-invalid-*.jsonl` and are counted, instead of failing the job.

Why a handler of our own: Beam's TensorFlow handler
(`apache_beam.ml.inference.tensorflow_inference`) imports tensorflow_hub and
loads with `tf.keras.models.load_model`, which under Keras 3 cannot read a
string-signature SavedModel. `SignatureModelHandler` loads with
`tf.saved_model.load` and calls one signature on a batch of strings; the rest
of RunInference is Beam's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from beam_jobs.options import new_pipeline, pipeline_options
from pipeline.contract.errors import UserError

INVALID = "invalid"
METRICS_NAMESPACE = "bertpipe_score"


class SignatureModelHandler(ModelHandler[Sequence[str], PredictionResult, object]):
    """RunInference handler: element = the signature's text inputs (in `input_names` order)."""

    def __init__(self, model_dir: str, input_names: Sequence[str], signature: str = "serving_default", **batching):
        super().__init__(**batching)  # min_batch_size, max_batch_size, model_copies, ... (Beam's)
        self._model_dir = model_dir
        self._input_names = list(input_names)
        self._signature = signature

    def load_model(self):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tf-text ops of the graph)

        return tf.saved_model.load(self._model_dir)

    def run_inference(self, batch: Sequence[Sequence[str]], model, inference_args=None) -> Iterable[PredictionResult]:
        from bert_keras.predict import run_batch

        rows = run_batch(model.signatures[self._signature], self._input_names, [list(texts) for texts in batch])
        return [PredictionResult(texts, row, self._model_dir) for texts, row in zip(batch, rows, strict=True)]

    def get_num_bytes(self, batch: Sequence[Sequence[str]]) -> int:
        return sum(len(text.encode("utf-8", errors="replace")) for texts in batch for text in texts)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class ParseLine(beam.DoFn):
    """JSON line -> (key, texts); anything else -> the `invalid` output with its reason."""

    def __init__(self, input_names: Sequence[str]):
        self._input_names = list(input_names)
        self._invalid = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "invalid_lines")

    def process(self, raw: bytes):
        from bert_keras.predict import PASS_THROUGH, fields_of

        line = raw.decode("utf-8", errors="replace")  # invalid bytes -> U+FFFD, as bertpipe predict
        if not line.strip():
            return
        try:
            record = json.loads(line)
            texts = fields_of(record, self._input_names, "input line")
        except (ValueError, UserError) as err:
            reason = f"not JSON ({err.msg})" if isinstance(err, json.JSONDecodeError) else str(err)
            self._invalid.inc()
            yield beam.pvalue.TaggedOutput(INVALID, json.dumps({"error": reason, "line": line[:1000]}))
            return
        key = {k: record[k] for k in PASS_THROUGH if k in record}
        yield json.dumps(key, sort_keys=True), tuple(texts)


def format_result(keyed: tuple[str, PredictionResult]) -> str:
    key, result = keyed
    return json.dumps({**json.loads(key), **result.inference}, ensure_ascii=False)


def build_pipeline(p, model_dir: str, input_names: Sequence[str], input_pattern: str, output_prefix: str, **batching):
    parsed = (
        p
        # Bytes, decoded in ParseLine: the default UTF-8 coder fails the whole job on one bad byte.
        | "Read" >> beam.io.ReadFromText(input_pattern, coder=beam.coders.BytesCoder())
        | "Parse" >> beam.ParDo(ParseLine(input_names)).with_outputs(INVALID, main="valid")
    )
    handler = KeyedModelHandler(SignatureModelHandler(model_dir, input_names, **batching))
    (
        parsed.valid
        | "Score" >> RunInference(handler)
        | "Format" >> beam.Map(format_result)
        | "Write" >> beam.io.WriteToText(output_prefix, file_name_suffix=".jsonl")
    )
    parsed[INVALID] | "WriteInvalid" >> beam.io.WriteToText(f"{output_prefix}-{INVALID}", file_name_suffix=".jsonl")


def _counter(result, name: str) -> int:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))
    return int(sum(c.committed or 0 for c in query["counters"]))


def score_jsonl(model_dir: str, input_pattern: str, output_prefix: str, beam_args: Sequence[str] = (), **batching) -> dict:
    """Run the scoring job; return {"scored": n, "invalid": m}. `batching`: Beam ModelHandler batching kwargs."""
    from bert_keras.export import read_export_info

    info = read_export_info(model_dir)
    input_names = info["signatures"]["serving_default"]["inputs"]
    options = pipeline_options(beam_args)
    with new_pipeline(options) as p:
        build_pipeline(p, model_dir, input_names, input_pattern, output_prefix, **batching)
    result = p.result
    return {"scored": _counter(result, "num_inferences"), "invalid": _counter(result, "invalid_lines")}
