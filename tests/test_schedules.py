"""Schedules follow the stage: halving or doubling a shipped recipe's stages moves every schedule point (warm-ups,
a loss's start, a gate's interval and start, EMA half-lives) with them, so ``--budget`` and ``bench``, which
rescale stages, keep the proportions each recipe was tuned at."""

import logging

import pytest

from semivit.config import load_yaml
from semivit.methods.base import method_params, schedule_points
from semivit.pipeline import RECIPES, stage_configs

RECIPE_PATHS = sorted(RECIPES.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPE_PATHS, ids=[p.stem for p in RECIPE_PATHS])
def test_every_schedule_point_of_every_recipe_moves_with_its_stage_length(path):
    _, configs = stage_configs(load_yaml(path), {})
    for k, cfg in enumerate(configs, 1):
        steps = cfg.train.steps or 1000  # a stage given in epochs: its length comes from the data
        points = schedule_points(cfg, steps)
        for factor in (0.5, 2.0):
            scaled = schedule_points(cfg, round(steps * factor))
            assert scaled.keys() == points.keys()
            for name, value in points.items():
                assert scaled[name] == pytest.approx(value * factor, rel=0.02, abs=1.0), \
                    f"{path.stem} stage {k} ({cfg.train.method}): {name} is {value:g} at {steps} steps and " \
                    f"{scaled[name]:g} at {round(steps * factor)}, not ×{factor}"


def test_the_schedule_points_the_methods_declare_are_there():
    _, (semiformer,) = stage_configs(load_yaml(RECIPES / "semiformer.yaml"), {})
    assert schedule_points(semiformer, 1000)["method.unlabeled_start"] == 125  # the 125 steps it was tuned at
    assert schedule_points(semiformer, 200)["method.unlabeled_start"] == 25  # was 125: 62% of a short stage
    _, (ssmae,) = stage_configs(load_yaml(RECIPES / "ssmae.yaml"), {})
    assert schedule_points(ssmae, 2800)["method.gate_every"] == 100
    assert schedule_points(ssmae, 200)["method.gate_every"] == 7  # was 100: one useful check in 200 steps


def test_an_explicit_momentum_without_its_reference_length_is_per_step(caplog):
    """The paper's 0.9999 given alone is 0.9999 a step, not 0.9999^(2000/K) (which leaves a 200,000-step run's
    teacher almost frozen); the default momentum keeps its declared reference; an explicit pair is scaled."""
    caplog.set_level(logging.INFO, logger="semivit")
    assert method_params("ema_teacher", {"ema": 0.9999}).ema_ref_steps is None
    assert "per step" in caplog.text
    assert method_params("ema_teacher", {}).ema_ref_steps == 2000
    assert method_params("ema_teacher", {"ema": 0.999, "ema_ref_steps": 5000}).ema_ref_steps == 5000
    assert method_params("byol", {"base_momentum": 0.996}).momentum_ref_steps is None
