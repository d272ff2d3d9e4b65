"""The export stage's library side: rebuild a fine-tuned model from its record, export it, check it.

The finetune stage writes the chosen weights and an `ExportSpec` (task config, labels,
lengths, serving options, the encoder's architecture); here the task model is rebuilt
from that alone (`bert_keras.tasks`: the type's `build_model`), its weights loaded, and
`bert_keras.export.export_task` writes the raw-text SavedModel. Then the SavedModel is
loaded back and asked the spec's input example (two test rows): every input gets an
answer, and for one-text classifiers its probabilities must equal the Keras model's on
the SavedModel's own `tokenize` output (so the weights and the packing made it).
The pretrained encoder's embedding model is rebuilt the same way from what pretraining
recorded (`export_embedding`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_keras import distribute
from bert_keras.export import EXPORT_INFO, export_encoder_embedding, export_task
from bert_keras.starting_weights import rebuild_encoder
from bert_keras.task_results import ExportSpec
from bert_keras.tasks import TASKS
from pipeline.contract import schema
from pipeline.contract.config import task_config
from pipeline.contract.errors import ContractError

# SavedModel probabilities vs the float32 Keras model's, by export precision: float32 graphs measured
# ~1e-7 apart; bf16 matmuls (`export._compute_precision`) ~1e-2 on MiniLM-L6 (bench_serving's check).
VERIFY_ATOL = {"float32": 1e-4, "bfloat16": 5e-2}


def _example_batch(kind, cfg) -> dict[str, np.ndarray]:
    """One all-[PAD] record of the type's kind with its first token real: enough to build every layer."""
    shapes = schema.shapes(kind.record_kind, cfg.max_seq_length, 0, kind.max_chunks(cfg))
    batch = {name: np.zeros((1,) + shape, np.int32) for name, shape in shapes.items()}
    batch[schema.PADDING_MASK][..., 0] = 1
    if schema.CHUNK_MASK in batch:
        batch[schema.CHUNK_MASK][..., 0] = 1
    return batch


def rebuild_task_model(spec: ExportSpec):
    kind = TASKS[spec.task_type]
    cfg = task_config(**spec.task)
    with distribute.precision_scope("float32"):  # the reference the export is checked against computes in float32
        model = kind.build_model(cfg, rebuild_encoder(spec.encoder), len(spec.labels), spec.dropout)
        model(_example_batch(kind, cfg), training=False)  # create the head's variables before loading
    try:
        model.load_weights(spec.weights)
    except (ValueError, OSError) as err:
        raise ContractError(f"task weights {spec.weights} do not fit the recorded model "
                            f"({str(err).splitlines()[0][:120]}): rerun the finetune stage with --force") from None
    return model


def export_finetuned(spec: ExportSpec, out_dir: str, compiled: bool = False, precision: str = "float32") -> str:
    """Rebuild, export to `out_dir` (atomically), verify; returns `out_dir`. `compiled`, `precision`
    ("float32" or "bfloat16"; `export.serving_precision` resolves "auto"): see `export_task`."""
    model = rebuild_task_model(spec)
    export_task(model, spec.task_type, spec.vocab_file, spec.lowercase, spec.labels, spec.max_seq_length, out_dir,
                extra_assets={"task_config.json": spec.task}, strip_accents=spec.strip_accents, compiled=compiled,
                precision=precision, **spec.options)
    verify(out_dir, model, spec, VERIFY_ATOL[precision])
    return out_dir


def verify(saved_model: str, model, spec: ExportSpec, atol: float = VERIFY_ATOL["float32"]) -> None:
    """The SavedModel answers the input example, and a one-text classifier answers like `model`."""
    loaded = tf.saved_model.load(saved_model)
    inputs = {k: tf.constant(v) for k, v in spec.input_example.items()}
    n = len(next(iter(spec.input_example.values())))
    outputs = loaded.signatures["serving_default"](**inputs)
    where = f"the export of {saved_model} ({EXPORT_INFO})"
    if any(int(v.shape[0]) != n for v in outputs.values()):
        raise ContractError(f"{where} gave {dict((k, v.shape) for k, v in outputs.items())} for {n} inputs")
    kind = TASKS[spec.task_type]
    if kind.record_kind != schema.CLASSIFICATION or len(kind.input_names) != 1:
        return  # pairs' packing and the windows of qa / long documents: tests/test_export*.py check them
    features = loaded.signatures["tokenize"](text=inputs[kind.input_names[0]])
    logits = np.asarray(model(dict(features), training=False)["logits"], np.float64).reshape(n, -1)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    got = outputs["probabilities"].numpy()
    if not np.allclose(got, want, atol=atol):
        raise ContractError(f"{where} answers differ from the fine-tuned model by {np.abs(got - want).max():.2g}")


def export_embedding(encoder: dict, weights: str, vocab_file: str, lowercase: bool, seq_length: int,
                     out_dir: str, strip_accents: bool | None = None) -> str:
    """The pretrained encoder (architecture and weights as pretraining recorded them) as an embedding SavedModel."""
    with distribute.precision_scope("float32"):
        model = rebuild_encoder(encoder)
    model.load_weights(weights)
    return export_encoder_embedding(model, vocab_file, lowercase, seq_length, out_dir, strip_accents)
