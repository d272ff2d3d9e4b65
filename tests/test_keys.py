"""What a changed key does to a training run: the classes are named once (pipeline/contract/keys.py)."""

from pipeline.contract.config import PretrainConfig, TaskConfig, to_dict
from pipeline.contract.keys import LENGTH_KEYS, STEERING_KEYS, compare, key_kind, raised, result_part


def test_steering_length_and_result_keys_are_told_apart():
    assert key_kind("pretrain.log_every") == "steer" and key_kind("finetune.sentiment.keep_checkpoints") == "steer"
    assert key_kind("pretrain.eval_every") == "steer" and key_kind("pretrain.checkpoint_every") == "steer"
    assert key_kind("pretrain.steps") == "length" and key_kind("pretrain.budget") == "length"
    assert key_kind("finetune.sentiment.epochs") == "length"
    for key in ("pretrain.learning_rate", "pretrain.schedule", "model.hidden_size", "run.seed", "pretrain.optimizer"):
        assert key_kind(key) == "result", key
    # Every class names keys that exist in the config, so no name drifts away from it.
    known = set(PretrainConfig.model_fields) | set(TaskConfig.model_fields)
    assert STEERING_KEYS <= known and LENGTH_KEYS <= known


def test_a_length_is_raised_only_in_the_same_unit_and_not_shorter():
    assert raised("pretrain.steps", 20, 40) and not raised("pretrain.steps", 40, 20)
    assert raised("pretrain.budget", "20min", "1h") and raised("pretrain.budget", "500M tokens", "1B tokens")
    assert not raised("pretrain.budget", "1h", "20min")
    assert not raised("pretrain.budget", "20min", "500M tokens")  # time -> tokens: another run
    assert not raised("pretrain.budget", None, "20min")  # steps -> budget: another schedule


def _section(**pretrain):
    return {"model": {"hidden_size": 32}, "pretrain": to_dict(PretrainConfig(**pretrain)), "run.seed": 0}


def test_compare_sorts_every_changed_key_into_its_class():
    old = _section(steps=20, log_every=5)
    changes = compare(old, _section(steps=40, log_every=7))
    assert [c.key for c in changes.extended] == ["pretrain.steps"] and changes.resumable
    assert [str(c) for c in changes.steering] == ["pretrain.log_every (5 -> 7)"]
    changes = compare(old, _section(steps=10, log_every=5, learning_rate=1e-3))
    assert [c.key for c in changes.result] == ["pretrain.learning_rate", "pretrain.steps"] and not changes.resumable
    changes = compare(old, {**_section(steps=20, log_every=5), "model": {"hidden_size": 64}})
    assert [str(c) for c in changes.result] == ["model.hidden_size (32 -> 64)"]


def test_the_fingerprinted_part_leaves_out_only_steering_keys():
    part = result_part(_section(steps=20, log_every=5))
    assert "log_every" not in part["pretrain"] and "eval_steps" not in part["pretrain"]
    assert part["pretrain"]["steps"] == 20 and part["pretrain"]["learning_rate"] == 1e-4
