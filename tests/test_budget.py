"""pretrain.budget: training stops at the budget with a checkpoint, the learning rate at the
schedule's end on the last step; a resumed run counts the time spent before; a token
budget is a step count. Real tiny BERT, real records, the real trainer."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_keras.encoder import build_encoder
from bert_keras.optimization import build_optimizer, make_schedule
from bert_keras.pretrain import HELDOUT, run_pretraining
from bert_keras.pretraining_model import BertPretrainingModel, pretraining_loss
from bert_keras.trainer import LoopSettings, Trainer
from pipeline.contract.config import PretrainConfig
from tests.test_data import write_records
from tests.test_trainer import TINY, batches

BUDGET = 6.0  # seconds of training time


def budget_trainer(out_dir, cfg: PretrainConfig):
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    model = BertPretrainingModel(build_encoder(TINY, 30522))
    schedule = make_schedule(cfg, None)
    opt = build_optimizer(cfg, None, model.trainable_variables, schedule=schedule)
    return Trainer(model, pretraining_loss, opt, tf.distribute.get_strategy(), str(out_dir),
                   LoopSettings.from_config(cfg), log_fn=lambda s: None, schedule=schedule)


def test_a_time_budget_stops_there_with_the_schedule_at_its_end_and_a_resume_counts_the_time_spent(tmp_path):
    ds = batches(tmp_path, 4)
    cfg = PretrainConfig(batch_size=4, budget=f"{BUDGET}s", warmup_ratio=0.2, schedule="linear", log_every=1,
                         checkpoint_every=1000, learning_rate=1e-3)
    trainer = budget_trainer(tmp_path / "run", cfg)
    first = trainer.fit(ds, None, rows_per_step=4, budget_seconds=BUDGET)
    assert first.step >= 2
    assert BUDGET <= first.train_seconds < BUDGET + 8  # within a step or two of the budget
    rates = [h["learning_rate"] for h in first.history]
    assert rates[-1] == 0.0  # the last step ran at the schedule's final value
    peak = int(np.argmax(rates))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:], strict=False))  # decays after warmup
    assert first.checkpoint.endswith(f"ckpt-{first.step}")  # stopped cleanly, with a checkpoint
    saved = tf.train.load_checkpoint(first.checkpoint)
    key = next(k for k, _ in tf.train.list_variables(first.checkpoint) if k.startswith("state/train_seconds"))
    assert saved.get_tensor(key) == pytest.approx(first.train_seconds, abs=0.5)

    # Raised budget, a new process's trainer: it continues, counting the time already spent.
    again = budget_trainer(tmp_path / "run", cfg.model_copy(update={"budget": f"{2 * BUDGET}s"}))
    second = again.fit(ds, None, rows_per_step=4, budget_seconds=2 * BUDGET)
    assert second.resumed_from == first.step and second.step > first.step
    assert again.clock.spent_before == pytest.approx(float(saved.get_tensor(key)))
    assert 2 * BUDGET <= second.train_seconds < 2 * BUDGET + 8
    assert second.history[-1]["learning_rate"] == 0.0
    # Spent: a third call trains no more.
    done = budget_trainer(tmp_path / "run", cfg.model_copy(update={"budget": f"{2 * BUDGET}s"}))
    assert done.fit(ds, None, rows_per_step=4, budget_seconds=2 * BUDGET).step == second.step


def test_a_token_budget_is_a_step_count_and_ends_at_the_schedules_end(tmp_path):
    data_dir = str(tmp_path / "data")
    write_records(data_dir, num_records=64, max_tokens=24)  # seq 64, 2 shards
    cfg = PretrainConfig(batch_size=8, budget="5k tokens", schedule="wsd", decay_ratio=0.5, warmup_steps=2,
                         log_every=1, checkpoint_every=100, eval_every=5, eval_steps=1, eval_batch_size=4,
                         precision="float32", learning_rate=1e-3)
    result = run_pretraining(TINY, cfg, data_dir, str(tmp_path / "out"), vocab_size=30522, seed=0,
                             log_fn=lambda s: None)
    assert result["step"] == 10  # ceil(5000 / (8 rows x 64 tokens))
    rates = [h["learning_rate"] for h in result["history"]]
    assert rates[-1] == 0.0 and result["learning_rate_final"] == 0.0
    assert max(rates) == pytest.approx(1e-3)  # stable at the peak before the decay
    with open(os.path.join(tmp_path, "out", HELDOUT)) as fh:
        heldout = [json.loads(line) for line in fh]
    assert [h["step"] for h in heldout] == [5, 10]
    assert all("eval_mlm_loss" in h and h["train_seconds"] > 0 for h in heldout)
    assert heldout[1]["train_seconds"] > heldout[0]["train_seconds"]
