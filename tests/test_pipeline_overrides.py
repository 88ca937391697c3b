"""Command-line overrides of a recipe reach the stages they name (issue 26): ``method.KEY`` the stages whose
method has it, ``METHOD.KEY`` that method's stages, ``stageK.SECTION.KEY`` stage K; a key no stage has is an
error before any data loads."""

from __future__ import annotations

import pytest

from semivit.config import load_yaml
from semivit.errors import SemivitError
from semivit.pipeline import find_recipe, stage_configs


def _stages(overrides):
    return stage_configs(load_yaml(find_recipe("semivit")), overrides)[1]


def test_a_method_key_reaches_the_stages_that_have_it_and_only_those():
    mae, supervised, ema = _stages({"method.threshold": 0.8, "optim.weight_decay": 0.01})
    assert [c.train.method for c in (mae, supervised, ema)] == ["mae", "supervised", "ema_teacher"]
    assert ema.method["threshold"] == 0.8 and "threshold" not in mae.method and "threshold" not in supervised.method
    assert {c.optim.weight_decay for c in (mae, supervised, ema)} == {0.01}  # unqualified sections: every stage


def test_qualified_overrides_name_a_method_or_a_stage():
    mae, supervised, ema = _stages({"ema_teacher.lambda_u": 2.0, "stage2.optim.lr": 0.5, "stage1.train.steps": 7})
    assert ema.method["lambda_u"] == 2.0 and supervised.optim.lr == 0.5 and mae.optim.lr != 0.5
    assert mae.train.steps == 7 and supervised.train.steps != 7


@pytest.mark.parametrize("key,message", [("method.no_such_key", "no stage's method has it"),
                                         ("fixmatch.threshold", "no stage of this recipe runs fixmatch"),
                                         ("stage9.optim.lr", "stages 1..3")])
def test_an_override_no_stage_takes_is_an_error_before_any_data_loads(key, message, monkeypatch):
    import semivit.data

    monkeypatch.setattr(semivit.data, "prepare_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SemivitError, match=message):
        _stages({key: 1})


def test_a_bad_value_of_a_stages_setting_is_caught_before_any_data_loads():
    with pytest.raises(SemivitError, match="method.threshold"):
        _stages({"method.threshold": "high"})


@pytest.mark.slow
def test_a_config_is_resolved_once_into_a_new_object_and_the_callers_is_never_written(tmp_path):
    """The Trainer resolves ``model.name: auto`` and a student's start into its own config; the pipeline hands
    each stage the previous one's weights or teacher through new configs; the caller's objects stay as given."""
    import copy

    from semivit.engine.trainer import Trainer
    from semivit.pipeline import run_stages
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, **{"model.name": "auto", "train.steps": 2, "train.name": "one"})
    before = copy.deepcopy(cfg.to_dict())
    trainer = Trainer(cfg)
    trainer.fit()
    assert cfg.to_dict() == before and trainer.cfg is not cfg and trainer.cfg.model.name == "vit_nano"
    recipe = {"name": "two", "stages": [{"method": "supervised"},
                                        {"method": "distill", "params": {"teacher_init_below": 100}}]}
    _, configs = stage_configs(recipe, {"train.out": str(tmp_path), "train.progress": False, "train.steps": 2,
                                        "train.tensorboard": False, "model.name": "vit_nano", "model.depth": 2,
                                        "model.embed_dim": 48, "model.num_heads": 2, "data.labels": "5-per-class"})
    snapshot = [copy.deepcopy(c.to_dict()) for c in configs]
    result = run_stages(configs, tmp_path / "two")
    assert [c.to_dict() for c in configs] == snapshot  # no teacher, no pretrained written into the given stages
    written = load_yaml(result.run_dir / "config.yaml")  # what the distill stage really ran with
    assert written["method"]["teacher"] == str(tmp_path / "two" / "stage1-supervised" / "checkpoints" /
                                               "model.safetensors")
    assert written["model"]["pretrained"] == written["method"]["teacher"]  # 2 steps: the student starts from it
