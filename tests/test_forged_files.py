"""Forged or damaged run and hub files: validated before anything is built, one line naming the field."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from semivit.cli import main
from semivit.engine.checkpoint import export_weights, load_model
from semivit.errors import SemivitError
from semivit.models.factory import create_model
from semivit.models.hub_folder import load_hub_folder

GOOD = {"name": "vit_nano", "num_classes": 3, "in_chans": 1, "image_size": 8,
        "kwargs": {"patch_size": 2, "embed_dim": 32, "depth": 1, "num_heads": 2, "drop_path": 0.0}, "classes": []}


def _forged(tmp_path, spec) -> str:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"semivit_spec": json.dumps(spec)})
    return str(path)


@pytest.mark.parametrize("change,said", [
    ({"num_classes": None}, "no 'num_classes'"),
    ({"num_classes": 10**9}, "'num_classes' is 1000000000, outside"),
    ({"name": "vit_nonexistent"}, "unknown model 'vit_nonexistent'"),
    ({"kwargs": {**GOOD["kwargs"], "evil": 1}}, r"unknown model setting\(s\) \['evil'\]"),
    ({"image_size": "8px"}, "'image_size' must be a whole number, got '8px'"),
    ({"kwargs": {**GOOD["kwargs"], "embed_dim": "wide"}}, "'embed_dim' must be a whole number"),
    ({"kwargs": {**GOOD["kwargs"], "embed_dim": 16384, "depth": 256}}, "parameters"),
    ({"classes": ["a"]}, "'classes' must list 3 class names"),
])
def test_a_forged_model_file_is_one_line_naming_the_field(tmp_path, change, said):
    spec = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(SemivitError, match=said) as e:
        load_model(_forged(tmp_path, spec))
    assert "\n" not in str(e.value)


def test_the_cli_reports_a_forged_model_in_one_line(tmp_path, capsys):
    path = _forged(tmp_path, {**GOOD, "num_classes": 10**9})
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    assert main(["predict", path, str(image), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_classes" in err[0]


def test_weights_that_do_not_fit_their_spec_and_non_json_metadata_are_one_line(tmp_path):
    model = create_model("vit_nano", 3, 1, 8, embed_dim=32, depth=1, num_heads=2)
    export_weights(model, tmp_path / "good.safetensors", model.spec.to_dict())
    assert load_model(tmp_path / "good.safetensors")[0].spec.num_classes == 3
    with pytest.raises(SemivitError, match="do not match its model spec"):
        load_model(_forged(tmp_path, GOOD))
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"semivit_spec": "{not json"})
    with pytest.raises(SemivitError, match="not JSON"):
        load_model(path)


@pytest.mark.parametrize("config,said", [
    ({"architecture": "no_such_net", "num_classes": 3}, "not a timm architecture"),
    ({"architecture": "resnet18", "num_classes": 10**9}, "'num_classes' is 1000000000"),
    ({"architecture": "resnet18", "num_classes": "ten"}, "must be a whole number"),
    ({"architecture": "resnet18", "num_classes": 3, "model_args": {"width": [1e12]}}, "model_args.width"),
    ({"architecture": "resnet18", "num_classes": 3, "pretrained_cfg": {"input_size": [3, "x", 224]}},
     r"input_size\[1\]"),
])
def test_a_forged_hub_config_is_refused_before_timm_builds_it(tmp_path, config, said):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SemivitError, match=said):
        load_hub_folder(tmp_path)
