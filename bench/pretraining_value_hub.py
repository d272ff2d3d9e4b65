"""The keras-hub start of bench_pretraining_value.py: `BertMaskedLM` pretrained for the same tokens, then handed to
bertpipe's fine-tuning as bertpipe encoder weights.

keras-hub has no pretraining pipeline (its `examples/bert_pretraining` was removed), so it reads the classic run's
records (prepare's 15% static whole-word masks; its NSP labels unused: `BertMaskedLM` is MLM only) through
bertpipe's reader, and trains with its standard `fit`: `BertBackbone` of the same size, AdamW with the classic
run's settings (peak 5e-4, 10% warmup then linear decay, weight decay 0.01 off LayerNorm and biases, clip 1.0).
Held-out MLM loss is measured on the same fixed held-out documents as bertpipe's runs, at the same cadence.

Its weights are then written into a bertpipe `BertEncoder` by the Hugging Face names of `bert_keras/weights.py`
(the inverse of keras-hub's own `utils/transformers/convert_bert.py`), so it is fine-tuned exactly like the other
starts. keras-hub's feed-forward uses the tanh approximation of GELU and bertpipe the exact erf form: the
converted encoder differs from keras-hub's by that approximation (below 1e-3 per activation).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

HUB_WEIGHTS = "hub_encoder.weights.h5"
RESULT = "pretrain_result.json"


def hf_state(backbone) -> dict[str, np.ndarray]:
    """keras-hub BertBackbone -> {Hugging Face BertModel name: array in HF layout ((out, in) kernels)}."""
    h = backbone.hidden_dim
    state = {
        "embeddings.word_embeddings.weight": backbone.get_layer("token_embedding").embeddings,
        "embeddings.position_embeddings.weight": backbone.get_layer("position_embedding").position_embeddings,
        "embeddings.token_type_embeddings.weight": backbone.get_layer("segment_embedding").embeddings,
        "embeddings.LayerNorm.weight": backbone.get_layer("embeddings_layer_norm").gamma,
        "embeddings.LayerNorm.bias": backbone.get_layer("embeddings_layer_norm").beta,
        "pooler.dense.weight": np.transpose(backbone.get_layer("pooled_dense").kernel),
        "pooler.dense.bias": backbone.get_layer("pooled_dense").bias,
    }
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attn, p = block._self_attention_layer, f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            dense = getattr(attn, f"{part}_dense")
            # kernel (H, heads, head_dim) -> (H, H) (in, out) -> HF (out, in); bias (heads, head_dim) -> (H,)
            state[f"{p}.attention.self.{part}.weight"] = np.transpose(np.reshape(dense.kernel, (h, h)))
            state[f"{p}.attention.self.{part}.bias"] = np.reshape(dense.bias, (h,))
        # output kernel (heads, head_dim, H) -> (H, H) (in, out) -> HF (out, in)
        state[f"{p}.attention.output.dense.weight"] = np.transpose(np.reshape(attn.output_dense.kernel, (h, h)))
        state[f"{p}.attention.output.dense.bias"] = attn.output_dense.bias
        for name, norm in (("attention.output.LayerNorm", block._self_attention_layer_norm),
                           ("output.LayerNorm", block._feedforward_layer_norm)):
            state[f"{p}.{name}.weight"], state[f"{p}.{name}.bias"] = norm.gamma, norm.beta
        for name, dense in (("intermediate.dense", block._feedforward_intermediate_dense),
                            ("output.dense", block._feedforward_output_dense)):
            state[f"{p}.{name}.weight"], state[f"{p}.{name}.bias"] = np.transpose(dense.kernel), dense.bias
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def to_bertpipe_encoder(backbone, model: dict, out_path: str):
    """Write the backbone's weights as bertpipe encoder weights (`init: PATH` of a fine-tuning task)."""
    from bert_keras.encoder import build_encoder
    from bert_keras.weights import assign_state
    from pipeline.contract.config import BertConfig

    encoder = build_encoder(BertConfig(**model), backbone.vocabulary_size)
    report = assign_state(encoder, hf_state(backbone), "keras-hub BertBackbone")
    encoder.save_weights(out_path)
    return encoder, report


def pretrain_keras_hub(data_dir: str, out_dir: str, model: dict, batch: int, steps: int, eval_every: int,
                       quick: bool) -> float:
    """Train, evaluate on the held-out documents every `eval_every` steps, convert; returns wall seconds."""
    import keras
    import keras_hub
    import tensorflow as tf

    from bert_keras import data, distribute
    from bert_keras.optimization import make_schedule, no_decay
    from pipeline.contract import schema
    from pipeline.contract.config import PretrainConfig

    began = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    result_path = os.path.join(out_dir, RESULT)
    if os.path.exists(result_path) and os.path.exists(os.path.join(out_dir, HUB_WEIGHTS)):
        return 0.0
    inputs = (schema.TOKEN_IDS, schema.SEGMENT_IDS, schema.PADDING_MASK, schema.MASK_POSITIONS)
    manifest = data.open_manifest(data_dir, kinds=data.PRETRAIN_KINDS)
    held = data.heldout_split(data_dir, manifest)
    eval_steps, eval_batch = (4, 32) if quick else (10, 64)  # as the bertpipe runs' pretrain.eval_*
    policy = distribute.resolve_precision("auto", tf.distribute.get_strategy())
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=manifest.vocab_size, num_layers=model["num_layers"], num_heads=model["num_heads"],
        hidden_dim=model["hidden_size"], intermediate_dim=model["intermediate_size"],
        max_sequence_length=model["max_position_embeddings"])
    hub = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    cfg = PretrainConfig(learning_rate=5e-4, warmup_ratio=0.1)
    opt = keras.optimizers.AdamW(make_schedule(cfg, steps), beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                                 weight_decay=0.01, global_clipnorm=1.0)
    opt.exclude_from_weight_decay(var_list=[v for v in hub.trainable_variables if no_decay(v)])
    hub.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                weighted_metrics=["accuracy"])

    def features(b):
        return {k: b[k] for k in inputs}, b[schema.MASK_IDS], b[schema.MASK_WEIGHTS]

    train = data.make_dataset(data_dir, manifest, which=data.train_split(manifest), batch_size=batch, training=True,
                              seed=0).map(features)
    evals = list(data.make_dataset(held.data_dir, held.manifest, which=held.which, batch_size=eval_batch,
                                   training=False, drop_remainder=True).map(features).take(eval_steps))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    def heldout_loss() -> float:
        # Per batch: the mean over masked targets (weights), then the mean over batches, as bertpipe's evaluate.
        losses = []
        for x, y, w in evals:
            # predict_on_batch: the compiled graph, as fit's; an eager call under mixed_bfloat16 fails in
            # keras-hub's MaskedLMHead (its float32 bias added to bfloat16 outputs, keras-hub 0.32).
            logits = tf.cast(hub.predict_on_batch(x), tf.float32)
            losses.append(float(loss_fn(y, logits, sample_weight=w)) / max(float(tf.reduce_sum(w)), 1e-6))
        return sum(losses) / len(losses)

    heldout: list[dict] = []
    clock = {"train": 0.0, "since": 0.0}

    class Heldout(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            clock["since"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            clock["train"] += time.perf_counter() - clock["since"]  # evaluation time stays out, as in bertpipe
            step = min((epoch + 1) * eval_every, steps)
            heldout.append({"step": step, "train_seconds": round(clock["train"], 2), "eval_mlm_loss": heldout_loss(),
                            "train_mlm_loss": (logs or {}).get("loss")})

    # One Keras "epoch" = eval_every steps of the endless shuffled stream; the last one takes the remainder.
    epochs = -(-steps // eval_every)
    hub.fit(train, steps_per_epoch=eval_every, epochs=epochs, verbose=0, callbacks=[Heldout()])
    encoder, report = to_bertpipe_encoder(backbone, model, os.path.join(out_dir, HUB_WEIGHTS))
    done = epochs * eval_every
    result = {"step": done, "global_batch_size": batch, "seq_length": manifest.seq_length, "heldout": heldout,
              "eval_mlm_loss": heldout[-1]["eval_mlm_loss"], "train_seconds": clock["train"],
              "train_sequences_per_second": done * batch / max(clock["train"], 1e-9), "objectives": "mlm",
              "precision": policy, "converted": str(report), "heldout_data": held.data_dir}
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, default=str)
    return round(time.perf_counter() - began, 1)
