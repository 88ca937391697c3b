"""Batched image augmentation as tensor operations on the batch's own device (CPU or CUDA).

Every function takes a float batch B×C×H×W in [0, 1] (C = 1 or 3) and returns one with the same dtype and
device, clamped to [0, 1]. All randomness is drawn from the explicit ``generator`` so that a resumed run
(generator state restored) makes exactly the same views; how many numbers are drawn depends only on the
batch shape and the arguments, never on pixel values, so the generator stays in step. A CPU generator also
works for a CUDA batch (the few per-sample numbers are copied over); one on the batch's device avoids that.

There are no Python loops over samples: per-sample choices become per-sample parameters (affine matrices,
blend factors, masks) applied by one batched operation each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Size = int | tuple[int, int]

# RandAugment ops, geometric ones last so that "is geometric" is ``op >= _FIRST_GEOMETRIC``.
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "solarize", "posterize", "color", "contrast",
                   "brightness", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_OP = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
_FIRST_GEOMETRIC = _OP["rotate"]
# Full-strength ranges (FixMatch Table 12 / torchvision RandAugment): enhance factor 1 ± 0.9, rotate ±30°,
# shear ±0.3, translate ±30% of the side, posterize down to 4 bits, solarize threshold down to 0.
_ENHANCE, _ROTATE, _SHEAR, _TRANSLATE, _POSTERIZE_BITS = 0.9, math.radians(30), 0.3, 0.3, 4
# NTSC RGB→YIQ; row 0 is the luma used for grayscale (the weights PIL and torchvision use).
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)
# Devices where per-op sample subsets beat masked full-batch ops (see _where_samples).
_SUBSET_DEVICES = frozenset({"cpu"})


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float B×C×H×W batch in [0, 1], got {x.dtype} {tuple(x.shape)}")


def uniform(generator: torch.Generator | None, x: torch.Tensor, *shape: int, high: int = 0) -> torch.Tensor:
    """Uniform [0, 1) float32 (or, with ``high``, integers in [0, high)) drawn on the generator's device and
    moved to ``x``'s."""
    device = generator.device if generator is not None else x.device
    if high:
        return torch.randint(high, shape, generator=generator, device=device).to(x.device)
    return torch.rand(shape, generator=generator, device=device).to(x.device)


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) parameter as B×1×1×1 in ``x``'s dtype, ready to broadcast against the batch."""
    return t.view(-1, 1, 1, 1).to(x.dtype)


def _where_samples(fn: Callable[..., torch.Tensor], x: torch.Tensor, mask: torch.Tensor,
                   *params: torch.Tensor) -> torch.Tensor:
    """``fn(x[i], params[i])`` for samples with ``mask[i]``, ``x[i]`` for the rest.

    On CPU only the selected samples are computed, and **written into x in place** (x must be a tensor made
    in this module): a RandAugment op hits ~1/14 of a batch, and CPU time is what starves the model.
    Elsewhere the op runs on the whole batch and is blended with ``torch.where``, which avoids the
    device→host sync that selecting a subset costs.
    """
    if x.device.type in _SUBSET_DEVICES:
        idx = mask.nonzero().squeeze(1)
        return x.index_copy_(0, idx, fn(x[idx], *(p[idx] for p in params))) if idx.numel() else x
    return torch.where(mask.view(-1, 1, 1, 1), fn(x, *params), x)


def warp(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Bilinear resampling by per-sample affines ``theta`` (B×2×3, output→input, [-1, 1] coordinates), one
    ``grid_sample`` for the batch. Outside pixels get ``fill``: sampling ``x - fill`` with zero padding and
    adding ``fill`` back does that without a mask."""
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *size], align_corners=False)
    out = F.grid_sample(x - fill if fill else x, grid, padding_mode="zeros", align_corners=False)
    return out + fill if fill else out


def _luma(channels: int) -> torch.Tensor:
    """Grayscale weights: YIQ's Y for RGB, the channel itself for one channel."""
    return _YIQ[0] if channels == 3 else torch.ones(1)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0–255) to float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}")
    return x.to(torch.float32).div_(255)


def random_flip(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each sample with probability ``p`` (the standard flip of FixMatch's weak view)."""
    _check(x)
    return _shift_crop(x, generator, 0.0, "reflect", p_flip=p)  # one gather; cheaper than where + flip


def _shift_crop(x: torch.Tensor, generator: torch.Generator | None, pad_frac: float, mode: str,
                p_flip: float) -> torch.Tensor:
    """Cut an H×W window at a random integer offset from x padded by ``pad_frac``, optionally mirrored.

    No padded copy is made: padding an ``arange`` with the same mode says which row/column of x each padded
    one is (-1 for constant padding), so the crop is a single gather from x.
    """
    b, c, h, w = x.shape
    ph, pw = round(pad_frac * h), round(pad_frac * w)
    dy, dx = uniform(generator, x, b, high=2 * ph + 1), uniform(generator, x, b, high=2 * pw + 1)
    flip = uniform(generator, x, b) < p_flip
    fill = {"value": -1.0} if mode == "constant" else {}
    source = lambda n, p: F.pad(torch.arange(n, device=x.device, dtype=torch.float32).view(1, 1, n), (p, p),
                                mode=mode, **fill).view(-1).long()

    cols = torch.arange(w, device=x.device)
    # Padding is symmetric, so flip-then-crop is reading the window right to left: the flip is free.
    cols = source(w, pw)[dx[:, None] + torch.where(flip[:, None], cols.flip(0), cols)]
    rows = source(h, ph)[dy[:, None] + torch.arange(h, device=x.device)]
    index = rows.clamp(min=0)[:, :, None] * w + cols.clamp(min=0)[:, None, :]
    out = x.flatten(2).gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    if mode == "constant":
        out = out.masked_fill(((rows < 0)[:, :, None] | (cols < 0)[:, None, :]).unsqueeze(1), 0.0)
    return out


def random_padded_crop(x: torch.Tensor, generator: torch.Generator | None, pad_frac: float = 0.125,
                       mode: str = "reflect") -> torch.Tensor:
    """Pad by ``round(pad_frac·side)`` px (``F.pad`` mode) and crop the original size at a random offset:
    FixMatch's (Sohn et al. 2020) "translate by up to 12.5%", CIFAR's pad-4-and-crop. Exact pixel copies."""
    _check(x)
    return _shift_crop(x, generator, pad_frac, mode, p_flip=0.0)


def weak(x: torch.Tensor, generator: torch.Generator | None, flip: bool = True) -> torch.Tensor:
    """FixMatch (Sohn et al. 2020) weak augmentation: flip (p=0.5) + translate by up to 12.5% (reflect)."""
    _check(x)
    return _shift_crop(x, generator, 0.125, "reflect", p_flip=0.5 if flip else 0.0)


def random_erase(x: torch.Tensor, generator: torch.Generator | None, max_frac: float = 0.5,
                 value: float | None = 0.5) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) as in FixMatch's strong view: per sample one ``v·H``×``v·W`` rectangle,
    ``v ~ U(0, max_frac)``, centred uniformly (clipped at the border), filled with ``value`` (0.5 = grey) or,
    if None, with uniform noise as in Random Erasing (Zhong et al. 2020)."""
    _check(x)
    b, c, h, w = x.shape
    u = uniform(generator, x, b, 3)
    half = u[:, 0] * max_frac / 2

    def inside(centre: torch.Tensor, n: int) -> torch.Tensor:  # (B, n): pixel centres inside the span
        pos = (torch.arange(n, device=x.device) + 0.5) / n
        return (pos - centre[:, None]).abs() < half[:, None]

    mask = inside(u[:, 1], h)[:, None, :, None] & inside(u[:, 2], w)[:, None, None, :]
    fill = x.new_tensor(value) if value is not None else uniform(generator, x, b, c, h, w).to(x.dtype)
    return torch.where(mask, fill, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """B×1×H×W luma (a matmul: ~100× faster on CPU than the equivalent 1×1 convolution)."""
    return (_luma(x.shape[1]).to(x) @ x.flatten(2)).view(x.shape[0], 1, *x.shape[2:])


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13) with border pixels left as they are, which
    ImageEnhance.Sharpness blends with; shifted sums beat mkldnn's depthwise conv ~2× on CPU."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    return out


def _enhance(degenerate: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: blend(degenerate, image, factor) with factor 1 + 0.9·v (v = signed strength)."""
    return torch.lerp(degenerate, x, _per_sample(1 + _ENHANCE * v, x)).clamp_(0, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast per channel; a constant channel is left alone."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)


def _posterize(x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.posterize: drop the low round(4·strength) bits of each 8-bit level."""
    step = _per_sample(torch.exp2(torch.round(_POSTERIZE_BITS * strength)), x)
    return torch.floor((x * 255).round_() / step) * step / 255


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel on 256 levels, with one batched histogram (scatter_add)."""
    b, c, h, w = x.shape
    levels = (x * 255).round_().long().flatten(2)
    hist = levels.new_zeros(b, c, 256).scatter_add_(2, levels, torch.ones_like(levels))
    # PIL: step = (pixels − count of the top level) // 255; a flat histogram (step 0) is left alone.
    step = (h * w - hist.gather(2, levels.amax(2, keepdim=True))) // 255
    lut = ((hist.cumsum(2) - hist + step // 2) // step.clamp(min=1)).clamp_(max=255)
    out = lut.gather(2, levels).view(b, c, h, w).to(x.dtype) / 255
    return torch.where(step.view(b, c, 1, 1) > 0, out, x)


def _geometric(x: torch.Tensor, ops: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Compose each sample's rotate/shear/translate ops (``v`` = signed strength) into one affine; warp once.

    Built in centred pixel units (a true rotation on non-square images), then rescaled to [-1, 1]. The
    matrices map output to input, which, with random signs, is the same distribution as forward."""
    b, _, h, w = x.shape
    m = torch.eye(3, device=x.device).repeat(b, 1, 1)
    zero = torch.zeros(b, device=x.device)
    for k in range(ops.shape[1]):
        def amount(name: str, scale: float, k: int = k) -> torch.Tensor:
            return torch.where(ops[:, k] == _OP[name], v[:, k] * scale, zero)

        angle = amount("rotate", _ROTATE)
        cos, sin = angle.cos(), angle.sin()
        # At most one op per slot is active, so this single matrix is that op (or the identity).
        slot = torch.stack([
            torch.stack([cos, amount("shear_x", _SHEAR) - sin, amount("translate_x", _TRANSLATE * w)], 1),
            torch.stack([sin + amount("shear_y", _SHEAR), cos, amount("translate_y", _TRANSLATE * h)], 1),
            torch.stack([zero, zero, zero + 1], 1)], 1)
        m = m @ slot
    to_unit = torch.tensor([2 / w, 2 / h, 1.0], device=x.device)
    theta = (to_unit[:, None] * m / to_unit)[:, :2]  # diag(to_unit) @ m @ diag(to_unit)⁻¹
    grey_fill = lambda y, t: warp(y, t, (h, w), fill=0.5)  # FixMatch fills with grey (128)
    return _where_samples(grey_fill, x, (ops >= _FIRST_GEOMETRIC).any(1), theta)


# Colour ops as f(x, strength, signed strength); each maps a sub-batch to its result.
_COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "autocontrast": lambda x, s, v: _autocontrast(x),
    "equalize": lambda x, s, v: _equalize(x),
    "solarize": lambda x, s, v: torch.where(x > _per_sample(1 - s, x), 1 - x, x),  # invert above 1 − s
    "posterize": lambda x, s, v: _posterize(x, s),
    "color": lambda x, s, v: _enhance(_gray(x), x, v),  # the luma of one channel is itself: a no-op
    "contrast": lambda x, s, v: _enhance(_gray(x).mean((2, 3), keepdim=True), x, v),
    "brightness": lambda x, s, v: _enhance(x.new_zeros(1, 1, 1, 1), x, v),
    "sharpness": lambda x, s, v: _enhance(_smooth(x), x, v),
}


def randaugment(x: torch.Tensor, generator: torch.Generator | None, num_ops: int = 2,
                magnitude: float = 10) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020) as varied in FixMatch (Sohn et al. 2020): per sample ``num_ops`` ops
    drawn uniformly from :data:`RANDAUGMENT_OPS`, each with its own random strength and sign.

    ``magnitude`` is on RandAugment's 0–10 scale: strengths are ``U(0, magnitude/10)`` of the full range
    (enhance factor 1 ± 0.9, rotate ±30°, shear ±0.3, translate ±30%, posterize to 4 bits, solarize threshold
    to 0), so the default 10 is FixMatch's RA. Colour ops run in slot order; the geometric ones are then
    composed into one affine per sample and applied by one ``grid_sample`` (grey fill, as in FixMatch).
    """
    _check(x)
    if not 0 <= magnitude <= 10:
        raise ValueError(f"magnitude is on a 0–10 scale, got {magnitude}")
    b = x.shape[0]
    ops = uniform(generator, x, b, num_ops, high=len(RANDAUGMENT_OPS))
    strength = uniform(generator, x, b, num_ops) * (magnitude / 10)
    v = torch.where(uniform(generator, x, b, num_ops) < 0.5, -strength, strength)
    x = x.clone()  # ops write their samples into x in place (see _where_samples)
    for k in range(num_ops):
        for name, fn in _COLOUR_OPS.items():
            x = _where_samples(fn, x, ops[:, k] == _OP[name], strength[:, k], v[:, k])
    return _geometric(x, ops, v).clamp_(0, 1)


def strong(x: torch.Tensor, generator: torch.Generator | None, flip: bool = True, num_ops: int = 2,
           magnitude: float = 10, erase: bool = True) -> torch.Tensor:
    """FixMatch (Sohn et al. 2020) strong augmentation: the weak view, then RandAugment (:func:`randaugment`),
    then Cutout of up to half the side (:func:`random_erase`, grey fill)."""
    x = randaugment(weak(x, generator, flip), generator, num_ops, magnitude)
    return random_erase(x, generator) if erase else x


def size_pair(size: Size | None, x: torch.Tensor) -> tuple[int, int]:
    size = x.shape[-2:] if size is None else size
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def crop_theta(x: torch.Tensor, generator: torch.Generator | None, scale: tuple[float, float],
                ratio: tuple[float, float], trials: int = 10) -> torch.Tensor:
    """Affines (B×2×3) of torchvision's RandomResizedCrop boxes, with its 10 tries done side by side."""
    b, _, h, w = x.shape
    area = scale[0] + (scale[1] - scale[0]) * uniform(generator, x, b, trials)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform(generator, x, b, trials))
    # Box sides as fractions of the image's width and height (aspect is in pixels, hence h/w).
    fw, fh = torch.sqrt(area * aspect * h / w), torch.sqrt(area / aspect * w / h)
    fits = (fw <= 1) & (fh <= 1)
    first = fits.int().argmax(1, keepdim=True)  # first try that fits; none fits → whole image below
    fw = torch.where(fits.any(1), fw.gather(1, first).squeeze(1), 1.0)
    fh = torch.where(fits.any(1), fh.gather(1, first).squeeze(1), 1.0)
    centre = (2 * uniform(generator, x, b, 2) - 1) * (1 - torch.stack([fw, fh], 1))  # keeps the box inside
    zero = torch.zeros_like(fw)
    return torch.stack([fw, zero, centre[:, 0], zero, fh, centre[:, 1]], 1).view(b, 2, 3)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator | None, out_size: Size | None = None,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop (Szegedy et al. 2015; torchvision's RandomResizedCrop): a box of
    ``scale`` of the area and ``ratio`` aspect, resized bilinearly to ``out_size`` (default: input size).
    Multi-crop (SwAV, Caron et al. 2020; PAWS, Assran et al. 2021) uses a small ``out_size`` and scale."""
    _check(x)
    return warp(x, crop_theta(x, generator, scale, ratio), size_pair(out_size, x)).clamp_(0, 1)


def jitter_matrix(x: torch.Tensor, generator: torch.Generator | None, s: float, p_jitter: float,
                   p_gray: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample colour transform ``out = M·pixel + t`` (M: B×C×C, t: B): SimCLR's jitter, then grayscale.

    Brightness (×f), saturation (blend with luma), hue (rotation of the YIQ chroma plane by 2π·h) and
    grayscale are linear in the pixel and contrast is affine, so together they are one C×C matrix plus an
    offset (luma of a grey pixel is itself, so the offset is the same on every channel). Unlike torchvision,
    nothing is clipped between the jitter ops, and their order is fixed.
    """
    b, c = x.shape[:2]
    u = uniform(generator, x, b, 6)
    f_bright, f_contrast, f_sat = ((1 + 0.8 * s * (2 * u[:, i] - 1)).clamp(min=0) for i in range(3))
    angle = 2 * math.pi * 0.2 * s * (2 * u[:, 3] - 1)
    luma = _luma(c).to(x.device)
    eye = torch.eye(c, device=x.device).expand(b, c, c)
    to_gray = luma.expand(c, c)  # every channel becomes the luma
    m = f_sat.view(b, 1, 1) * eye + (1 - f_sat).view(b, 1, 1) * to_gray
    if c == 3:
        # Rotating the chroma (I, Q) plane by −angle turns hue the way torchvision's adjust_hue does.
        cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
        rot = torch.stack([one, zero, zero, zero, cos, sin, zero, -sin, cos], 1).view(b, 3, 3)
        m = _YIQ_INV.to(x.device) @ rot @ _YIQ.to(x.device) @ m
    m = (f_bright * f_contrast).view(b, 1, 1) * m
    mean_luma = x.mean((2, 3)).float() @ luma  # contrast blends towards the mean grey of the bright image
    t = (1 - f_contrast) * f_bright * mean_luma
    jitter = u[:, 4] < p_jitter
    m, t = torch.where(jitter.view(b, 1, 1), m, eye), torch.where(jitter, t, 0.0)
    m = torch.where((u[:, 5] < p_gray).view(b, 1, 1), to_gray @ m, m)
    return m, t


def gaussian_blur(x: torch.Tensor, generator: torch.Generator | None, p: float,
                   sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """Per-sample Gaussian blur with prob. ``p``, σ ~ U(sigma) px, kernel ~10% of the side (SimCLR)."""
    b, c, h, w = x.shape
    size = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    u = uniform(generator, x, b, 2)
    # A tiny σ gives the kernel [0, …, 1, …, 0], i.e. an exact no-op for samples that are not blurred.
    sig = torch.where(u[:, 1] < p, sigma[0] + (sigma[1] - sigma[0]) * u[:, 0], 1e-3)
    d = torch.arange(size, device=x.device) - size // 2
    kernel = torch.exp(-(d**2) / (2 * sig[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.dtype)  # (B·C, size)
    y = F.pad(x.reshape(1, b * c, h, w), (size // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, size, 1), groups=b * c)  # separable: vertical, then horizontal
    return F.conv2d(y, kernel.view(b * c, 1, 1, size), groups=b * c).view(b, c, h, w)


def contrastive(x: torch.Tensor, generator: torch.Generator | None, out_size: Size | None = None,
                scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip: bool = True, jitter_strength: float = 0.5, p_jitter: float = 0.8, p_gray: float = 0.2,
                blur: bool = False, p_blur: float = 0.5) -> torch.Tensor:
    """SimCLR (Chen et al. 2020, Appendix A) view: random resized crop, flip, colour jitter of strength
    ``s = jitter_strength`` (brightness/contrast/saturation 0.8s, hue 0.2s) with prob. ``p_jitter``,
    grayscale with prob. ``p_gray``, and optional Gaussian blur (σ ∈ [0.1, 2] px, prob. ``p_blur``; meant
    for large images, it wipes out 32×32 ones). Crop and flip are one affine and one ``grid_sample``;
    jitter and grayscale are one per-sample colour matrix (see :func:`jitter_matrix`)."""
    _check(x)
    b, c = x.shape[:2]
    theta = crop_theta(x, generator, scale, ratio)
    flipped = uniform(generator, x, b) < (0.5 if flip else 0.0)
    theta[:, 0, 0] = torch.where(flipped, -theta[:, 0, 0], theta[:, 0, 0])  # mirror the sampling grid
    x = warp(x, theta, size_pair(out_size, x))
    m, t = jitter_matrix(x, generator, jitter_strength, p_jitter, p_gray)
    x = torch.baddbmm(t.to(x.dtype).view(b, 1, 1), m.to(x.dtype), x.flatten(2)).view_as(x).clamp_(0, 1)
    return gaussian_blur(x, generator, p_blur).clamp_(0, 1) if blur else x


def multicrop_large(x: torch.Tensor, generator: torch.Generator | None, flip: bool = True,
                    scale: tuple[float, float] = (0.75, 1.0), jitter_strength: float = 0.5,
                    **kwargs: Any) -> torch.Tensor:
    """A large multi-crop view (Caron et al. 2020; PAWS's CIFAR setting): a SimCLR view at full size from a
    crop of ``scale`` of the image (0.75–1 on 32 px; 0.14–1 on ImageNet)."""
    return contrastive(x, generator, scale=scale, flip=flip, jitter_strength=jitter_strength, **kwargs)


def multicrop_small(x: torch.Tensor, generator: torch.Generator | None, flip: bool = True,
                    out_size: Size | None = None, scale: tuple[float, float] = (0.3, 0.75),
                    jitter_strength: float = 0.5, **kwargs: Any) -> torch.Tensor:
    """A small multi-crop view: a crop of ``scale`` of the image, resized to ``out_size`` (default 9/16 of
    the side: 18 px from 32 px, as PAWS on CIFAR-10; 96 px from 224 on ImageNet is 3/7). Small views cost a
    fraction of a large one, which is the point of multi-crop."""
    size = out_size or max(1, round(x.shape[-1] * 9 / 16))
    return contrastive(x, generator, out_size=size, scale=scale, flip=flip, jitter_strength=jitter_strength,
                       **kwargs)
