"""Moving-sprite videos for pre-training at scale: Fashion-MNIST items (or digits) moving on a black canvas,
labelled by their **motion pattern**, not by the sprite.

The label is the motion so that temporal information is what the task needs: every video draws a random
sprite, a random static scale (0.8–1.2) and a random static rotation, so any single frame shows "a sprite
of some size and angle somewhere" whatever the class; only how the frames change tells the classes apart.
The five patterns are all mapped onto themselves by a horizontal flip (a flip turns a clockwise orbit
into an anticlockwise one, both "orbit"), so CVRL's flip augmentation cannot erase the label:

- ``slide``: constant velocity (1–2 px/frame) in a uniformly random direction, bouncing off the borders;
- ``oscillate``: harmonic back-and-forth along a random axis (amplitude 4–8 px, period 8–16 frames);
- ``orbit``: a circle around a random centre (radius 4–8 px, period 8–16 frames, either sense);
- ``pulse``: in place, the size oscillates (×(1 ± 0.35), period 8–16 frames);
- ``spin``: in place, the sprite rotates (one turn per 8–16 frames, either sense).

Every phase is random. Rendering is one batched affine ``grid_sample`` per chunk of frames (the sprite
warped into the canvas by rotation, scale and translation). Training videos take their sprites from the
sprite set's training images and test videos from its test images, so no sprite image is on both sides;
``pool`` limits the training sprites to that many images (with a small pool, two videos in a batch often
share a sprite, so telling them apart — CVRL's task — needs their motion rather than their appearance).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semivit.errors import SemivitError

MOTIONS = ("slide", "oscillate", "orbit", "pulse", "spin")


def sprite_images(source: str = "fashion-mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) grey sprites as float N×1×h×w in [0, 1]: ``fashion-mnist`` (Debian's
    dataset-fashion-mnist files, or an IDX folder path) or ``digits`` (scikit-learn's 8×8 digits)."""
    if source == "digits":
        from sklearn.datasets import load_digits

        x = torch.from_numpy(load_digits().images).float().div(16).unsqueeze(1)
        cut = int(0.8 * len(x))
        return x[:cut], x[cut:]
    from semivit.data.sources.builtin import DEBIAN_FASHION_MNIST, idx_file, read_idx

    folder = DEBIAN_FASHION_MNIST if source in ("fashion-mnist", "fashion_mnist") else Path(source)
    train, test = idx_file(folder, "train", "images"), idx_file(folder, "t10k", "images")
    if train is None or test is None:
        raise SemivitError(f"no Fashion-MNIST IDX files in '{folder}': apt-get install dataset-fashion-mnist, "
                           f"pass an IDX folder, or use --sprites digits")
    return (torch.from_numpy(read_idx(train)).float().div(255).unsqueeze(1),
            torch.from_numpy(read_idx(test)).float().div(255).unsqueeze(1))


def _bounce(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions reflected into [lo, hi] (a triangle wave): straight motion bouncing off the borders."""
    span = hi - lo
    y = torch.remainder(x - lo, 2 * span)
    return lo + torch.where(y > span, 2 * span - y, y)


def motion_paths(labels: torch.Tensor, frames: int, canvas: int, sprite: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per video and frame: centre (N×T×2, pixels), scale (N×T) and angle (N×T, radians) of the sprite for
    the motion class ``labels`` (see the module docstring for the exact laws)."""
    n = len(labels)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (n,), generator=generator)

    t = torch.arange(frames).float()[None, :]
    lo, hi = sprite / 2, canvas - sprite / 2
    period = u(8, 16)[:, None]
    phase = u(0, 2 * math.pi)[:, None]
    sense = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)[:, None]
    direction = u(0, 2 * math.pi)
    unit = torch.stack([direction.cos(), direction.sin()], 1)  # N×2
    amp = u(4, 8)
    # centres that keep an oscillation / orbit of amplitude `amp` inside the canvas
    centre = lo + amp[:, None] + torch.rand((n, 2), generator=generator) * (hi - lo - 2 * amp[:, None])
    base_scale, base_angle = u(0.8, 1.2)[:, None], u(-math.pi, math.pi)[:, None]
    wave = torch.sin(2 * math.pi * t / period + phase)  # N×T

    slide = _bounce(centre[:, None, :] + u(1, 2)[:, None, None] * t[..., None] * unit[:, None, :], lo, hi)
    oscillate = centre[:, None, :] + (amp[:, None] * wave)[..., None] * unit[:, None, :]
    angle_t = sense * 2 * math.pi * t / period + phase
    orbit = centre[:, None, :] + amp[:, None, None] * torch.stack([angle_t.cos(), angle_t.sin()], -1)
    still = centre[:, None, :].expand(n, frames, 2)
    pos = torch.stack([slide, oscillate, orbit, still, still])[labels, torch.arange(n)]
    scale = torch.where((labels == 3)[:, None], base_scale * (1 + 0.35 * wave), base_scale.expand(n, frames))
    angle = torch.where((labels == 4)[:, None], base_angle + angle_t, base_angle.expand(n, frames))
    return pos, scale, angle


def render(sprites: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, canvas: int,
           sprite: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N×T×1×S×S videos: sprite n drawn at ``pos``/``scale``/``angle`` in every frame (bilinear)."""
    n, t = scale.shape
    out = torch.empty(n * t, 1, canvas, canvas, dtype=torch.uint8)
    src = sprites.repeat_interleave(t, 0) if len(sprites) == n else sprites
    p, s, a = pos.reshape(-1, 2), scale.reshape(-1), angle.reshape(-1)
    for i in range(0, n * t, chunk):
        j = slice(i, i + chunk)
        # output (canvas) → input (sprite) in [-1, 1] coordinates: q = R(−θ)·(x − c)·S / (scale·s)
        k = canvas / (s[j] * sprite)
        cos, sin = a[j].cos() * k, a[j].sin() * k
        c = p[j] / canvas * 2 - 1  # the pixel centre in [-1, 1] canvas coordinates
        m = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # N×2×2
        theta = torch.cat([m, -(m @ c[:, :, None])], 2)
        grid = F.affine_grid(theta, [len(c), 1, canvas, canvas], align_corners=False)
        frames = F.grid_sample(src[j], grid, padding_mode="zeros", align_corners=False)
        out[j] = frames.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out.view(n, t, 1, canvas, canvas)


def make_sprite_videos(num_train: int = 2000, num_test: int = 500, frames: int = 32, canvas: int = 32,
                       sprite: int = 14, source: str = "fashion-mnist", pool: int = 0,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a sprites ``.npz`` (videos N×T×1×S×S uint8, labels, classes, names, groups, parts);
    balanced classes, train then test."""
    g = torch.Generator().manual_seed(seed)
    train_pool, test_pool = sprite_images(source)
    if pool:
        train_pool = train_pool[torch.randperm(len(train_pool), generator=g)[:pool]]
    parts = []
    for count, images, part in ((num_train, train_pool, "train"), (num_test, test_pool, "test")):
        labels = torch.arange(count) % len(MOTIONS)
        labels = labels[torch.randperm(count, generator=g)]
        chosen = images[torch.randint(len(images), (count,), generator=g)]
        pos, scale, angle = motion_paths(labels, frames, canvas, sprite, g)
        parts.append((render(chosen, pos, scale, angle, canvas, sprite), labels, part))
    videos = torch.cat([p[0] for p in parts])
    names = [f"{p[2]}/{i:05d}" for p in parts for i in range(len(p[1]))]
    return {"videos": videos.numpy(), "labels": torch.cat([p[1] for p in parts]).numpy(),
            "classes": np.array(MOTIONS), "names": np.array(names), "groups": np.array(names),
            "parts": np.array([p[2] for p in parts for _ in range(len(p[1]))])}


def write_sprite_videos(out: str | Path, **kwargs: object) -> Path:
    """Generate (see :func:`make_sprite_videos`) and save as a compressed ``.npz`` (no pickled objects)."""
    arrays = make_sprite_videos(**kwargs)  # type: ignore[arg-type]
    path = Path(out)
    if path.suffix != ".npz":
        raise SemivitError(f"--out '{out}' must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
