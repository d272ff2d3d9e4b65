"""Every learning-rate shape against a reference formula written out in numpy, over
steps (BERT's counting) and over the share of a budget (the last step at the end)."""

import numpy as np
import pytest

from bert_keras.optimization import TRIANGLE_START, BudgetSchedule, WarmupDecay
from pipeline.contract.config import PretrainConfig

PEAK, W, T, D = 1e-3, 10, 110, 0.25


def reference(kind, i):
    """google-research/bert's warmup + polynomial decay (optimization.py), ModernBERT's
    warmup-stable-decay and JonasGeiping/cramming's get_budget_triangle, at step i of T."""
    if kind == "triangle":  # cramming: min(base + x (1 - base) / (1 - falloff), 1 / falloff - x / falloff)
        x = i / T
        return PEAK * min(TRIANGLE_START + x * (1 - TRIANGLE_START) / (1 - D), (1 - x) / D)
    if i < W:
        return PEAK * (i + 1) / W
    if kind == "constant":
        return PEAK
    if kind == "wsd":
        return PEAK * min(1.0, (1 - i / T) / D)
    power = 1.0 if kind == "linear" else 2.0
    return PEAK * (1 - min(i - W, T - W) / (T - W)) ** power


@pytest.mark.parametrize("kind", ["linear", "polynomial", "constant", "wsd", "triangle"])
def test_step_schedules_follow_their_reference(kind):
    schedule = WarmupDecay(PEAK, W, T, kind, decay_share=D)
    got = np.array([float(schedule(i)) for i in range(T + 5)])
    want = np.array([reference(kind, min(i, T)) for i in range(T + 5)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "polynomial", "constant", "wsd", "triangle"])
def test_budget_schedules_are_the_same_shapes_over_the_share_spent_and_end_there(kind):
    import tensorflow as tf

    progress = tf.Variable(0.0)
    schedule = BudgetSchedule(PEAK, W / T, kind, decay_share=D)
    schedule.bind(progress=progress)
    for p in np.linspace(0, 1, 23):
        progress.assign(p)
        share = W / T
        if kind == "triangle":
            want = PEAK * min(TRIANGLE_START + p * (1 - TRIANGLE_START) / (1 - D), (1 - p) / D)
        elif p < share:
            want = PEAK * p / share
        elif kind == "constant":
            want = PEAK
        elif kind == "wsd":
            want = PEAK * min(1.0, (1 - p) / D)
        else:
            want = PEAK * (1 - (p - share) / (1 - share)) ** (1.0 if kind == "linear" else 2.0)
        assert float(schedule(0)) == pytest.approx(want, rel=1e-5, abs=1e-9), p
    progress.assign(1.0)
    if kind == "constant":
        assert float(schedule(0)) == pytest.approx(PEAK)
    else:
        assert float(schedule(0)) == 0.0  # the final value, exactly


def test_a_budget_warms_up_over_steps_when_warmup_steps_is_given():
    import tensorflow as tf

    step, progress = tf.Variable(0, dtype=tf.int64), tf.Variable(0.5)
    schedule = BudgetSchedule(PEAK, 0.1, "linear", warmup_steps=4)
    schedule.bind(step=step, progress=progress)
    assert float(schedule(0)) == pytest.approx(PEAK / 4)  # step 0 of 4, whatever the time
    step.assign(4)
    assert float(schedule(0)) == pytest.approx(PEAK * 0.5)  # then the decay over the whole budget


def test_a_bound_step_schedule_reads_the_trainers_step_not_the_optimizers():
    import tensorflow as tf

    step = tf.Variable(0, dtype=tf.int64)
    schedule = WarmupDecay(PEAK, W, T)
    schedule.bind(step=step)
    assert float(schedule(900_000)) == pytest.approx(PEAK / W)  # a later phase: its own step 0
    step.assign(60)
    assert float(schedule(0)) == pytest.approx(reference("linear", 60))


def test_budget_spellings():
    assert PretrainConfig(budget="20min").length().seconds == 1200
    assert PretrainConfig(budget="2h").length().seconds == 7200
    tokens = PretrainConfig(budget="500M tokens").length()
    assert tokens.unit == "tokens" and tokens.steps(32 * 128) == -(-500_000_000 // 4096)
    assert PretrainConfig(steps=7).length().unit == "steps"
    with pytest.raises(ValueError, match="is not a budget: write it as e.g. 20min, 2h, 90s or 500M tokens"):
        PretrainConfig(budget="20 minutes")
