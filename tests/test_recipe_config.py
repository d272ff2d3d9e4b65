"""configs/recipe.yaml, the budget recipe, loads and holds the recipe the pretraining-value bench measures."""

from __future__ import annotations

import os
import sys

from pipeline.contract.config import load_config
from tests.conftest import DATA

ROOT = os.path.dirname(DATA)
RECIPE = os.path.join(ROOT, "configs", "recipe.yaml")


def test_recipe_config_is_mlm_only_30_percent_pre_ln_no_dropout_triangle_at_1e_3_with_clipping():
    cfg = load_config(RECIPE)
    assert cfg.prepare.objective == "mlm" and cfg.pretrain.nsp is False
    assert cfg.prepare.masked_lm_prob == 0.3 and cfg.prepare.dynamic
    assert cfg.prepare.max_predictions_per_seq == 39  # the prediction budget follows the rate: ceil(128 x 0.3)
    assert cfg.model.normalize_first
    assert cfg.pretrain.dropout == 0 and cfg.pretrain.attention_dropout == 0 and cfg.model.dropout == 0.1
    assert cfg.pretrain.schedule == "triangle" and cfg.pretrain.learning_rate == 1e-3 and cfg.pretrain.clip_norm == 0.5
    assert cfg.pretrain.budget and cfg.prepare.holdout_fraction > 0  # held-out loss on the fixed 15% documents
    assert cfg.finetune["era"].repeats == 3 and cfg.finetune["era"].compare_random_init


def test_the_bench_measures_the_shipped_recipe():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        from bench_pretraining_value import best_recipe
    finally:
        sys.path.pop(0)
    sets = best_recipe()
    cfg = load_config(RECIPE)
    assert sets["model.normalize_first"] is True and sets["pretrain.schedule"] == cfg.pretrain.schedule
    for key, value in sets.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
