"""``semivit run auto --budget``: the path (full, partial or frozen) and the resolution for a pretrained backbone,
chosen from timings on the machine and the data (issue 25)."""

from __future__ import annotations

import json

import pytest

from semivit import path_choice
from semivit.config import Config, apply_overrides
from semivit.data import prepare_data
from tests.conftest import random_timm_weights

ARCH = "test_efficientnet"


def _settings(tmp_path, **more):
    return {"data.source": "digits", "data.labels": "4-per-class", "model.name": ARCH,
            "model.pretrained": random_timm_weights(tmp_path), "train.out": str(tmp_path), "train.name": "auto",
            "train.progress": False, "train.tensorboard": False, "features.cache": str(tmp_path / "cache"), **more}


def test_the_largest_resolution_whose_cache_fits_is_chosen():
    rates = {64: 2000.0, 96: 600.0, 128: 180.0}
    assert path_choice.fitting_resolution(rates, images=260_000, seconds=1800) == 96
    assert path_choice.fitting_resolution(rates, images=260_000, seconds=6000) == 128
    assert path_choice.fitting_resolution(rates, images=260_000, seconds=60) is None  # then: labels-only fine-tuning


@pytest.mark.parametrize("full, partial, expected", [
    (0.01, 0.01, "full-semivit"),  # every schedule fits: the most backbone training
    (10.0, 0.01, "partial-semivit"),  # full fine-tuning's 2,000 steps at 10 s do not
    (10.0, 1.0, "frozen-fixmatch"),  # neither does the partial path's 3,000 steps at 1 s
])
def test_the_path_is_the_first_whose_whole_schedule_fits(tmp_path, monkeypatch, full, partial, expected):
    monkeypatch.setattr(path_choice, "_embed_rate", lambda cfg, data, device: 10.0 * int(cfg.model.resolution))
    monkeypatch.setattr(path_choice, "_partial_step_seconds", lambda cfg, data, device, batches: [partial] * 2)
    import semivit.planning

    monkeypatch.setattr(semivit.planning, "time_stage", lambda *a, **k: semivit.planning.StageTiming(full, 32))
    settings = _settings(tmp_path)
    data = prepare_data(apply_overrides(Config(), settings).data, 0)
    choice = path_choice.choose_path(settings, data, budget=1800)
    assert choice.recipe == expected and choice.fits
    images = len(data.train) * 5 + len(data.test)  # the images, 2 weak and 2 strong views of each; the test part
    assert choice.embed_images == images
    # the cache: the largest candidate up to the tiny CNN's native size whose cache takes ≤ 75% of the budget; the
    # full paths at their recipe's 96 px
    native = max(choice.embed_rates)
    assert choice.cache_resolution == native and all(r <= native for r in choice.embed_rates)
    assert choice.resolution == (96 if expected == "full-semivit" else native)
    assert f"{expected} at {choice.resolution} px" in choice.describe()
    fixed = path_choice.choose_path({**settings, "model.resolution": "64"}, data, budget=1800)
    assert fixed.resolution == 64 and list(fixed.embed_rates) == [64]


@pytest.mark.parametrize("cached_at", [64, None])
def test_a_cache_squeezed_below_the_full_paths_resolution_means_fine_tuning_on_the_labels(tmp_path, monkeypatch,
                                                                                       cached_at):
    """No semi-supervised schedule fits, and the cache fits only at 64 px (or at no resolution): the whole network
    is fine-tuned on the labels alone at 96 px instead of training heads on squeezed features (or failing)."""
    monkeypatch.setattr(path_choice, "_embed_rate",
                        lambda cfg, data, device: 1e6 if int(cfg.model.resolution) == cached_at else 1e-3)
    monkeypatch.setattr(path_choice, "_partial_step_seconds", lambda cfg, data, device, batches: [1.0] * 2)
    import semivit.planning

    monkeypatch.setattr(semivit.planning, "time_stage", lambda *a, **k: semivit.planning.StageTiming(10.0, 32))
    settings = _settings(tmp_path)
    data = prepare_data(apply_overrides(Config(), settings).data, 0)
    choice = path_choice.choose_path(settings, data, budget=1800)
    assert (choice.recipe, choice.resolution, choice.cache_resolution) == ("full-supervised", 96, cached_at or 0)
    assert not choice.fits  # its 1,000 steps at 10 s do not fit: the planner shrinks them
    assert "fine-tuned on the labels alone" in choice.describe()
    # a resolution the user fixed is theirs: the frozen heads at 64 px
    fixed = path_choice.choose_path({**settings, "model.resolution": "64"}, data, budget=1800)
    assert fixed.recipe == ("frozen-fixmatch" if cached_at == 64 else "full-supervised")


def test_run_auto_runs_the_chosen_recipe_and_resumes_with_its_choice(tmp_path, caplog):
    from semivit.cli import main

    args = ["run", "auto", "--data", "digits", "--labels", "4-per-class", "--model", ARCH, "--pretrained",
            random_timm_weights(tmp_path), "--steps", "4", "--budget", "10m", "--out", str(tmp_path), "--name",
            "auto", "--set", f"features.cache={tmp_path / 'cache'}", "--set", "train.eval_every=0", "-q"]
    assert main(args) == 0
    saved = json.loads((tmp_path / "auto" / "path.json").read_text())
    assert saved["recipe"] == "full-semivit"  # 4 steps a stage fit any budget: the most backbone training
    stages = sorted(p.name for p in (tmp_path / "auto").glob("stage*"))
    assert stages == ["stage1-supervised", "stage2-ema_teacher"]
    res = json.loads((tmp_path / "auto" / "stage2-ema_teacher" / "results.json").read_text())
    assert res["steps"] == 4  # the recipe's own steps: its schedule fit, nothing stretched
    caplog.clear()
    with caplog.at_level("INFO", logger="semivit"):
        assert main([*args, "--resume"]) == 0
    assert "resuming with the path chosen before" in caplog.text
    assert "stage 2 (ema_teacher) already finished" in caplog.text


def test_run_auto_needs_a_budget_and_a_backbone(tmp_path, capsys):
    from semivit.cli import main

    assert main(["run", "auto", "--data", "digits", "--model", ARCH, "--out", str(tmp_path)]) == 2
    assert "pass --budget" in capsys.readouterr().err
    assert main(["run", "auto", "--data", "digits", "--budget", "5m", "--out", str(tmp_path)]) == 2
    assert "name it with --model" in capsys.readouterr().err


def test_fit_takes_a_budget_and_recipe_auto_from_python(tmp_path, monkeypatch):
    import semivit
    from semivit import planning

    # the plan itself independent of the machine's load (fixed timings), and no 1.5× guard cutting it short
    monkeypatch.setattr(planning, "TIME_LIMIT_GUARD", 100.0)

    settings = _settings(tmp_path, **{"train.eval_every": 0})
    run = semivit.fit("digits", recipe="auto", model=ARCH, labels="4-per-class", steps=4, budget="10m",
                      settings={k: v for k, v in settings.items() if k not in ("data.source", "model.name",
                                                                              "data.labels")})
    assert json.loads((tmp_path / "auto" / "path.json").read_text())["recipe"] == "full-semivit"
    assert run.metrics["steps"] == 4 and 0 <= run.metrics["test_top1"] <= 1
    monkeypatch.setattr(planning, "time_stage", lambda cfg, data, previous=None: planning.StageTiming(0.05, 16))
    one = semivit.fit("digits", "supervised", "vit_nano", labels="4-per-class", steps=300, budget=20,
                      settings={"train.out": str(tmp_path), "train.name": "one", "train.progress": False,
                                "model.depth": 1, "model.embed_dim": 32, "model.num_heads": 2})
    plan = json.loads((tmp_path / "one" / "plan.json").read_text())
    assert plan["budget_seconds"] == 20 and one.metrics["steps"] == plan["stages"][0]["steps"] <= 360
