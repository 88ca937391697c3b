"""Experiment trackers as one setting (issue 26): ``train.tracker: mlflow | wandb`` gets every logged row and
the run's settings; a missing package or an unknown name is one line before any data loads."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest

from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from tests.conftest import tiny_config


def _fake_mlflow(calls: list) -> types.ModuleType:
    module = types.ModuleType("mlflow")
    module.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    module.start_run = lambda run_name: calls.append(("start", run_name))
    module.log_params = lambda params: calls.append(("params", params))
    module.log_metrics = lambda values, step: calls.append(("metrics", step, values))
    module.end_run = lambda: calls.append(("end",))
    return module


def test_mlflow_gets_the_settings_once_and_every_logged_row(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "mlflow", _fake_mlflow(calls))
    Trainer(tiny_config(tmp_path, **{"train.tracker": "mlflow", "train.steps": 6})).fit()
    assert calls[0] == ("start", "run") and calls[-1] == ("end",)
    params = dict(calls[1][1])
    assert params["train.method"] == "supervised" and params["train.steps"] == "6"
    rows = [c for c in calls if c[0] == "metrics"]
    assert [c[1] for c in rows if "train/loss" in c[2]] == [3, 6]  # log_every 3
    assert any("test/top1" in c[2] for c in rows)


def test_an_unknown_or_missing_tracker_is_one_line_before_any_data_loads(tmp_path, monkeypatch):
    import semivit.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "prepare_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SemivitError, match="train.tracker must be one of none, mlflow, wandb"):
        Trainer(tiny_config(tmp_path, **{"train.tracker": "comet"}))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(SemivitError, match=r"pip install 'semivit\[wandb\]'"):
        Trainer(tiny_config(tmp_path, **{"train.tracker": "wandb"}))
