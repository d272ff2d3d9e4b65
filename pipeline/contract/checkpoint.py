"""Checkpoint specs: which weights a model starts from, parsed in one place.

    hf:DIR       a Hugging Face directory: config.json + model.safetensors
    google:DIR   a Google BERT directory: bert_config.json + bert_model.ckpt.*
    PATH         bertpipe's own encoder weights: an encoder.weights.h5 file, or the pretrain
                 stage directory that holds one

`model.init_from` and `finetune.<task>.init` take a spec (a task's `init` also takes the words
`pretrained` and `random`). Only the formats above count as a prefix, so `gs://b/x` and
`C:\\x` are plain paths. The stage runner hashes `path`'s contents like any other input.
"""

from __future__ import annotations

import dataclasses

from pipeline.contract.errors import ConfigError

HF, GOOGLE, BERTPIPE = "hf", "google", "bertpipe"
IMPORT_FORMATS = (HF, GOOGLE)  # the formats written as a prefix


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    format: str  # HF, GOOGLE or BERTPIPE
    path: str

    @classmethod
    def parse(cls, text: str) -> CheckpointSpec:
        head, colon, rest = text.partition(":")
        if colon and head in IMPORT_FORMATS:
            if not rest:
                raise ConfigError(f"checkpoint {text!r} names no directory: write {head}:DIR")
            return cls(head, rest)
        return cls(BERTPIPE, text)

    @property
    def imported(self) -> bool:
        """A Hugging Face or Google checkpoint (its config sets the model's sizes), not bertpipe weights."""
        return self.format in IMPORT_FORMATS

    def with_path(self, path: str) -> CheckpointSpec:
        return dataclasses.replace(self, path=path)

    def __str__(self) -> str:
        return f"{self.format}:{self.path}" if self.imported else self.path
