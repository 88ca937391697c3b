import pytest
import torch

from semivit.engine.checkpoint import export_weights, load_model
from semivit.errors import SemivitError
from semivit.models.factory import create_model
from semivit.models.pretrained import load_pretrained


@pytest.mark.parametrize("size,chans,patch", [(8, 1, 4), (16, 1, 2), (28, 1, 4), (32, 3, 4), (64, 3, 8),
                                             (224, 3, 16), (512, 3, 32)])
def test_vit_patch_size_follows_image_size(size, chans, patch):
    model = create_model("vit_nano", 10, chans, size, depth=1)
    assert model.spec.kwargs["patch_size"] == patch
    assert model(torch.rand(2, chans, size, size)).shape == (2, 10)
    assert model.features(torch.rand(2, chans, size, size)).shape == (2, 96)


def test_custom_vit_and_errors():
    model = create_model("vit_tiny", 5, 3, 32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    assert len(model.backbone.blocks) == 2 and model.num_features == 64
    with pytest.raises(SemivitError, match="not divisible by patch size 5"):
        create_model("vit_nano", 10, 1, 28, patch_size=5)
    with pytest.raises(SemivitError, match="unknown model 'vit_nan'.*did you mean 'vit_nano'"):
        create_model("vit_nan", 10)


def test_resnet_small_image_stem():
    model = create_model("resnet18", 10, 3, 32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert model.backbone.conv1.stride == (1, 1)


def test_safetensors_round_trip(tmp_path):
    model = create_model("vit_nano", 3, 1, 8, depth=1, classes=["a", "b", "c"])
    model.set_normalization(torch.tensor([0.3]), torch.tensor([0.2]))
    export_weights(model, tmp_path / "m.safetensors", model.spec.to_dict())
    again, meta = load_model(tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(again(x), model.eval()(x))
    assert again.spec.classes == ["a", "b", "c"] and float(again.mean.flatten()[0]) == pytest.approx(0.3)


def test_pretrained_pth_with_prefixes_and_pos_embed_resize(tmp_path):
    source = create_model("vit_nano", 10, 3, 32, depth=2)
    state = {f"module.{k.removeprefix('backbone.')}": v for k, v in source.state_dict().items()}
    state["decoder_embed.weight"] = torch.zeros(3, 3)  # an MAE decoder key: ignored
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    target = create_model("vit_nano", 7, 3, 64, patch_size=4, depth=2)  # 16×16 grid instead of 8×8
    report = load_pretrained(target, tmp_path / "ckpt.pth", verbose=False)
    assert target.backbone.pos_embed.shape[1] == 1 + 16 * 16
    assert torch.equal(target.backbone.blocks[1].mlp.fc1.weight, source.backbone.blocks[1].mlp.fc1.weight)
    assert any("head.weight" in s for s in report["skipped"])  # 10 → 7 classes: head not loaded


def test_pretrained_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(SemivitError, match="weights_only=True"):
        load_pretrained(create_model("vit_nano", 10, 1, 8), tmp_path / "evil.pth")
