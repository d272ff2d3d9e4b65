"""The task registry: every fine-tuning task type, by the name `finetune.<task>.type` gives.

| type           | module              | config (pipeline.contract.task_config) | records            | model                    |
|----------------|---------------------|----------------------------------------|--------------------|--------------------------|
| classification | `classification.py` | `ClassificationTaskConfig`             | CLASSIFICATION     | `SequenceClassifier`     |
| pair           | `pair.py`           | `PairTaskConfig`                       | CLASSIFICATION     | `SequenceClassifier`     |
| qa             | `qa.py`             | `QATaskConfig`                         | QUESTION_ANSWERING | `SpanExtractor`          |
| long_document  | `long_document.py`  | `LongDocumentTaskConfig`               | LONG_DOCUMENT      | `LongDocumentClassifier` |

A new task type is one module here with a `TaskType` subclass (`base.py` lists
what it implements), its config class in `pipeline/contract/task_config.py`,
and one line in each of `TASKS` and `TASK_CONFIGS`. Importing this package does
not import TensorFlow: the data job uses the conversions.
"""

from __future__ import annotations

from bert_keras.tasks.base import EvalContext, PieceTokenizer, RecordSink, TaskType
from bert_keras.tasks.classification import Classification
from bert_keras.tasks.long_document import LongDocument
from bert_keras.tasks.pair import Pair
from bert_keras.tasks.qa import QuestionAnswering
from pipeline.contract.errors import ConfigError

TASKS: dict[str, TaskType] = {t.name: t for t in (Classification(), Pair(), QuestionAnswering(), LongDocument())}

__all__ = ["TASKS", "EvalContext", "PieceTokenizer", "RecordSink", "TaskType", "task_type"]


def task_type(name: str) -> TaskType:
    if name not in TASKS:
        raise ConfigError(f"unknown task type {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
