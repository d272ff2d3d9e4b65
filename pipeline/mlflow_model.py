"""An MLflow pyfunc model that answers raw text with an exported bertpipe SavedModel.

`mlflow models serve -m models:/NAME/1` (and `mlflow.pyfunc.load_model`) load
this wrapper, which loads the SavedModel logged next to it as the artifact
"saved_model" with plain `tf.saved_model.load` (Keras 3 cannot read a
string-signature SavedModel) and calls its `serving_default` signature.

Threads: `serving_threads` (one per op, one op per core on small machines; `BERTPIPE_TF_THREADS`).

Input: a DataFrame (or list of strings, or dict of lists) whose columns are the
signature's inputs: `text` for classification and long documents,
`text_a`/`text_b` for pairs (`text`/`text_b` are accepted too, the fine-tuning
file's column names), `question`/`context` for QA. Output: a DataFrame with the
signature's outputs (label, label_id, probabilities; or answer, score,
start_char, end_char), strings decoded from UTF-8.

The model is logged "from code": MLflow stores this file itself and runs it when
the model loads (`set_model` below), so no pickle is ever written or read. It
imports only mlflow and pandas at import time (TensorFlow when the model loads) and needs
nothing else of bertpipe; nothing here logs to MLflow (that is `pipeline.tracking`).
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd

SAVED_MODEL_ARTIFACT = "saved_model"
ALIASES = {"text_a": "text"}  # signature input -> column name also accepted for it


THREADS_ENV = "BERTPIPE_TF_THREADS"  # "INTRA,INTER": TensorFlow's thread pools for serving; "default": TF's own


def serving_threads(cores: int | None = None) -> tuple[int, int] | None:
    """(intra-op, inter-op) threads for serving, or None for TensorFlow's defaults.

    One thread per op and one op per core (intra 1, inter = cores) on machines of up to 4 cores:
    on a 2-core Xeon it served MiniLM-L6 at 770 texts/s (batch 32) against 451 at TensorFlow's
    defaults, since a batch runs as independent length-sorted slices (`bert_keras.export_inputs`)
    and small ops lose more to thread hand-offs than they gain. Larger machines keep TensorFlow's
    defaults (not measured here). `BERTPIPE_TF_THREADS="INTRA,INTER"` (or "default") overrides.
    """
    import os

    chosen = os.environ.get(THREADS_ENV, "").strip()
    if chosen == "default":
        return None
    if chosen:
        try:
            intra, inter = (int(x) for x in chosen.split(","))
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={chosen!r}: give INTRA,INTER thread counts (e.g. 1,2) or 'default'") from None
        return intra, inter
    cores = cores or os.cpu_count() or 1
    return (1, cores) if cores <= 4 else None


def configure_serving_threads() -> tuple[int, int] | None:
    """Apply `serving_threads()` to TensorFlow; it must run before TensorFlow's first op, else the
    threads stay as they are (logged at INFO: MLflow itself loads the model inside a running
    TensorFlow process when it logs one). Returns what was applied."""
    import logging

    import tensorflow as tf

    threads = serving_threads()
    if threads is None:
        return None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    except RuntimeError:  # TensorFlow already ran an op in this process: its pools are fixed
        logging.getLogger(__name__).info("TensorFlow was initialized before the model loaded: serving threads stay "
                                         "as they are (wanted intra-op %d, inter-op %d)", *threads)
        return None
    return threads


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    def __init__(self, serving_threads: bool = True):
        self.serving_threads = serving_threads  # False: leave the process's TensorFlow threads alone

    def load_context(self, context):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

        if getattr(self, "serving_threads", True):
            configure_serving_threads()
        self._tf = tf
        self._model = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT])
        self._fn = self._model.signatures["serving_default"]
        self.inputs = sorted(self._fn.structured_input_signature[1])

    # The hint is DataFrame, a type MLflow infers no schema from: the signature comes from the
    # logged examples, and `_as_frame` also takes a list of strings or a dict of lists.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        import numpy as np

        frame = _as_frame(model_input, self.inputs)
        columns = {}
        for name in self.inputs:
            column = name if name in frame.columns else ALIASES.get(name)
            if column not in frame.columns:
                raise ValueError(f"input lacks column {name!r} (got {', '.join(map(str, frame.columns))}); "
                                 f"this model takes {', '.join(self.inputs)}")
            columns[name] = self._tf.constant(["" if v is None else str(v) for v in frame[column].tolist()])
        outputs = self._fn(**columns)
        result = {}
        for key in sorted(outputs):
            value = outputs[key].numpy()
            if value.dtype == object:
                value = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value)
            result[key] = list(value) if value.ndim > 1 else value
        return pd.DataFrame(result)


def _as_frame(model_input, inputs):
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame({k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in model_input.items()})
    if isinstance(model_input, (list, tuple)) and all(isinstance(x, str) for x in model_input) and len(inputs) == 1:
        return pd.DataFrame({inputs[0]: list(model_input)})
    return pd.DataFrame(model_input)


# Models from code: this file is the model definition MLflow logs and loads.
mlflow.models.set_model(SavedModelPyfunc())
