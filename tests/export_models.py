"""Tiny fine-tuned-task stand-ins for the export, predict and Beam scoring tests.

The real task models of `bert_keras.tasks` (the registry's `build_model`) around a randomly initialised tiny
encoder (2 layers, hidden 32) over the real bert-base-uncased vocab, so the
tokenization under test is the real one. initializer_range 0.2 (not BERT's
0.02) so random outputs differ visibly from one input to the next.
"""

from __future__ import annotations

import os

import keras

from bert_keras.encoder import BertEncoder
from bert_keras.tasks import TASKS
from tests.harness import tiny_encoder_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(REPO, "data", "vocab", "bert-base-uncased-vocab.txt")
LABELS = ["negative", "positive"]
SEQ = 32


def tiny_encoder(seed: int = 0) -> BertEncoder:
    keras.utils.set_random_seed(seed)
    return BertEncoder(**tiny_encoder_kwargs(30522, max_position_embeddings=64, initializer_range=0.2),
                       name="bert_encoder")


def tiny_task_model(task_type: str, num_classes: int = 2, seed: int = 0):
    kind = TASKS[task_type]
    cfg = kind.config(type=task_type, train_file="unused.jsonl")  # long_document: attention pooling, the default
    return kind.build_model(cfg, tiny_encoder(seed), num_classes, dropout=0.1)
