"""Tests for the batched, generator-driven augmentations in :mod:`semivit.data.augment`."""

from __future__ import annotations

import pytest
import torch

from semivit.data import augment as A
from semivit.data.views import VIEW_NAMES, make_view

VIEWS = ("weak", "strong", "contrastive")


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(b: int = 6, c: int = 3, h: int = 32, w: int | None = None, seed: int = 1) -> torch.Tensor:
    """Random noise images: asymmetric, so flips and shifts are recognisable."""
    return torch.rand(b, c, h, w or h, generator=gen(seed))


def shifts(x: torch.Tensor, pad: int, mode: str) -> list[torch.Tensor]:
    """Every integer-shifted window of ``x`` (C×H×W) padded by ``pad``."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x[None], (pad,) * 4, mode=mode)[0]
    return [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


def is_shift(out: torch.Tensor, x: torch.Tensor, pad: int, mode: str = "reflect") -> bool:
    return any(torch.equal(out, s) for s in shifts(x, pad, mode))


def test_to_float() -> None:
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = A.to_float(u8)
    assert out.dtype == torch.float32 and torch.allclose(out.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(TypeError):
        A.to_float(out)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32, 64])
@pytest.mark.parametrize("name", VIEWS)
def test_views_keep_shape_dtype_and_range(name: str, c: int, size: int) -> None:
    x = batch(4, c, size)
    out = make_view(name, x, gen(), flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, batch(4, c, size))  # the input is never modified


def test_float64_and_non_square() -> None:
    x = batch(4, 3, 24, 40).double()
    for name in VIEWS:
        out = make_view(name, x, gen(), flip=True)
        assert out.dtype == torch.float64 and out.shape == x.shape and 0 <= out.min() <= out.max() <= 1


@pytest.mark.parametrize("name", VIEWS)
def test_same_seed_same_views_other_seed_other_views(name: str) -> None:
    x = batch(8)
    a, b = make_view(name, x, gen(5), flip=True), make_view(name, x, gen(5), flip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, make_view(name, x, gen(6), flip=True))


@pytest.mark.parametrize("name", VIEWS)
def test_randomness_drawn_does_not_depend_on_pixels(name: str) -> None:
    # Exact resume needs the generator to advance the same way whatever the images are.
    g1, g2 = gen(3), gen(3)
    make_view(name, batch(8, seed=1), g1, flip=True)
    make_view(name, torch.zeros(8, 3, 32, 32), g2, flip=True)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_padded_crop_without_padding_is_identity() -> None:
    x = batch(4)
    assert torch.equal(A.random_padded_crop(x, gen(), pad_frac=0.0), x)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_padded_crop_is_an_integer_shift_of_the_padded_image(mode: str) -> None:
    x = batch(16, 3, 16)
    out = A.random_padded_crop(x, gen(), pad_frac=0.125, mode=mode)
    assert all(is_shift(out[i], x[i], 2, mode) for i in range(len(x)))
    assert len({tuple(out[i, 0, 0, :3].tolist()) for i in range(len(x))}) > 1  # offsets differ per sample


def test_weak_flips_only_when_allowed() -> None:
    x = batch(32, 3, 16)
    kept = A.weak(x, gen(), flip=False)
    assert all(is_shift(kept[i], x[i], 2) for i in range(len(x)))
    out = A.weak(x, gen(), flip=True)
    flipped = [is_shift(out[i], x[i].flip(-1), 2) for i in range(len(x))]
    assert all(f or is_shift(out[i], x[i], 2) for i, f in enumerate(flipped))
    assert 0 < sum(flipped) < len(x)


def test_random_flip_probability_extremes() -> None:
    x = batch(8)
    assert torch.equal(A.random_flip(x, gen(), p=1.0), x.flip(-1))
    assert torch.equal(A.random_flip(x, gen(), p=0.0), x)


@pytest.mark.parametrize("c", [1, 3])
def test_strong_changes_images_within_range(c: int) -> None:
    x = batch(16, c)
    out = A.strong(x, gen())
    assert 0 <= out.min() and out.max() <= 1
    assert all(not torch.allclose(out[i], x[i]) for i in range(len(x)))
    assert torch.equal(A.randaugment(x, gen(), num_ops=0), x)
    with pytest.raises(ValueError, match="0–10"):
        A.strong(x, gen(), magnitude=30)


def test_masked_full_batch_path_matches_subset_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accelerators run every op on the whole batch and blend with torch.where; check it against the CPU path.
    x = batch(32, 3, 16)
    subset = A.strong(x, gen())
    monkeypatch.setattr(A, "_SUBSET_DEVICES", frozenset())
    assert torch.allclose(A.strong(x, gen()), subset, atol=1e-6)


def test_translate_moves_by_whole_pixels_on_a_non_square_image() -> None:
    x = batch(2, 1, 10, 20).double()
    ops = torch.tensor([[A._OP["translate_x"]], [A._OP["translate_y"]]])
    out = A._geometric(x.clone(), ops, torch.tensor([[0.5], [1.0]]))  # 0.3·0.5·20 = 3 px, 0.3·1·10 = 3 px
    assert torch.allclose(out[0, :, :, :-3], x[0, :, :, 3:]) and torch.allclose(out[1, :, :-3], x[1, :, 3:])
    # what moved in from outside is grey
    assert (out[0, :, :, -3:] - 0.5).abs().max() < 1e-9 and (out[1, :, -3:] - 0.5).abs().max() < 1e-9


@pytest.mark.parametrize("name", ["equalize", "autocontrast", "posterize", "solarize", "sharpness", "color",
                                  "contrast", "brightness"])
def test_colour_ops_match_torchvision(name: str) -> None:
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    u8 = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen())
    u8[:, :, :8] //= 3  # a skewed histogram, so equalize and autocontrast do something
    s = torch.full((4,), 0.5)  # posterize 2 bits, solarize threshold 0.5, enhance factor 1.45
    enhance = {"sharpness": tf.adjust_sharpness, "color": tf.adjust_saturation,
               "contrast": tf.adjust_contrast, "brightness": tf.adjust_brightness}
    reference = {"equalize": lambda: tf.equalize(u8), "autocontrast": lambda: tf.autocontrast(u8),
                 "posterize": lambda: tf.posterize(u8, 6), "solarize": lambda: tf.solarize(u8, 127.5)}
    expected = enhance[name](u8, 1.45) if name in enhance else reference[name]()
    out = A._COLOUR_OPS[name](A.to_float(u8), s, s)
    assert (out - A.to_float(expected)).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("out_size", [16, (20, 24), 48])
def test_contrastive_and_resized_crop_output_size(out_size: int | tuple[int, int]) -> None:
    x = batch(4)
    expected = (4, 3, *((out_size, out_size) if isinstance(out_size, int) else out_size))
    for out in (A.contrastive(x, gen(), out_size=out_size, blur=True),
                A.random_resized_crop(x, gen(), out_size, scale=(0.05, 0.2))):
        assert out.shape == expected and 0 <= out.min() <= out.max() <= 1


def test_contrastive_without_crop_flip_or_jitter_is_identity() -> None:
    x = batch(8)
    kwargs = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0)
    assert torch.allclose(A.contrastive(x, gen(), flip=False, **kwargs), x, atol=1e-6)
    out = A.contrastive(x, gen(), flip=True, **kwargs)
    flipped = [torch.allclose(out[i], x[i].flip(-1), atol=1e-6) for i in range(len(x))]
    assert all(f or torch.allclose(out[i], x[i], atol=1e-6) for i, f in enumerate(flipped)) and any(flipped)


def test_contrastive_grayscale_gives_equal_channels() -> None:
    x = batch(8)
    out = A.contrastive(x, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, p_jitter=0.0, p_gray=1.0)
    luma = (torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1) * x).sum(1)
    assert torch.allclose(out, luma[:, None].expand_as(out), atol=1e-5)


def test_random_erase_masks_one_rectangle() -> None:
    x = torch.zeros(32, 3, 20, 20)
    out = A.random_erase(x, gen(), max_frac=0.5, value=0.5)
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same pixels on every channel
    erased = out[:, 0] == 0.5
    assert erased.any() and not erased.all(0).any()
    for mask in erased:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        if len(rows):  # the erased pixels fill their bounding box, which is at most half the side
            box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all() and box.sum() == mask.sum() and max(box.shape) <= 10
    assert torch.equal(A.random_erase(x, gen(), max_frac=0.0), x)
    noisy = A.random_erase(x, gen(), value=None)
    assert ((noisy > 0) == erased[:, None]).all()  # same boxes (same draws), now filled with noise


def test_make_view_dispatch() -> None:
    x = batch(2)
    assert VIEW_NAMES == ("none", "weak", "strong", "contrastive", "large", "small")
    assert make_view("none", x, gen(), flip=True) is x
    assert torch.equal(make_view("strong", x, gen(), flip=False, erase=False),
                       A.strong(x, gen(), flip=False, erase=False))
    with pytest.raises(ValueError, match="none, weak, strong, contrastive, large, small"):
        make_view("randaugment", x, gen(), flip=True)
    with pytest.raises(ValueError, match="B×C×H×W"):
        make_view("weak", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen(), flip=True)
    x = batch(3)  # multi-crop: large views keep the size, small ones default to 9/16 of the side
    assert make_view("large", x, gen(), flip=True).shape == x.shape
    assert make_view("small", x, gen(), flip=True).shape[-1] == round(x.shape[-1] * 9 / 16)
    assert make_view("small", x, gen(), flip=True, out_size=4).shape[-2:] == (4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cuda", "cpu"])
def test_cuda(generator_device: str) -> None:
    x = batch(16).cuda()
    for name in VIEW_NAMES:
        out = make_view(name, x, gen(0, generator_device), flip=True)
        assert out.device == x.device and out.shape == x.shape and 0 <= out.min() <= out.max() <= 1
        assert torch.equal(out, make_view(name, x, gen(0, generator_device), flip=True))
    out = A.contrastive(x, gen(0, generator_device), out_size=24, blur=True)
    assert out.shape == (16, 3, 24, 24)
