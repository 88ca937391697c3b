import pytest

from semivit.config import Config, apply_overrides, parse_set_args
from semivit.errors import SemivitError
from semivit.methods import method_params


def test_dotted_and_nested_overrides():
    cfg = apply_overrides(Config(), {"optim.lr": "0.01", "train": {"steps": 5}, "optim.betas": "0.8,0.9"})
    assert cfg.optim.lr == 0.01 and cfg.train.steps == 5 and cfg.optim.betas == (0.8, 0.9)
    assert Config().optim.lr != 0.01  # the default is untouched


def test_unknown_key_suggests_nearest():
    with pytest.raises(SemivitError, match=r"unknown setting 'optim.lrr'.*did you mean 'lr'"):
        apply_overrides(Config(), {"optim.lrr": 1})
    with pytest.raises(SemivitError, match=r"unknown section 'optm'.*did you mean 'optim'"):
        apply_overrides(Config(), {"optm.lr": 1})


def test_bad_values_are_named():
    with pytest.raises(SemivitError, match="train.steps must be a number"):
        apply_overrides(Config(), {"train.steps": "many"})
    with pytest.raises(SemivitError, match="train.steps must be a whole number"):
        apply_overrides(Config(), {"train.steps": 1.5})
    with pytest.raises(SemivitError, match="train.resume must be true or false"):
        apply_overrides(Config(), {"train.resume": "maybe"})


def test_optional_values_accept_none():
    cfg = apply_overrides(Config(), parse_set_args(["optim.clip_grad=null", "train.ema=0.99"]))
    assert cfg.optim.clip_grad is None and cfg.train.ema == 0.99


def test_set_args_need_key_value():
    with pytest.raises(SemivitError, match="KEY=VALUE"):
        parse_set_args(["optim.lr"])


def test_method_params_validated():
    assert method_params("supervised", {"label_smoothing": 0.1}).label_smoothing == 0.1
    with pytest.raises(SemivitError, match="did you mean 'mixup'"):
        method_params("supervised", {"mixupp": 0.2})
    with pytest.raises(SemivitError, match="unknown method 'supervize'.*did you mean 'supervised'"):
        method_params("supervize", {})


def test_yaml_booleans_reach_string_settings_as_on_off():
    cfg = apply_overrides(Config(), parse_set_args(["method.x=1", "data.labels=all"]))
    assert cfg.method == {"x": 1}
    assert method_params("ema_teacher", parse_set_args(["pseudo_mixup=off"])).pseudo_mixup == "off"


@pytest.mark.parametrize(("key", "value", "choices"), [
    ("optim.name", "adam", "adamw, sgd"), ("train.amp", "bf32", "auto, bf16, fp16, off"),
    ("train.tracker", "tensorboard", "none, mlflow, wandb"), ("data.on_corrupt", "ignore", "skip, fail"),
    ("model.head_init", "zeros", "random, imprint")])
def test_choice_settings_are_checked_when_parsed(key: str, value: str, choices: str) -> None:
    """A choice setting names its choices at parse time (Literal types in _coerce), before anything loads."""
    with pytest.raises(SemivitError, match=f"{key} must be one of {choices}, got '{value}'"):
        apply_overrides(Config(), {key: value})


def test_method_choice_settings_are_checked_before_data_loads() -> None:
    with pytest.raises(SemivitError, match="method.task must be one of rotation, exemplar"):
        method_params("s4l", {"task": "rot"})
    with pytest.raises(SemivitError, match="method.teacher_mode must be one of batch, eval, train"):
        method_params("semiformer", {"teacher_mode": "student"})
    assert apply_overrides(Config(), {"train.amp": False}).train.amp == "off"  # YAML's bare off is a boolean


def test_one_schema_check_for_recipes_and_suites(tmp_path) -> None:
    """Recipes' stages and benchmark suites go through config.check_keys: one line, the nearest valid key."""
    from semivit.bench import load_suite
    from semivit.pipeline import stage_configs

    with pytest.raises(SemivitError, match=r"unknown keys \['parms'\] in stage 1 of the recipe \(did you mean 'params"):
        stage_configs({"stages": [{"method": "supervised", "parms": {}}]}, {})
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nseed: [0]\ndata: {}\nmethods: {}\n")
    with pytest.raises(SemivitError, match=r"unknown keys \['seed'\] in .*s.yaml \(did you mean 'seeds'"):
        load_suite(suite)
