"""Pretrained backbones by hub name, offline: weights written into a temporary HF cache in the hub's own
layout (``models--ORG--NAME/{refs/main, snapshots/SHA/…}``), loaded with HF_HUB_OFFLINE=1 and with every
outgoing socket connection made to fail."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from semivit.errors import SemivitError
from semivit.models import hub as hubs
from semivit.models.factory import create_model
from semivit.models.spec_check import model_from_spec

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache: Path, name: str = "test_vit.r160_in1k", seed: int = 0) -> dict[str, torch.Tensor]:
    """Put random weights for timm's ``name`` into ``cache`` exactly where ``hf_hub_download`` looks."""
    torch.manual_seed(seed)
    model = timm.create_model(name.partition(".")[0], pretrained=False)
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    repo = cache / f"models--timm--{name}"
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    save_file(tensors, str(repo / "snapshots" / SHA / "model.safetensors"))
    return tensors


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE on, an empty cache, and any network connection an error."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


def test_hub_name_loads_cached_weights_bit_identical_offline(offline: Path) -> None:
    saved = write_hub_cache(offline)
    model = create_model("test_vit.r160_in1k", 10, 3, 160, pretrained=True)
    own = model.backbone.state_dict()
    for key, value in saved.items():
        if key.startswith("head."):  # the classifier is new: 10 classes, not 1000
            assert own[key].shape[0] == 10
            continue
        assert torch.equal(own[key], value), key
    cfg = timm.models.get_pretrained_cfg("test_vit.r160_in1k")
    assert torch.allclose(model.mean.flatten(), torch.tensor(cfg.mean))  # the backbone's normalisation
    assert torch.allclose(model.std.flatten(), torch.tensor(cfg.std))
    assert model.spec.kwargs["backbone_size"] == 160 and model.spec.kwargs["timm_architecture"] == "test_vit"


def test_small_images_are_resized_inside_the_model_and_rebuilt_offline(offline: Path) -> None:
    write_hub_cache(offline)
    model = create_model("test_vit.r160_in1k", 4, 1, 32, pretrained=True).eval()  # grey 32-px data
    assert model.spec.kwargs["backbone_size"] == 160  # auto: < 112 px → the native 160
    x = torch.rand(3, 1, 32, 32)
    seen = {}
    model.backbone.patch_embed.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    logits = model(x)
    assert seen["shape"][-2:] == (160, 160) and logits.shape == (3, 4)
    again = model_from_spec(model.spec.to_dict())  # no download: from the recorded architecture
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again.eval()(x), logits, atol=1e-6)


def test_data_resolution_resamples_position_embeddings(offline: Path) -> None:
    write_hub_cache(offline)
    model = create_model("test_vit.r160_in1k", 10, 3, 128, pretrained=True)  # ≥ 112 px: kept
    assert model.spec.kwargs["backbone_size"] == 128
    assert model.backbone.patch_embed.grid_size == (8, 8)
    native = create_model("test_vit.r160_in1k", 10, 3, 128, pretrained=True, resolution="native")
    assert native.spec.kwargs["backbone_size"] == 160


def test_offline_with_empty_cache_is_one_line_naming_model_cache_and_fetch_command(offline: Path) -> None:
    with pytest.raises(SemivitError) as err:
        create_model("test_vit.r160_in1k", 10, 3, 160, pretrained=True)
    text = str(err.value)
    assert "test_vit.r160_in1k" in text and str(offline) in text and "hf download timm/test_vit.r160_in1k" in text
    assert "\n" not in text


def test_unknown_tag_lists_the_nearest_tags() -> None:
    with pytest.raises(SemivitError, match="vit_small_patch14_dinov2.lvd142m"):
        hubs.resolve("vit_small_patch14_dinov2.lvd14")
    with pytest.raises(SemivitError, match="unknown model"):
        hubs.resolve("vit_smal_patch16_224.augreg_in21k")


def test_pretrained_source_rules() -> None:
    from semivit.models.pretrained import pretrained_source

    assert pretrained_source("vit_small_patch16_224.augreg_in21k", None) == (True, None)
    assert pretrained_source("vit_small_patch16_224.augreg_in21k", "auto") == (True, None)
    assert pretrained_source("vit_nano", None) == (False, None)
    assert pretrained_source("resnet50", "hub") == (True, None)
    assert pretrained_source("vit_base_patch16_224.mae", "none") == (False, None)
    assert pretrained_source("vit_nano", "runs/x/checkpoints/model.safetensors") == \
        (False, "runs/x/checkpoints/model.safetensors")


def test_none_on_the_command_line_means_from_scratch() -> None:
    """`--set model.pretrained=none` must not be read as null (= auto, which loads a tagged name's weights)."""
    from semivit.config import Config, apply_overrides, parse_set_args
    from semivit.models.pretrained import pretrained_source

    cfg = apply_overrides(Config(), {"model.name": "vit_base_patch16_224.mae",
                                     **parse_set_args(["model.pretrained=none"])})
    assert pretrained_source(cfg.model.name, cfg.model.pretrained) == (False, None)
    assert pretrained_source(cfg.model.name, Config().model.pretrained) == (True, None)


def test_choose_resolution_rules() -> None:
    hub = hubs.resolve("vit_small_patch14_dinov2.lvd142m")  # native 518, 14-px patches
    assert hubs.choose_resolution(hub, 32)[0] == 224  # small data: up to 224 (16 × 14-px patches)
    assert hubs.choose_resolution(hub, 224)[0] == 224
    assert hubs.choose_resolution(hub, 150)[0] == 154  # kept, rounded to whole patches
    assert hubs.choose_resolution(hub, 32, "native")[0] == 518
    assert hubs.choose_resolution(hub, 32, "98")[0] == 98
    with pytest.raises(SemivitError, match="model.resolution"):
        hubs.choose_resolution(hub, 32, "huge")


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semivit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _offline_env(tmp_path: Path, hf_home: Path) -> dict[str, str]:
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    # any connection attempt in the child process fails loudly (sitecustomize runs before the program)
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise RuntimeError('network connection attempted')\n"
        "socket.socket.connect = _refuse\nsocket.create_connection = _refuse\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(guard), str(REPO / "src")]))
    return env


def test_cli_offline_with_empty_cache_exits_2_in_one_line(offline: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from semivit.cli import main

    code = main(["train", "--data", "digits", "--labels", "2-per-class", "--steps", "1", "-q",
                 "--model", "test_vit.r160_in1k", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("semivit: error: cannot load pretrained weights for 'test_vit.r160_in1k'")
    assert "hf download timm/test_vit.r160_in1k" in err[-1]


@pytest.mark.slow
def test_cli_trains_from_hub_name_with_hf_home_offline_and_no_socket(tmp_path: Path) -> None:
    """The user's path in a fresh process: HF_HOME (not HF_HUB_CACHE) set, HF_HUB_OFFLINE=1, sockets refused."""
    hf_home = tmp_path / "hf_home"
    env = _offline_env(tmp_path, hf_home)
    write_hub_cache(hf_home / "hub")  # HF_HOME/hub is huggingface_hub's default cache
    ok = _cli(["train", "--data", "digits", "--labels", "2-per-class", "--steps", "2", "--batch-size", "8",
               "--out", str(tmp_path / "runs"), "-q", "--set", "train.eval_every=0",
               "--set", "train.tensorboard=false", "--model", "test_vit.r160_in1k", "--name", "ok",
               "--set", "model.resolution=32"], env, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "network connection attempted" not in ok.stderr
    # semivit's own line for a backbone loaded with its weights (timm's INFO lines are not shown any more: a CLI
    # shows other libraries' logs from WARNING); without the cache the same command fails (the test above)
    assert "test_vit.r160_in1k: data 8 px resized to 32 px inside the model" in ok.stderr
    results = json.loads((tmp_path / "runs" / "ok" / "results.json").read_text())
    assert results["steps"] == 2


def test_probe_baselines_on_a_hub_backbone_use_only_training_labels(offline: Path) -> None:
    from semivit.probe import run_probe
    from tests.conftest import tiny_config

    write_hub_cache(offline)
    cfg = tiny_config(offline.parent, **{"model.name": "test_vit.r160_in1k", "data.labels": "4-per-class",
                                         "model.resolution": "32"})
    metrics = run_probe(cfg, out=offline.parent / "probe.json")
    assert metrics["labeled"] == 40 and metrics["labels_total"] == 40 and metrics["val_labeled"] == 0
    # features are read for the right images: even random-weight features beat chance (0.1) by far
    assert metrics["test_linear_top1"] > 0.3 and 0.0 <= metrics["test_knn_top1"] <= 1.0
    assert json.loads((offline.parent / "probe.json").read_text())["feature_dim"] == 64
    # a second probe reads the feature cache the first one wrote, and adds the semi-supervised baselines
    again = run_probe(cfg, semi=True)
    assert again["test_linear_top1"] == metrics["test_linear_top1"]
    assert 0.1 < again["test_label_spreading_top1"] <= 1 and 0.1 < again["test_self_training_top1"] <= 1


def test_pretrained_recipes_start_from_the_hub_and_chain_locally() -> None:
    from semivit.config import load_yaml
    from semivit.pipeline import find_recipe, stage_configs

    _, stages = stage_configs(load_yaml(find_recipe("semivit-pretrained")), {"model.name": "local-dir:/x"})
    assert [c.train.method for c in stages] == ["supervised", "ema_teacher"]
    assert all(c.model.pretrained == "hub" and c.model.name == "local-dir:/x" for c in stages)
    assert stages[1].method["pseudo_mixup"] == "both" and stages[0].optim.layer_decay < 1
    _, (fixmatch,) = stage_configs(load_yaml(find_recipe("fixmatch-pretrained")), {})
    assert sum(c.train.steps for c in stages) == fixmatch.train.steps  # the same budget
    assert fixmatch.method["threshold"] == 0.95 and fixmatch.train.ema
