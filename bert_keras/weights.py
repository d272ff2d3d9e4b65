"""Import and export real BERT weights: Hugging Face and Google checkpoints.

Every tensor is named here by its Hugging Face `BertModel` / `BertForPreTraining`
name (the "canonical" name); Google checkpoints are converted to it by
`bert_keras.weights_google`. `L` is the layer index, H hidden, I intermediate,
V vocab, P max positions, T type vocab. HF `nn.Linear` weights are (out, in);
Keras `Dense` kernels and Google kernels are (in, out), so they are transposed.

| bert_keras variable                      | Hugging Face name (`bert.` prefix optional)   | Google modeling.py name                          | shape (ours) |
|------------------------------------------|-----------------------------------------------|--------------------------------------------------|--------------|
| token_embedding/embeddings               | embeddings.word_embeddings.weight             | bert/embeddings/word_embeddings                  | (V, H)       |
| position_embedding/embeddings            | embeddings.position_embeddings.weight         | bert/embeddings/position_embeddings              | (P, H)       |
| segment_embedding/embeddings             | embeddings.token_type_embeddings.weight       | bert/embeddings/token_type_embeddings            | (T, H)       |
| embedding_norm/gamma, beta               | embeddings.LayerNorm.weight, .bias            | bert/embeddings/LayerNorm/gamma, beta            | (H,)         |
| block_L/qkv/kernel[:, 0:H]   (T)         | encoder.layer.L.attention.self.query.weight   | bert/encoder/layer_L/attention/self/query/kernel | (H, 3H)      |
| block_L/qkv/kernel[:, H:2H]  (T)         | encoder.layer.L.attention.self.key.weight     | bert/encoder/layer_L/attention/self/key/kernel   |              |
| block_L/qkv/kernel[:, 2H:3H] (T)         | encoder.layer.L.attention.self.value.weight   | bert/encoder/layer_L/attention/self/value/kernel |              |
| block_L/qkv/bias (same thirds)           | ...attention.self.{query,key,value}.bias      | .../attention/self/{query,key,value}/bias        | (3H,)        |
| block_L/attention_output/kernel, bias (T)| encoder.layer.L.attention.output.dense.*      | bert/encoder/layer_L/attention/output/dense/*    | (H, H)       |
| block_L/attention_norm/gamma, beta       | encoder.layer.L.attention.output.LayerNorm.*  | .../attention/output/LayerNorm/gamma, beta       | (H,)         |
| block_L/intermediate/kernel, bias (T)    | encoder.layer.L.intermediate.dense.*          | bert/encoder/layer_L/intermediate/dense/*        | (H, I)       |
| block_L/output/kernel, bias (T)          | encoder.layer.L.output.dense.*                | bert/encoder/layer_L/output/dense/*              | (I, H)       |
| block_L/output_norm/gamma, beta          | encoder.layer.L.output.LayerNorm.*            | bert/encoder/layer_L/output/LayerNorm/gamma, beta| (H,)         |
| pooler/kernel, bias (T)                  | pooler.dense.weight, .bias                    | bert/pooler/dense/kernel, bias                   | (H, H)       |
| mlm_head/transform/kernel, bias (T)      | cls.predictions.transform.dense.*             | cls/predictions/transform/dense/kernel, bias     | (H, H)       |
| mlm_head/transform_norm/gamma, beta      | cls.predictions.transform.LayerNorm.*         | cls/predictions/transform/LayerNorm/gamma, beta  | (H,)         |
| mlm_head/output_bias                     | cls.predictions.bias                          | cls/predictions/output_bias                      | (V,)         |
| (tied to token_embedding)                | cls.predictions.decoder.weight (not stored)   | (none: modeling.py ties it)                      |              |
| nsp_head/seq_relationship/kernel (T)     | cls.seq_relationship.weight (2, H)            | cls/seq_relationship/output_weights (2, H)       | (H, 2)       |
| nsp_head/seq_relationship/bias           | cls.seq_relationship.bias                     | cls/seq_relationship/output_bias                 | (2,)         |

(T): transposed between bert_keras / Google (in, out) and Hugging Face (out, in),
except Google's `output_weights`, which is stored (2, H) like Hugging Face.
Older HF checkpoints spell LayerNorm `gamma`/`beta`; they are read too.

The checkpoint *configs* (`config.json`, `bert_config.json`) are read and written through the
hyperparameter table in `pipeline.contract.model_config.BertConfig`, which gives each
hyperparameter's key in both formats (`encoder_arguments`, `checkpoint_config`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
from pydantic import ValidationError

from pipeline.contract.checkpoint import GOOGLE, HF, CheckpointSpec
from pipeline.contract.errors import UserError
from pipeline.contract.model_config import BertConfig, hyperparameters

log = logging.getLogger(__name__)

SAFETENSORS, PYTORCH_BIN, HF_CONFIG = "model.safetensors", "pytorch_model.bin", "config.json"
MLM_HEAD, NSP_HEAD = "MLM head", "NSP head"
HYPERPARAMETERS = hyperparameters(BertConfig)  # name, default, HF key, Google key, per hyperparameter
FORMAT_NAMES = {HF: "Hugging Face", GOOGLE: "Google"}


# ---- the mapping ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Slot:
    """One canonical (HF) tensor and where it lives in a bert_keras variable."""

    name: str
    variable: object  # keras.Variable
    transpose: bool = False  # HF (out, in) vs Keras (in, out)
    columns: tuple[int, int] | None = None  # a slice of the last axis (fused QKV)
    group: str = "encoder"


def _dense(prefix, layer, group="encoder", columns=None):
    return [
        Slot(f"{prefix}.weight", layer.kernel, transpose=True, columns=columns, group=group),
        Slot(f"{prefix}.bias", layer.bias, columns=columns, group=group),
    ]


def _norm(prefix, layer, group="encoder"):
    return [Slot(f"{prefix}.weight", layer.gamma, group=group), Slot(f"{prefix}.bias", layer.beta, group=group)]


def encoder_of(model):
    from bert_keras.encoder import BertEncoder

    if isinstance(model, BertEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, BertEncoder):
        raise TypeError(f"{type(model).__name__} is neither a BertEncoder nor a model with an .encoder")
    return encoder


def slots(model) -> list[Slot]:
    """Every canonical tensor of `model` (a BertEncoder, or a model with .encoder and maybe heads)."""
    enc = encoder_of(model)
    if enc.normalize_first:
        raise UserError("a pre-LN encoder (model.normalize_first: true) has no Hugging Face or Google BERT layout: "
                        "it is saved and loaded as bertpipe weights only")
    h = enc.hidden_size
    out = [
        Slot("embeddings.word_embeddings.weight", enc.token_embedding.embeddings),
        Slot("embeddings.position_embeddings.weight", enc.position_embedding.embeddings),
        Slot("embeddings.token_type_embeddings.weight", enc.segment_embedding.embeddings),
        *_norm("embeddings.LayerNorm", enc.embedding_norm),
    ]
    for i, block in enumerate(enc.blocks):
        p = f"encoder.layer.{i}"
        for j, part in enumerate(("query", "key", "value")):
            out += _dense(f"{p}.attention.self.{part}", block.qkv, columns=(j * h, (j + 1) * h))
        out += _dense(f"{p}.attention.output.dense", block.attention_output)
        out += _norm(f"{p}.attention.output.LayerNorm", block.attention_norm)
        out += _dense(f"{p}.intermediate.dense", block.intermediate)
        out += _dense(f"{p}.output.dense", block.output_dense)
        out += _norm(f"{p}.output.LayerNorm", block.output_norm)
    out += _dense("pooler.dense", enc.pooler)
    mlm, nsp = getattr(model, "mlm_head", None), getattr(model, "nsp_head", None)
    if mlm is not None:
        out += _dense("cls.predictions.transform.dense", mlm.transform, group=MLM_HEAD)
        out += _norm("cls.predictions.transform.LayerNorm", mlm.transform_norm, group=MLM_HEAD)
        out.append(Slot("cls.predictions.bias", mlm.output_bias, group=MLM_HEAD))
    if nsp is not None:
        out += _dense("cls.seq_relationship", nsp.dense, group=NSP_HEAD)
    return out


def canonical_name(name: str) -> str:
    """HF checkpoint key -> canonical name: drop the `bert.` prefix, old gamma/beta spelling."""
    name = name.removeprefix("bert.")
    if name.endswith(".gamma") or name.endswith(".beta"):
        name = name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")
    return name


# ---- state dicts <-> a model -------------------------------------------------
@dataclasses.dataclass
class LoadReport:
    source: str
    loaded: int = 0
    initialized: list[str] = dataclasses.field(default_factory=list)  # groups not in the checkpoint
    ignored: list[str] = dataclasses.field(default_factory=list)  # checkpoint tensors not used

    def summary(self) -> str:
        line = f"loaded {self.loaded} tensors from {self.source}"
        if self.initialized:
            line += f"; freshly initialized (not in checkpoint): {', '.join(self.initialized)}"
        if self.ignored:
            line += f"; ignored {len(self.ignored)} checkpoint tensors ({', '.join(self.ignored[:3])}{', ...' if len(self.ignored) > 3 else ''})"
        return line


def export_state(model, slot_list: list[Slot] | None = None) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy array in Hugging Face layout.

    slot_list: another family's mapping (`bert_keras.modernbert.weights`); default: BERT's `slots(model)`.
    """
    state = {}
    for s in slot_list if slot_list is not None else slots(model):
        value = np.asarray(s.variable.numpy(), np.float32)
        if s.columns is not None:
            value = value[..., s.columns[0] : s.columns[1]]
        state[s.name] = np.ascontiguousarray(value.T if s.transpose else value)
    return state


def assign_state(model, state: dict[str, np.ndarray], source: str, slot_list: list[Slot] | None = None) -> LoadReport:
    """Copy a canonical state dict into `model`.

    The whole encoder must be present (a missing encoder tensor is an error);
    a head whose tensors are all missing keeps its fresh initialization and is
    named in the report; a partly present head is an error. slot_list: as in `export_state`.
    """
    state = {canonical_name(k): v for k, v in state.items()}
    report = LoadReport(source)
    all_slots = slot_list if slot_list is not None else slots(model)
    by_group: dict[str, list[Slot]] = {}
    for s in all_slots:
        by_group.setdefault(s.group, []).append(s)
    pending: dict[int, tuple[object, np.ndarray]] = {}  # id(variable) -> (variable, new value)
    for group, group_slots in by_group.items():
        missing = [s.name for s in group_slots if s.name not in state]
        if missing and (group == "encoder" or len(missing) < len(group_slots)):
            raise UserError(f"{source} lacks {len(missing)} {group} tensors (first: {missing[0]}): not a BERT checkpoint of this layout")
        if missing:
            report.initialized.append(group)
            continue
        for s in group_slots:
            var = s.variable
            new = pending.get(id(var), (var, np.array(var.numpy(), np.float32)))[1]
            value = np.asarray(state[s.name], np.float32)
            value = value.T if s.transpose else value
            target = new[..., s.columns[0] : s.columns[1]] if s.columns is not None else new
            if value.shape != target.shape:
                raise UserError(
                    f"{source}: tensor {s.name} has shape {tuple(state[s.name].shape)}, the model wants "
                    f"{tuple(target.T.shape if s.transpose else target.shape)}: model config and checkpoint differ"
                )
            target[...] = value
            pending[id(var)] = (var, new)
            report.loaded += 1
    for var, value in pending.values():
        var.assign(value)
    used = {s.name for s in all_slots}
    report.ignored = sorted(k for k in state if k not in used)
    log.info(report.summary())
    return report


# ---- configs ---------------------------------------------------------------------
def encoder_arguments(cfg: dict, fmt: str, source: str) -> dict:
    """A checkpoint's config (`fmt`: HF config.json or Google bert_config.json) -> `BertEncoder`
    arguments, key by key from the hyperparameter table. A key the format lacks, or the file
    leaves out, takes the table's default (which is BERT's); the sizes must be there."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise UserError(f"{source}: hidden_act {act!r} is not supported; bert_keras implements BERT's exact 'gelu'")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{source}: position_embedding_type {cfg['position_embedding_type']!r}; only 'absolute' is BERT")
    args = {}
    for h in HYPERPARAMETERS:
        key = h.key(fmt)
        if key is not None and key in cfg:
            args[h.name] = cfg[key]
        elif key is not None and h.required:
            raise UserError(f"{source} lacks key {key!r}: not a BERT config")
    try:
        checked = BertConfig(**args)  # the table's types and checks (hidden_size divisible by num_heads, ...)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{source}: not a valid BERT config ({where + ': ' if where else ''}"
                        f"{first['msg'].removeprefix('Value error, ')})") from None
    return {name: getattr(checked, name) for name in args}


def checkpoint_config(values: dict, fmt: str) -> dict:
    """Hyperparameter values (by our names; missing ones at their default) -> the keys of `fmt`'s
    config. A value the format cannot hold (no key) other than the default is an error."""
    out = {}
    for h in HYPERPARAMETERS:
        value = values.get(h.name, h.default)
        key = h.key(fmt)
        if key is not None:
            out[key] = value
        elif value != h.default:
            raise UserError(f"model.{h.name} {value!r} cannot be written to a {FORMAT_NAMES[fmt]} BERT checkpoint "
                            f"(its config has no key for it, so it would load as {h.default!r})")
    return out


def hf_config(encoder, architecture: str = "BertModel") -> dict:
    """A transformers-compatible config.json for `encoder`."""
    return {
        "architectures": [architecture],
        "model_type": "bert",
        **checkpoint_config({h.name: getattr(encoder, h.name) for h in HYPERPARAMETERS}, HF),
        "hidden_act": "gelu",
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _check_compatible(model, kwargs: dict, source: str) -> None:
    enc = encoder_of(model)
    diffs = [
        f"{h.name} {kwargs.get(h.name, h.default)} vs {getattr(enc, h.name)}"
        for h in HYPERPARAMETERS
        if h.shape and kwargs.get(h.name, h.default) != getattr(enc, h.name)
    ]
    if diffs:
        raise UserError(f"{source} does not fit the model (checkpoint vs model: {'; '.join(diffs)}): set model.* to the checkpoint's config")


# ---- Hugging Face files -------------------------------------------------------------
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path} not found: a checkpoint directory needs its config file") from None
    except ValueError:
        raise UserError(f"{path} is not valid JSON") from None


def read_hf_checkpoint(path_dir: str, allow_pickle: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, tensors) of a Hugging Face BERT directory."""
    cfg = _read_json(os.path.join(path_dir, HF_CONFIG))
    st, pt = os.path.join(path_dir, SAFETENSORS), os.path.join(path_dir, PYTORCH_BIN)
    if os.path.exists(st):
        from safetensors.numpy import load_file

        return cfg, load_file(st)
    if os.path.exists(pt):
        if not allow_pickle:
            raise UserError(
                f"{pt} is a pickle (it can run code when loaded): convert it to {SAFETENSORS}, or pass allow_pickle=True if you trust it"
            )
        import torch

        tensors = torch.load(pt, map_location="cpu", weights_only=True)
        return cfg, {k: v.float().numpy() for k, v in tensors.items()}
    raise UserError(f"{path_dir} holds neither {SAFETENSORS} nor {PYTORCH_BIN}")


def build_pretraining_model(cfg: dict, fmt: str, source: str):
    """A fresh `BertPretrainingModel` shaped by a checkpoint's config (format `fmt`)."""
    from bert_keras.encoder import BertEncoder
    from bert_keras.pretraining_model import BertPretrainingModel

    return BertPretrainingModel(BertEncoder(**encoder_arguments(cfg, fmt, source), name="bert_encoder"))


def load_hf_checkpoint(path_dir: str, allow_pickle: bool = False):
    """(BertPretrainingModel with the checkpoint's weights, LoadReport) from a HF directory."""
    source = str(CheckpointSpec(HF, path_dir))
    cfg, state = read_hf_checkpoint(path_dir, allow_pickle)
    model = build_pretraining_model(cfg, HF, os.path.join(path_dir, HF_CONFIG))
    return model, assign_state(model, state, source)


def save_hf_checkpoint(model, path_dir: str) -> str:
    """Write config.json + model.safetensors that transformers' BertModel / BertForPreTraining
    (BertForMaskedLM for an MLM-only model) load."""
    from safetensors.numpy import save_file

    from pipeline.contract.atomic import atomic_write_text

    with_heads = getattr(model, "mlm_head", None) is not None
    state = export_state(model)
    if with_heads:  # BertForPreTraining layout: encoder under `bert.`
        state = {(k if k.startswith("cls.") else f"bert.{k}"): v for k, v in state.items()}
    os.makedirs(path_dir, exist_ok=True)
    arch = "BertModel"
    if with_heads:  # MLM-only pretraining has no NSP head: transformers' BertForMaskedLM
        arch = "BertForPreTraining" if getattr(model, "nsp_head", None) is not None else "BertForMaskedLM"
    atomic_write_text(os.path.join(path_dir, HF_CONFIG), json.dumps(hf_config(encoder_of(model), arch), indent=2) + "\n")
    tmp = os.path.join(path_dir, SAFETENSORS + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path_dir, SAFETENSORS))
    return path_dir


# ---- one entry point ----------------------------------------------------------------
def read_checkpoint(spec: CheckpointSpec | str, allow_pickle: bool = False) -> tuple[dict, dict[str, np.ndarray], str]:
    """`hf:DIR` or `google:DIR` -> (its config, canonical state, source text)."""
    spec = CheckpointSpec.parse(spec) if isinstance(spec, str) else spec
    if not spec.imported:
        raise UserError(f"checkpoint {spec}: bertpipe weights are loaded with keras (load_weights); "
                        "for a Hugging Face or Google checkpoint write hf:DIR or google:DIR")
    if not os.path.isdir(spec.path):
        raise UserError(f"checkpoint {spec}: {spec.path} is not a directory; use hf:DIR or google:DIR")
    if spec.format == GOOGLE:
        from bert_keras.weights_google import read_google_checkpoint

        cfg, state = read_google_checkpoint(spec.path)
    else:
        cfg, state = read_hf_checkpoint(spec.path, allow_pickle)
    return cfg, state, str(spec)


def init_from(model, spec: CheckpointSpec | str, allow_pickle: bool = False) -> LoadReport:
    """Load `hf:DIR` / `google:DIR` weights into an existing model (encoder, pretraining or task model)."""
    spec = CheckpointSpec.parse(spec) if isinstance(spec, str) else spec
    cfg, state, source = read_checkpoint(spec, allow_pickle)
    _check_compatible(model, encoder_arguments(cfg, spec.format, source), source)
    return assign_state(model, state, source)
