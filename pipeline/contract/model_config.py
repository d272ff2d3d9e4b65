"""The `model:` section: one config class per model family, chosen by `model.family`.

Every model hyperparameter is spelled once, here, as a field made with `hyperparameter(...)`:
its name, its default and checks, and its key in the family's checkpoint configs (Hugging
Face `config.json`, Google `bert_config.json`). The encoder's constructor arguments and
`get_config` (`bert_keras.encoder`) and the checkpoint config readers and writers
(`bert_keras.weights`, `bert_keras.weights_google`) are derived from these fields through
`hyperparameters(...)`; none of them lists the names again.

A new family: subclass `ModelConfig` with `family: Literal["<name>"]` and its own
hyperparameter fields (its own defaults and checkpoint keys), add it to `ModelSection`'s
union below, and register its code in `bert_keras.families` (whose docstring says what a
family provides). YAML without `family:` means `bert`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from pipeline.contract.checkpoint import CheckpointSpec
from pipeline.contract.errors import ConfigError
from pipeline.contract.section import Section

DEFAULT_FAMILY = "bert"
FAMILY_HELP = ("the model family: `bert` (classic BERT, and pre-LN with `normalize_first`) or `modernbert` (RoPE, "
               "sliding-window + global attention, GeGLU, pre-norm, no biases, MLM-only pretraining, up to 8,192 "
               "tokens); each has its own keys below. README: choosing a model family")
_META = "bertpipe_hyperparameter"


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One row of a family's hyperparameter table (read from its config class)."""

    name: str  # the config key, the encoder argument and attribute, the get_config key
    default: Any
    hf: str | None  # key in a Hugging Face config.json; None: that format cannot hold it
    google: str | None  # key in a Google bert_config.json; None: that format cannot hold it
    shape: bool  # decides a variable's shape: weights loaded into a model must agree on it
    required: bool  # a checkpoint config must give it; other keys default to `default`

    def key(self, fmt: str) -> str | None:
        """This hyperparameter's key in checkpoint format `fmt` ("hf" or "google")."""
        return {"hf": self.hf, "google": self.google}[fmt]


def hyperparameter(default: Any, description: str, *, hf: str | None = None, google: str | None = None,
                   shape: bool = False, required: bool = False, **checks: Any) -> Any:
    """A pydantic field (default, README description, checks) that is also a row of the family's
    hyperparameter table (its checkpoint keys)."""
    meta = {"hf": hf, "google": google, "shape": shape, "required": required}
    return Field(default, description=description, json_schema_extra={_META: meta}, **checks)


def hyperparameters(section: type[BaseModel]) -> tuple[Hyperparameter, ...]:
    """The hyperparameter table of a family's config class, in field order."""
    rows = []
    for name, field in section.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and _META in extra:
            rows.append(Hyperparameter(name, field.default, **extra[_META]))
    return tuple(rows)


class ModelConfig(Section):
    """What every family's section has. Each family also defines `vocab_size` (None: the vocab
    file's size) and `max_position_embeddings` (the longest sequence), which the stages read."""

    family: str  # each family's section narrows it to its Literal name (and describes it)
    init_from: str | None = Field(None, description=(
        "start from `hf:DIR` (Hugging Face), `google:DIR` (original TF checkpoint) or a path to bertpipe encoder "
        "weights (`encoder.weights.h5`, or the pretrain directory holding it); its contents are part of the "
        "stage's fingerprint"))

    @field_validator("init_from")
    @classmethod
    def _checkpoint_spec(cls, value: str | None) -> str | None:
        if value:
            try:
                CheckpointSpec.parse(value)  # "hf:" without a directory is an error here
            except ConfigError as err:
                raise ValueError(str(err)) from None  # pydantic then names the key
        return value

    def architecture(self) -> dict[str, Any]:
        """{hyperparameter name: value}: the encoder's constructor arguments."""
        return {h.name: getattr(self, h.name) for h in hyperparameters(type(self))}

    @property
    def task_dropout(self) -> float:
        """Dropout before a fine-tuned task's head."""
        raise NotImplementedError


class BertConfig(ModelConfig):
    """family: bert, exactly BERT (Devlin et al. 2018) by default, and pre-LN blocks as an option."""

    family: Literal["bert"] = Field("bert", description=FAMILY_HELP)
    vocab_size: int | None = hyperparameter(None, "unset: the vocab file's size", hf="vocab_size",
                                            google="vocab_size", shape=True, required=True, ge=1)
    hidden_size: int = hyperparameter(256, "BERT-base: 768", hf="hidden_size", google="hidden_size", shape=True,
                                      required=True, ge=1)
    num_layers: int = hyperparameter(4, "BERT-base: 12", hf="num_hidden_layers", google="num_hidden_layers",
                                     shape=True, required=True, ge=1)
    num_heads: int = hyperparameter(4, "BERT-base: 12", hf="num_attention_heads", google="num_attention_heads",
                                    shape=True, required=True, ge=1)
    intermediate_size: int = hyperparameter(1024, "BERT-base: 3072", hf="intermediate_size",
                                            google="intermediate_size", shape=True, required=True, ge=1)
    max_position_embeddings: int = hyperparameter(512, "position table size", hf="max_position_embeddings",
                                                  google="max_position_embeddings", shape=True, ge=1)
    type_vocab_size: int = hyperparameter(2, "segment types", hf="type_vocab_size", google="type_vocab_size",
                                          shape=True, ge=1)
    dropout: float = hyperparameter(0.1, "hidden dropout", hf="hidden_dropout_prob", google="hidden_dropout_prob",
                                    ge=0, lt=1)
    attention_dropout: float = hyperparameter(0.1, "attention-probability dropout", hf="attention_probs_dropout_prob",
                                              google="attention_probs_dropout_prob", ge=0, lt=1)
    initializer_range: float = hyperparameter(0.02, "truncated-normal init stddev", hf="initializer_range",
                                              google="initializer_range", gt=0)
    # Google's modeling.py fixes 1e-12 (no key); Hugging Face's BertConfig has layer_norm_eps.
    layer_norm_epsilon: float = hyperparameter(1e-12, "LayerNorm epsilon (Hugging Face's `layer_norm_eps`)",
                                               hf="layer_norm_eps", gt=0)
    # Pre-LN (Xiong et al. 2020; Cramming, MosaicBERT) trains at higher learning rates. Neither
    # checkpoint format has it, so such a model is saved only as bertpipe weights.
    normalize_first: bool = hyperparameter(False, (
        "pre-LN blocks, `x + f(LN(x))`, with a final LayerNorm; saved as bertpipe weights only (no Hugging Face or "
        "Google layout)"))

    @property
    def task_dropout(self) -> float:
        return self.dropout

    @model_validator(mode="after")
    def _check(self) -> BertConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class ModernBertConfig(ModelConfig):
    """family: modernbert, Hugging Face's `ModernBertConfig` (Warner et al. 2024) under its own key names.

    Each key is the Hugging Face config.json key and the `ModernBertEncoder` argument of the same name.
    Defaults: a small model (ModernBERT-base in each description); the architecture's constants are
    ModernBERT's (window 128, global every 3rd layer, thetas 160,000 / 10,000, no biases, no dropout).
    """

    family: Literal["modernbert"] = Field("modernbert", description=FAMILY_HELP)
    vocab_size: int | None = hyperparameter(None, "unset: the vocab or tokenizer file's size", hf="vocab_size",
                                            shape=True, required=True, ge=1)
    hidden_size: int = hyperparameter(256, "ModernBERT-base: 768", hf="hidden_size", shape=True, required=True, ge=1)
    intermediate_size: int = hyperparameter(384, "GeGLU width, each half; ModernBERT-base: 1152",
                                            hf="intermediate_size", shape=True, required=True, ge=1)
    num_hidden_layers: int = hyperparameter(4, "ModernBERT-base: 22", hf="num_hidden_layers", shape=True,
                                            required=True, ge=1)
    num_attention_heads: int = hyperparameter(4, "ModernBERT-base: 12", hf="num_attention_heads", shape=True,
                                              required=True, ge=1)
    hidden_activation: Literal["gelu"] = hyperparameter("gelu", "exact (erf) GELU, the only one implemented",
                                                        hf="hidden_activation")
    # No position table: rotary positions reach any length; this is the longest sequence accepted.
    max_position_embeddings: int = hyperparameter(8192, "longest sequence (no position table: RoPE)",
                                                  hf="max_position_embeddings", ge=1)
    initializer_range: float = hyperparameter(0.02, "truncated-normal init stddev", hf="initializer_range", gt=0)
    norm_eps: float = hyperparameter(1e-5, "LayerNorm epsilon", hf="norm_eps", gt=0)
    norm_bias: bool = hyperparameter(False, "LayerNorms with a bias", hf="norm_bias", shape=True)
    attention_bias: bool = hyperparameter(False, "attention projections with biases", hf="attention_bias",
                                          shape=True)
    attention_dropout: float = hyperparameter(0.0, "attention-probability and attention-output dropout",
                                              hf="attention_dropout", ge=0, lt=1)
    layer_types: list[Literal["full_attention", "sliding_attention"]] | None = hyperparameter(
        None, "each layer's attention, `full_attention` or `sliding_attention`; unset: from "
        "`global_attn_every_n_layers`", hf="layer_types")
    global_attn_every_n_layers: int = hyperparameter(3, "layers 0, n, 2n, ... attend globally, the rest locally",
                                                     hf="global_attn_every_n_layers", ge=1)
    global_rope_theta: float = hyperparameter(160_000.0, "RoPE base of the global layers", hf="global_rope_theta",
                                              gt=0)
    local_rope_theta: float = hyperparameter(10_000.0, "RoPE base of the local layers", hf="local_rope_theta", gt=0)
    local_attention: int = hyperparameter(128, "sliding window, in tokens (half on each side)",
                                          hf="local_attention", ge=2)
    embedding_dropout: float = hyperparameter(0.0, "dropout after the embedding norm", hf="embedding_dropout",
                                              ge=0, lt=1)
    mlp_bias: bool = hyperparameter(False, "feed-forward projections with biases", hf="mlp_bias", shape=True)
    mlp_dropout: float = hyperparameter(0.0, "feed-forward dropout", hf="mlp_dropout", ge=0, lt=1)
    classifier_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "dropout before a fine-tuned task's classifier (Hugging Face's `classifier_dropout`)"))

    @model_validator(mode="after")
    def _check(self) -> ModernBertConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types names {len(self.layer_types)} layers but num_hidden_layers is "
                             f"{self.num_hidden_layers}")
        return self

    @property
    def task_dropout(self) -> float:
        return self.classifier_dropout


def _family(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("family", DEFAULT_FAMILY)
    return getattr(value, "family", DEFAULT_FAMILY)


# Every family's config class, by `family` name. A new family adds its class here and to the union.
FAMILY_CONFIGS: dict[str, type[ModelConfig]] = {"bert": BertConfig, "modernbert": ModernBertConfig}


def _known_family(value: Any) -> Any:
    name = _family(value)
    if name not in FAMILY_CONFIGS:
        raise ValueError(f"model.family {name!r} is not a model family: use one of {', '.join(FAMILY_CONFIGS)}")
    return value


# The type of `Config.model`: a union discriminated on `family` (a second family adds
# `Annotated[ItsConfig, Tag("its-name")]` inside the Union).
ModelSection = Annotated[
    Union[Annotated[BertConfig, Tag("bert")], Annotated[ModernBertConfig, Tag("modernbert")]],  # noqa: UP007
    Discriminator(_family),
    BeforeValidator(_known_family),
]
