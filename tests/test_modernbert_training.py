"""ModernBERT trains through bertpipe's trainer: the fused training path computes the inference
path's function, and a few real steps lower the MLM loss."""

import numpy as np
import tensorflow as tf

from bert_keras.modernbert.encoder import ModernBertEncoder
from bert_keras.modernbert.heads import ModernBertMaskedLM
from bert_keras.pretraining_model import MLM_BIAS, MLM_LOGITS, MLM_UNBIASED, mlm_only_loss
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract import schema

VOCAB = 200


def _model(**kwargs):
    encoder = ModernBertEncoder(VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=4, local_attention=16, **kwargs)
    return ModernBertMaskedLM(encoder)


def _batch(seed=0, rows=4, seq=48, preds=8):
    """Packed rows (two instances each, the second shorter) with masked positions in both."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, seq)).astype(np.int32)
    mask = np.zeros((rows, seq), np.int32)
    mask[:, :30], mask[:, 30:44] = 1, 2
    ids[mask == 0] = 0
    pos = np.sort(np.stack([rng.choice(44, preds, replace=False) for _ in range(rows)]), axis=1).astype(np.int32)
    return {schema.TOKEN_IDS: ids, schema.PADDING_MASK: mask, schema.SEGMENT_IDS: np.zeros_like(ids),
            schema.MASK_POSITIONS: pos, schema.MASK_IDS: np.take_along_axis(ids, pos, 1),
            schema.MASK_WEIGHTS: np.ones(pos.shape, np.float32)}


def test_training_outputs_and_gradients_equal_the_inference_path():
    model = _model()
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    with tf.GradientTape(persistent=True) as tape:
        trained = model(batch, training=True)
        inferred = model(batch, training=False)
        train_loss, _ = mlm_only_loss(batch, trained)
        infer_loss, _ = mlm_only_loss(batch, inferred)
    logits = trained[MLM_UNBIASED].numpy() + trained[MLM_BIAS].numpy()
    np.testing.assert_allclose(logits, inferred[MLM_LOGITS].numpy(), rtol=1e-5, atol=1e-5)
    variables = model.trainable_variables
    for g_train, g_infer, v in zip(tape.gradient(train_loss, variables), tape.gradient(infer_loss, variables),
                                   variables, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(g_train).numpy(), tf.convert_to_tensor(g_infer).numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=v.path)


def test_a_few_trainer_steps_lower_the_mlm_loss(tmp_path):
    from bert_keras.optimization import build_optimizer
    from pipeline.contract.config import PretrainConfig

    model = _model()
    cfg = PretrainConfig(batch_size=4, steps=200, learning_rate=3e-3, warmup_steps=0)  # 30 of them run
    optimizer = build_optimizer(cfg, cfg.steps, model.trainable_variables)
    trainer = Trainer(model, mlm_only_loss, optimizer, tf.distribute.get_strategy(), str(tmp_path),
                      LoopSettings.from_config(cfg), log_fn=lambda s: None)
    data = tf.data.Dataset.from_tensors(_batch()).repeat()
    step = trainer.step_function()
    iterator = iter(trainer.distribute(data))
    losses = [float(step(iterator, tf.constant(0.0))[0]) for _ in range(30)]  # progress: no budget here
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0]  # from ln(200) = 5.3 towards memorizing the fixed batch
