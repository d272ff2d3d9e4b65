"""An MLflow pyfunc model that answers raw text with an exported bertpipe SavedModel.

`mlflow models serve -m models:/NAME/1` (and `mlflow.pyfunc.load_model`) load
this wrapper, which loads the SavedModel logged next to it as the artifact
"saved_model" with plain `tf.saved_model.load` (Keras 3 cannot read a
string-signature SavedModel) and calls its `serving_default` signature.

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


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

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
