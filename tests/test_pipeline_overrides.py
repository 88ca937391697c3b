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
