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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from pipeline.contract.errors import UserError

log = logging.getLogger(__name__)

SAFETENSORS, PYTORCH_BIN, HF_CONFIG = "model.safetensors", "pytorch_model.bin", "config.json"
MLM_HEAD, NSP_HEAD = "MLM head", "NSP head"


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


def _encoder_of(model):
    from bert_keras.encoder import BertEncoder

    if isinstance(model, BertEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, BertEncoder):
        raise TypeError(f"{type(model).__name__} is neither a BertEncoder nor a model with an .encoder")
    return encoder


def slots(model) -> list[Slot]:
    """Every canonical tensor of `model` (a BertEncoder, or a model with .encoder and maybe heads)."""
    enc = _encoder_of(model)
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


# Tensors a checkpoint may hold that bert_keras does not keep (tied or buffers).
_IGNORABLE = ("embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


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
def encoder_kwargs_from_config(cfg: dict, source: str = "config.json") -> dict:
    """HF config.json / Google bert_config.json -> `BertEncoder` keyword arguments."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise UserError(f"{source}: hidden_act {act!r} is not supported; bert_keras implements BERT's exact 'gelu'")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{source}: position_embedding_type {cfg['position_embedding_type']!r}; only 'absolute' is BERT")
    try:
        return dict(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            dropout=float(cfg.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(cfg.get("attention_probs_dropout_prob", 0.1)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            layer_norm_epsilon=float(cfg.get("layer_norm_eps", 1e-12)),
        )
    except KeyError as err:
        raise UserError(f"{source} lacks key {err.args[0]!r}: not a BERT config") from None


def model_config_fields(cfg: dict, source: str = "config.json") -> dict:
    """HF / Google config -> the matching `pipeline.contract.config.ModelConfig` fields."""
    kwargs = encoder_kwargs_from_config(cfg, source)
    kwargs.pop("layer_norm_epsilon")
    return kwargs


def hf_config(encoder, architecture: str = "BertModel") -> dict:
    """A transformers-compatible config.json for `encoder`."""
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": encoder.vocab_size,
        "hidden_size": encoder.hidden_size,
        "num_hidden_layers": encoder.num_layers,
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": encoder.dropout,
        "attention_probs_dropout_prob": encoder.attention_dropout,
        "max_position_embeddings": encoder.max_position_embeddings,
        "type_vocab_size": encoder.type_vocab_size,
        "initializer_range": encoder.initializer_range,
        "layer_norm_eps": encoder.layer_norm_epsilon,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _check_compatible(model, kwargs: dict, source: str) -> None:
    enc = _encoder_of(model)
    diffs = [
        f"{k} {kwargs[k]} vs {getattr(enc, k)}"
        for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size")
        if kwargs[k] != getattr(enc, k)
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


def _build_pretraining_model(cfg: dict, source: str):
    from bert_keras.encoder import BertEncoder
    from bert_keras.pretraining_model import BertPretrainingModel

    return BertPretrainingModel(BertEncoder(**encoder_kwargs_from_config(cfg, source), name="bert_encoder"))


def load_hf_checkpoint(path_dir: str, allow_pickle: bool = False):
    """(BertPretrainingModel with the checkpoint's weights, LoadReport) from a HF directory."""
    source = f"hf:{path_dir}"
    cfg, state = read_hf_checkpoint(path_dir, allow_pickle)
    model = _build_pretraining_model(cfg, os.path.join(path_dir, HF_CONFIG))
    return model, assign_state(model, state, source)


def save_hf_checkpoint(model, path_dir: str) -> str:
    """Write config.json + model.safetensors that transformers' BertModel / BertForPreTraining load."""
    from safetensors.numpy import save_file

    from pipeline.contract.atomic import atomic_write_text

    with_heads = getattr(model, "mlm_head", None) is not None
    state = export_state(model)
    if with_heads:  # BertForPreTraining layout: encoder under `bert.`
        state = {(k if k.startswith("cls.") else f"bert.{k}"): v for k, v in state.items()}
    os.makedirs(path_dir, exist_ok=True)
    arch = "BertForPreTraining" if with_heads else "BertModel"
    atomic_write_text(os.path.join(path_dir, HF_CONFIG), json.dumps(hf_config(_encoder_of(model), arch), indent=2) + "\n")
    tmp = os.path.join(path_dir, SAFETENSORS + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path_dir, SAFETENSORS))
    return path_dir


# ---- one entry point ----------------------------------------------------------------
def read_checkpoint(spec: str, allow_pickle: bool = False) -> tuple[dict, dict[str, np.ndarray], str]:
    """`hf:DIR`, `google:DIR` (or a plain DIR holding config.json) -> (config, canonical state, source)."""
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("hf", "google") else ("hf", "", spec)
    if not os.path.isdir(path):
        raise UserError(f"init_from {spec!r}: {path} is not a directory; use hf:DIR or google:DIR")
    if kind == "google":
        from bert_keras.weights_google import read_google_checkpoint

        cfg, state = read_google_checkpoint(path)
    else:
        cfg, state = read_hf_checkpoint(path, allow_pickle)
    return cfg, state, f"{kind}:{path}"


def init_from(model, spec: str, allow_pickle: bool = False) -> LoadReport:
    """Load `hf:DIR` / `google:DIR` weights into an existing model (encoder, pretraining or task model)."""
    cfg, state, source = read_checkpoint(spec, allow_pickle)
    _check_compatible(model, encoder_kwargs_from_config(cfg, source), source)
    return assign_state(model, state, source)
