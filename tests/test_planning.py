"""``--budget``: stages timed, steps scaled together to fit, schedules planned for them, plan reused on resume."""

from __future__ import annotations

import json

import pytest

from semivit.errors import SemivitError
from semivit.planning import StagePlan, StageTiming, apply_plan, parse_budget, plan_budget, plan_run
from tests.conftest import tiny_config


def test_parse_budget() -> None:
    assert parse_budget("15m") == 900 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    assert parse_budget("2.5h") == 9000 and parse_budget("45") == 45 and parse_budget(30) == 30
    for bad in ("soon", "10x", "", "-5m", "0"):
        with pytest.raises(SemivitError, match="budget"):
            parse_budget(bad)


def _two_stages(tmp_path):
    from semivit.data import prepare_data

    mae = tiny_config(tmp_path, **{"train.method": "mae", "train.steps": 100, "train.batch_size": 32})
    sup = tiny_config(tmp_path, **{"train.method": "supervised", "train.steps": 300})
    return [mae, sup], prepare_data(mae.data, 0)


def test_time_stage_times_the_trainers_own_step_and_its_per_step_callbacks(tmp_path, monkeypatch) -> None:
    """The planner runs Trainer.step (AMP, accumulation, clipping) and the callbacks that work every step (the
    evaluation EMA): slowing either down shows in the timing; accumulation doubles the images per step."""
    import time

    from semivit.engine.callbacks import EMAUpdate
    from semivit.engine.trainer import Trainer
    from semivit.planning import time_stage

    configs, data = _two_stages(tmp_path)
    seconds, images, per_image = time_stage(configs[0], data, steps=2)
    assert per_image > 0  # its model over a sample of images, as the closing evaluation runs it
    assert images == 32  # the MAE stage's batch of unlabeled images
    # sleeps longer than any step here, asserted against the sleeps alone (not differences of two timings, which
    # a busy machine can shrink)
    real_step, real_ema = Trainer.step, EMAUpdate.on_step_end
    monkeypatch.setattr(Trainer, "step", lambda self, i: (time.sleep(0.5), real_step(self, i))[1])
    assert time_stage(configs[0], data, steps=2).seconds_per_step >= 0.5
    monkeypatch.setattr(EMAUpdate, "on_step_end", lambda self, ctx, r: (time.sleep(0.5), real_ema(self, ctx, r)))
    configs[0].train.ema, configs[0].train.accum_steps = 0.99, 2
    with_ema, accumulated, _ = time_stage(configs[0], data, steps=2)
    assert with_ema >= 1.0 and accumulated == 64


def test_plan_keeps_the_recipes_proportions_and_fits_the_budget(tmp_path, monkeypatch) -> None:
    from semivit import planning

    configs, data = _two_stages(tmp_path)
    # fixed timings, so the plan does not depend on how busy the test machine is
    timings = {"mae": StageTiming(0.02, 32), "supervised": StageTiming(0.01, 16)}
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: timings[cfg.train.method])
    plans = plan_budget(configs, data, budget=40.0)
    given = [c.train.steps for c in configs]
    configs = apply_plan(configs, plans)
    assert [c.train.steps for c in configs] == [p.steps for p in plans] != given
    assert plans[1].steps / plans[0].steps == pytest.approx(3.0, rel=0.02)  # 300 : 100
    assert sum(p.seconds for p in plans) == pytest.approx(40.0 * 0.9, rel=0.02)  # the budget less the reserve
    assert all(c.train.time_limit == pytest.approx(p.seconds * 1.5) for c, p in zip(configs, plans))


def test_a_capped_plan_keeps_a_fitting_recipes_own_steps_and_shrinks_one_that_does_not(tmp_path, monkeypatch):
    from semivit import planning

    configs, data = _two_stages(tmp_path)
    timings = {"mae": StageTiming(0.02, 32), "supervised": StageTiming(0.01, 16)}
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: timings[cfg.train.method])
    given = [c.train.steps for c in configs]  # 100 + 300 steps: 5 s
    capped = plan_budget(configs, data, budget=40.0, stretch=False)
    assert [p.steps for p in capped] == given
    # the unused budget is each stage's to use: a stage of seconds is not cut short by the machine's noise
    assert sum(p.time_limit for p in capped) == pytest.approx(40.0 * 0.9, rel=0.02)
    assert [c.train.time_limit for c in apply_plan(configs, capped)] == [p.time_limit for p in capped]
    assert [p.steps for p in plan_budget(configs, data, budget=40.0)] != given  # stretched to fill 40 s
    small = [p.steps for p in plan_budget(configs, data, budget=4.0, stretch=False)]  # 3.6 s after the reserve
    assert small == pytest.approx([72, 216], abs=2)  # 72% of each (the timing's own milliseconds come off too)


def test_the_plan_leaves_time_for_each_stages_evaluation(tmp_path, monkeypatch) -> None:
    """The closing test pass and the validations every eval_every steps come out of the budget before the steps
    are shared out (digits: 360 test images; the validation images of the split)."""
    from semivit import planning

    configs, data = _two_stages(tmp_path)
    n_val, n_test = len(data.split.val), len(data.test)
    configs[0].train.eval_every, configs[1].train.eval_every = 0, 50
    free = {"mae": StageTiming(0.02, 32), "supervised": StageTiming(0.01, 16)}
    costly = {k: StageTiming(t.seconds_per_step, t.images_per_step, 0.005) for k, t in free.items()}
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: free[cfg.train.method])
    before = plan_budget(configs, data, budget=40.0)
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: costly[cfg.train.method])
    after = plan_budget(configs, data, budget=40.0)
    assert all(a.steps < b.steps for a, b in zip(after, before))
    closing = (n_test + n_val) * 0.005
    assert after[0].eval_seconds == pytest.approx(closing)
    assert after[1].eval_seconds == pytest.approx(closing + n_val * after[1].steps / 50 * 0.005)
    total = sum(p.seconds + p.eval_seconds for p in after)
    assert total == pytest.approx(40.0 * 0.9 + 2 * closing * 0.1, rel=0.02)  # the reserve is on what is left


def test_a_budget_too_small_says_how_much_is_needed(tmp_path, monkeypatch) -> None:
    from semivit import planning

    # fixed stage timings: 0.1 s a step, so 5 s leave the 100-step stage ~11 steps, under MIN_STEPS (the
    # machine's speed no longer decides whether the budget is too small)
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: StageTiming(0.1, 16))
    configs, data = _two_stages(tmp_path)
    with pytest.raises(SemivitError, match=r"leaves mae fewer than 20 steps .* give at least 0\.1 min"):
        plan_budget(configs, data, budget=5.0)
    assert plan_budget(configs, data, budget=20.0)[0].steps >= planning.MIN_STEPS


def test_resume_reuses_the_saved_plan(tmp_path) -> None:
    configs, data = _two_stages(tmp_path)
    saved = [StagePlan("mae", 100, 37, 32, 0.01), StagePlan("supervised", 300, 111, 16, 0.02)]
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "plan.json").write_text(json.dumps({"budget_seconds": 60, "stages": [
        {"method": p.method, "nominal_steps": p.nominal_steps, "steps": p.steps,
         "images_per_step": p.images_per_step, "seconds_per_step": p.seconds_per_step} for p in saved]}))
    for c in configs:
        c.train.resume = True
    configs = plan_run(configs, data, 60.0, tmp_path / "root")
    assert [c.train.steps for c in configs] == [37, 111]  # not re-timed: a resumed run trains the same steps
    with pytest.raises(SemivitError, match="--resume"):
        apply_plan(configs[:1], saved)


@pytest.mark.slow
def test_cli_run_with_a_budget_plans_and_trains_the_planned_steps(tmp_path, monkeypatch, capsys) -> None:
    from semivit import planning
    from semivit.cli import main

    # the 1.5× time-limit guard is checked above; on a loaded test machine it would cut the planned schedule,
    # and fixed stage timings keep the plan itself independent of the machine's load
    monkeypatch.setattr(planning, "TIME_LIMIT_GUARD", 100.0)
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: StageTiming(0.1, 16))

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name: vit_nano, depth: 1, embed_dim: 48, num_heads: 2}\n"
                      "train: {batch_size: 16, eval_every: 0, log_every: 5}\nstages:\n"
                      "  - {method: supervised, train: {steps: 50}}\n"
                      "  - {method: fixmatch, params: {mu: 2}, train: {steps: 100}}\n")
    assert main(["run", str(recipe), "--labels", "2-per-class", "--budget", "20s", "--out", str(tmp_path),
                 "--name", "b", "-q"]) == 0
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())["stages"]
    table = capsys.readouterr().out.splitlines()  # the closing summary: one row per stage
    assert table[0].split()[:2] == ["stage", "steps"]
    assert [row.split()[:2] for row in table[1:3]] == [["stage1-supervised", str(plan[0]["steps"])],
                                                      ["stage2-fixmatch", str(plan[1]["steps"])]]
    for k, stage in enumerate(plan, 1):
        results = json.loads(next((tmp_path / "b").glob(f"stage{k}-*/results.json")).read_text())
        assert results["steps"] == stage["steps"]
    assert plan[1]["steps"] == pytest.approx(2 * plan[0]["steps"], rel=0.05)
