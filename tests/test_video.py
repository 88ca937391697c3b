"""Video: sources (video file, strip, frame folder, Weizmann zip), CVRL's temporal interval sampling against
its formula, clip-consistent augmentation, video InfoNCE against Eq. 1, grouped splits, and a tiny CLI run."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivit.errors import SemivitError
from semivit.methods.cvrl import video_info_nce
from semivit.video.augment import ClipAugment, augment_clips, cvrl_views
from semivit.video.data import (
    group_holdout,
    leave_one_group_out,
    load_videos,
    read_frame_folder,
    read_strip,
    read_video_file,
    write_video_file,
)
from semivit.video.sampling import (
    interval_cdf,
    interval_probabilities,
    sample_clip_pair,
    sample_intervals,
    spaced_clips,
)

WEIZMANN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "weizmann_actions4.zip"


def _clip(t: int = 6, h: int = 16, w: int = 16, c: int = 3, seed: int = 0) -> torch.Tensor:
    """A clip whose frames differ: a bright square moving right over a smooth gradient."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 160, w).view(1, 1, 1, w).expand(t, c, h, w).clone()
    base += torch.rand(1, c, 1, 1, generator=g) * 60
    for i in range(t):
        base[i, :, 4:10, i:i + 6] = 250
    return base.round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ decoding
def test_strip_png_decodes_to_frames(tmp_path: Path) -> None:
    clip = _clip(t=5)
    strip = clip.permute(2, 0, 3, 1).reshape(16, 5 * 16, 3).numpy()  # H × (T·W) × C
    Image.fromarray(strip).save(tmp_path / "a.png")
    assert torch.equal(read_strip(tmp_path / "a.png"), clip)
    Image.fromarray(np.concatenate([strip, strip[:, :7]], 1)).save(tmp_path / "bad.png")
    with pytest.raises(SemivitError, match="frame width"):
        read_strip(tmp_path / "bad.png")


def test_frame_folder_reads_in_natural_order(tmp_path: Path) -> None:
    clip = _clip(t=12)
    for i in range(12):  # frame2 must come before frame10
        Image.fromarray(clip[i].permute(1, 2, 0).numpy()).save(tmp_path / f"frame{i}.png")
    assert torch.equal(read_frame_folder(tmp_path), clip)


def test_video_file_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (pip install av) is not installed: video files cannot be decoded")
    clip = _clip(t=10, h=32, w=32)
    write_video_file(tmp_path / "c.mp4", clip, fps=10)
    got = read_video_file(tmp_path / "c.mp4")
    assert got.shape == clip.shape and got.dtype == torch.uint8
    # lossy codec: close to the original, and each frame closer to its own source frame than to another
    err = (got.float() - clip.float()).abs().mean((1, 2, 3))
    assert float(err.max()) < 12
    assert float((got[3].float() - clip[7].float()).abs().mean()) > 2 * float(err[3])
    assert read_video_file(tmp_path / "c.mp4", size=(16, 24)).shape == (10, 3, 16, 24)


def test_folder_source_mixes_layouts_and_groups_mirrors(tmp_path: Path) -> None:
    for cls, seed in (("jump", 0), ("walk", 1)):
        for actor in ("actor0", "actor1"):
            for kind in ("orig", "mirror"):
                clip = _clip(t=4, seed=seed)
                clip = clip.flip(-1) if kind == "mirror" else clip
                (tmp_path / cls).mkdir(exist_ok=True)
                strip = clip.permute(2, 0, 3, 1).reshape(16, 64, 3).numpy()
                Image.fromarray(strip).save(tmp_path / cls / f"{actor}_{kind}.png")
    frames = tmp_path / "walk" / "actor2_orig"
    frames.mkdir()
    for i, f in enumerate(_clip(t=4)):
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(frames / f"{i:03d}.jpg")
    data = load_videos(str(tmp_path), size=(8, 8))
    assert data.classes == ["jump", "walk"] and len(data) == 9
    assert data.frame_size == (8, 8) and data.channels == 3
    assert sorted(set(data.groups)) == ["actor0", "actor1", "actor2"]
    train, test = group_holdout(data, "groups:actor1")
    assert {data.groups[i] for i in test} == {"actor1"} and len(test) == 4
    assert not {data.groups[i] for i in train} & {"actor1"}


# ------------------------------------------------------------------------------------- temporal sampling
def test_interval_cdf_is_the_linear_decreasing_density() -> None:
    # power 1: f(t) = 2(M − t)/M², so F(x) = 2x − x² (x = t/M), and P(gap = d) falls linearly in d
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(interval_cdf(x), 2 * x - x * x)
    p = interval_probabilities(10)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)
    assert torch.allclose(p, torch.tensor([(2 * (10 - d) - 1) / 100 for d in range(10)], dtype=torch.float64))
    assert bool((p.diff() < 0).all())  # monotonically decreasing
    assert torch.allclose(interval_probabilities(10, power=0), torch.full((10,), 0.1, dtype=torch.float64))


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_sampled_gaps_follow_the_formula(power: float) -> None:
    m, n = 12, 40_000
    gaps = sample_intervals(torch.full((n,), m), torch.Generator().manual_seed(0), power)
    counts = torch.bincount(gaps, minlength=m).double()
    expected = interval_probabilities(m, power) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 35.0  # 11 degrees of freedom: P(χ² > 35) ≈ 2.5e-4
    # and a wrong formula (the uniform gap) is rejected by the same test
    uniform = torch.full((m,), n / m, dtype=torch.float64)
    assert float(((counts - uniform) ** 2 / uniform).sum()) > 200


def test_clip_pairs_respect_the_gap_and_the_video() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([40, 40, 17, 5] * 500)
    a, b = sample_clip_pair(lengths, num_frames=8, stride=2, generator=g)
    assert a.shape == b.shape == (2000, 8)
    assert bool((a < lengths[:, None]).all() and (b < lengths[:, None]).all())
    long = lengths == 40  # fits: contiguous stride-2 clips inside the video, gap < M = 40 − 14
    assert bool((a[long].diff(dim=1) == 2).all() and (b[long].diff(dim=1) == 2).all())
    gap = (a[long, 0] - b[long, 0]).abs()
    assert int(gap.max()) < 26 and float(gap.float().mean()) < 26 / 2  # decreasing: mean gap < M/2 (≈ M/3)
    assert 0.4 < float((a[long, 0] < b[long, 0]).float().mean()) < 0.6  # the order of the pair is random
    short = lengths == 5  # shorter than a clip: frames wrap around
    assert bool((a[short] < 5).all())
    assert spaced_clips(30, 8, 2, 3)[:, 0].tolist() == [0, 8, 15]  # starts 0, 7.5, 15 (M − 1), rounded


# --------------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_consistent_within_a_clip_and_differs_between_clips() -> None:
    # every frame of a clip is the same image: after a clip-consistent augmentation they must stay equal
    frame = torch.rand(4, 1, 3, 24, 24)
    ramp = torch.linspace(0, 1, 24).view(1, 1, 1, 1, 24)
    clips = (0.6 * frame + 0.4 * ramp).expand(4, 6, 3, 24, 24).contiguous()
    aug = ClipAugment(p_blur=0.5, p_solarize=0.5, p_gray=0.3)
    out = augment_clips(clips, torch.Generator().manual_seed(0), aug, out_size=16)
    assert out.shape == (4, 6, 3, 16, 16)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)
    # the draws differ between clips: the same clip content gets different outputs in different slots
    same = clips[:1].expand(4, -1, -1, -1, -1).contiguous()
    out = augment_clips(same, torch.Generator().manual_seed(0), aug, out_size=16)
    assert all(float((out[0] - out[i]).abs().mean()) > 1e-2 for i in range(1, 4))
    # the per-frame ablation breaks exactly this: frames of one clip now differ
    per_frame = augment_clips(clips, torch.Generator().manual_seed(0), ClipAugment(per_frame=True), out_size=16)
    assert per_frame.shape == (4, 6, 3, 16, 16)
    assert float((per_frame[:, 0] - per_frame[:, 1]).abs().mean()) > 1e-2


def test_augmentation_keeps_motion_and_crops_every_frame_alike() -> None:
    # a moving square: with one crop/flip per clip the square's displacement between frames keeps its size
    clips = torch.zeros(8, 5, 1, 32, 32)
    for t in range(5):
        clips[:, t, :, 10:16, 4 + 3 * t:10 + 3 * t] = 1.0
    aug = ClipAugment(scale=(0.9, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    out = augment_clips(clips, torch.Generator().manual_seed(3), aug)
    cols = torch.arange(32).float()
    centre = (out.sum(3).squeeze(2) * cols).sum(-1) / out.sum((2, 3, 4)).clamp_min(1e-6)  # B×T x-centroid
    steps = centre.diff(dim=1)
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=0.2)  # uniform motion stays uniform
    assert (steps[:, 0].abs() > 2).all()
    assert bool((steps[:, 0] < 0).any() and (steps[:, 0] > 0).any())  # some clips flipped, some not


def test_cvrl_views_follow_the_official_settings() -> None:
    v1, v2 = cvrl_views()
    assert (v1.p_blur, v2.p_blur, v1.p_solarize, v2.p_solarize) == (1.0, 0.1, 0.0, 0.2)
    assert v1.scale == (0.3, 1.0) and v1.ratio == (0.5, 2.0) and v1.jitter_strength == 1.0


# --------------------------------------------------------------------------------------------------- loss
def test_video_info_nce_matches_eq1() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    tau = 0.1
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    total = 0.0
    for i in range(10):  # Eq. 1 over all 2N clips: positive = the other clip of the same video
        pos = (i + 5) % 10
        denom = sum(math.exp(float(sim[i, k])) for k in range(10) if k != i)
        total += -math.log(math.exp(float(sim[i, pos])) / denom)
    loss, hit = video_info_nce(z1, z2, tau)
    assert math.isclose(float(loss), total / 10, rel_tol=1e-5)
    loss_same, hit_same = video_info_nce(z1, z1 + 1e-3 * z2, tau)
    assert float(loss_same) < float(loss) and float(hit_same) == 1.0


# ------------------------------------------------------------------------------------------------- splits
def test_group_folds_keep_each_group_on_one_side() -> None:
    from semivit.video.data import VideoSet

    videos = [torch.zeros(3, 1, 4, 4, dtype=torch.uint8)] * 12
    labels = torch.tensor([0, 1, 2] * 4)
    groups = [f"p{i // 3}" for i in range(12)]
    data = VideoSet(videos, labels, ["a", "b", "c"], [f"v{i}" for i in range(12)], groups)
    folds = leave_one_group_out(data)
    assert [f[0] for f in folds] == ["p0", "p1", "p2", "p3"]
    for g, train, test in folds:
        assert {groups[i] for i in test} == {g} and g not in {groups[i] for i in train}


@pytest.mark.skipif(not WEIZMANN.is_file(), reason="../shared/data/weizmann_actions4.zip is absent")
def test_weizmann_performer_splits_keep_performers_and_mirrors_together() -> None:
    data = load_videos(str(WEIZMANN), size=(16, 16))
    assert data.classes == ["bend", "jack", "wave1", "wave2"] and len(data) == 72
    assert len(set(data.groups)) == 9 and all(g.startswith("actor") for g in data.groups)
    assert min(len(v) for v in data.videos) >= 51 and data.channels == 3
    with zipfile.ZipFile(WEIZMANN) as z:  # the mirror clip really is the left-right mirror of the original
        names = sorted(n for n in z.namelist() if n.endswith("actor0_orig.png"))
        orig = read_strip(z.read(names[0]))
        mirror = read_strip(z.read(names[0].replace("_orig", "_mirror")))
    assert torch.equal(orig.flip(-1), mirror)
    for group, train, test in leave_one_group_out(data):
        stems = lambda idx: {Path(data.names[i]).stem.split("_")[0] for i in idx}  # noqa: E731
        assert stems(test) == {group} and group not in stems(train)
        assert len(test) == 8  # 4 actions × (orig + mirror)
