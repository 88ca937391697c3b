"""``semivit export``: hub folder → timm and semivit give the same logits; ONNX ≈ PyTorch; TorchScript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from semivit.engine.checkpoint import export_weights, load_model
from semivit.errors import SemivitError
from semivit.export import export_run
from semivit.models.factory import create_model
from tests.test_hub import offline, write_hub_cache  # noqa: F401  (fixture)


def _saved(tmp_path: Path, model: torch.nn.Module) -> Path:
    path = tmp_path / "run" / "checkpoints" / "model.safetensors"
    export_weights(model, path, model.spec.to_dict())
    return path.parent.parent


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Weights and normalisation that differ from any default, so a round trip that drops one shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.set_normalization(torch.tensor([0.3] * model.spec.in_chans), torch.tensor([0.2] * model.spec.in_chans))
    return model.eval()


@pytest.fixture
def vit_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _trained_like(create_model("vit_nano", 10, 1, 8, depth=2, embed_dim=48, num_heads=2,
                                       classes=[f"c{i}" for i in range(10)]))
    return _saved(tmp_path, model), model


def test_hub_folder_loads_in_timm_and_semivit_with_the_same_logits(vit_run, tmp_path: Path) -> None:
    run, model = vit_run
    folder, _ = export_run(run, "hub", tmp_path / "hub")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        cfg = plain.pretrained_cfg
        mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
        assert torch.allclose(plain((x - mean) / std), expected, atol=1e-5)
        again, _ = load_model(folder)  # what `semivit predict FOLDER` uses
        assert torch.allclose(again(x), expected, atol=1e-6)
    assert again.spec.classes == model.spec.classes and plain.num_classes == 10


def test_predict_reads_a_hub_folder(vit_run, tmp_path: Path) -> None:
    from semivit.cli import main

    run, _ = vit_run
    folder, _ = export_run(run, "hub", tmp_path / "hub")
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(folder), str(tmp_path / "a.png"), "-o", str(out)]) == 0
    assert out.read_text().splitlines()[1].split(",")[1].startswith("c")


def test_pretrained_backbone_with_resize_exports_its_native_input(offline, tmp_path: Path) -> None:  # noqa: F811
    write_hub_cache(offline)
    model = _trained_like(create_model("test_vit.r160_in1k", 3, 3, 32, pretrained=True))
    folder, _ = export_run(_saved(tmp_path, model), "hub", tmp_path / "hub")
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert plain.pretrained_cfg["input_size"] == (3, 160, 160)  # timm users feed the backbone's size
    x = torch.rand(2, 3, 32, 32)
    cfg = plain.pretrained_cfg
    assert model.spec.kwargs["interpolation"] == cfg["interpolation"]  # the backbone's own (timm's config)
    big = torch.nn.functional.interpolate(x, size=160, mode=cfg["interpolation"], align_corners=False)
    mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        # normalising then resizing (semivit) equals resizing then normalising (a timm pipeline): both linear
        assert torch.allclose(plain((big - mean) / std), model(x), atol=1e-4)
        assert torch.allclose(load_model(folder)[0](x), model(x), atol=1e-6)


def test_onnx_matches_pytorch_with_a_dynamic_batch(vit_run, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, model = vit_run
    path, summary = export_run(run, "onnx", tmp_path / "m.onnx")
    assert "onnxruntime matches" in summary
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.rand(batch, 1, 8, 8)
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() < 1e-4
    import onnx

    assert onnx.load(str(path)).opset_import[0].version >= 17


def test_torchscript_round_trip(vit_run, tmp_path: Path) -> None:
    run, model = vit_run
    path, _ = export_run(run, "torchscript", tmp_path / "m.pt")
    scripted = torch.jit.load(str(path))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_export_refuses_what_timm_cannot_rebuild(tmp_path: Path) -> None:
    head = create_model("vit_nano", 10, 1, 8, depth=1, embed_dim=48, num_heads=2, head_layers=1)
    with pytest.raises(SemivitError, match="projection-head layers"):
        export_run(_saved(tmp_path / "a", head), "hub", tmp_path / "a" / "hub")
    cifar_resnet = create_model("resnet18", 10, 3, 32)
    with pytest.raises(SemivitError, match="onnx"):
        export_run(_saved(tmp_path / "b", cifar_resnet), "hub", tmp_path / "b" / "hub")
    with pytest.raises(SemivitError, match="not found"):
        export_run(tmp_path / "nothing", "hub")


def test_export_picks_a_recipes_last_stage(tmp_path: Path) -> None:
    from semivit.export import find_model_file

    for k in (1, 2, 10):
        path = tmp_path / "recipe" / f"stage{k}-x" / "checkpoints" / "model.safetensors"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    assert find_model_file(tmp_path / "recipe").parent.parent.name == "stage10-x"
