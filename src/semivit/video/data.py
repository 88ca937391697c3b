"""Video data: one :class:`VideoSet` behind four source families, and performer-aware (grouped) splits.

Sources (see :func:`load_videos`):

- a folder of **video files** ``ROOT/<class>/<clip>.{mp4,avi,mov,mkv,webm}``, decoded with PyAV
  (``pip install av``; torchvision 0.29 no longer ships ``torchvision.io`` video readers);
- **frame folders** ``ROOT/<class>/<clip>/<frame>.{png,jpg}`` (frames in natural order: 2 before 10);
- **frame strips** ``ROOT/<class>/<clip>.png``: one clip per image, its frames side by side (square frames
  unless ``frame_width`` says otherwise) — the layout of the Weizmann clips in ``../shared/data``;
- a **zip** of strips (``weizmann_actions4.zip``: ``weizmann_actions4/<class>/actorK_{orig,mirror}.png``),
  and the **npz** files ``semivit video sprites`` writes (arrays, read without pickle).

Every clip carries a *group*: the clips that must stay on one side of a split. By default it is the clip
name without an ``_orig``/``_mirror`` suffix, so ``actor3_orig`` and ``actor3_mirror`` of every class form
the group ``actor3`` (Weizmann: one performer, a clip and its mirror together). Videos are kept whole in
memory as uint8 T×C×H×W tensors (resized at load time): clips are sampled from them per step.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from semivit.core.io import read_npz
from semivit.data.sources.common import decode_pil, is_image
from semivit.errors import SemivitError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_GROUP_PATTERN = r"^(.*?)(?:[_-](?:orig|mirror|flip|flipped))?$"


@dataclass
class VideoSet:
    """Decoded videos (each a uint8 T×C×H×W tensor; T may differ), labels (-1: none), class names, clip
    names and groups (clips that must share a side of any split), and an optional stored split
    (``"train"``/``"test"`` per clip, from files that carry one)."""

    videos: list[torch.Tensor]
    labels: torch.Tensor
    classes: list[str]
    names: list[str]
    groups: list[str]
    parts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    #: one class per clip (the image sets' multi-label layout does not apply to clips)
    multilabel = False

    def known(self) -> torch.Tensor:
        """Which clips carry a label."""
        return self.labels >= 0

    @property
    def ids(self) -> list[str]:
        """Each clip's name: what a run's split.json lists (as image ids)."""
        return self.names

    @property
    def channels(self) -> int:
        return int(self.videos[0].shape[1])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.videos[0].shape[2]), int(self.videos[0].shape[3])

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(v) for v in self.videos])

    def subset(self, indices: torch.Tensor | list[int]) -> VideoSet:
        idx = [int(i) for i in indices]
        return VideoSet([self.videos[i] for i in idx], self.labels[idx], self.classes,
                        [self.names[i] for i in idx], [self.groups[i] for i in idx],
                        [self.parts[i] for i in idx] if self.parts else [])


def _natural_key(name: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def _resize(video: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 T×C×H×W resized to ``size`` (bilinear, antialiased when shrinking); unchanged when it fits."""
    if size is None or tuple(video.shape[-2:]) == tuple(size):
        return video
    out = F.interpolate(video.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _channels(video: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or video.shape[1] == channels:
        return video
    if channels == 1:  # luma (ITU-R 601, PIL's weights)
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (video.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return video.expand(-1, channels, -1, -1).contiguous()


def split_strip(frames: np.ndarray, frame_width: int | None = None, where: str = "strip") -> torch.Tensor:
    """A strip image H×(T·w)×C as a uint8 T×C×H×w clip (``frame_width`` w defaults to H: square frames)."""
    h, width = frames.shape[:2]
    w = frame_width or h
    if width % w:
        raise SemivitError(f"'{where}' is {width} px wide, not a multiple of the {w}-px frame width: pass the "
                           f"frame width of the strip (--frame-width) or use frame folders")
    t = width // w
    clip = torch.from_numpy(np.array(frames, copy=True)).view(h, t, w, -1)
    return clip.permute(1, 3, 0, 2).contiguous()


def read_strip(data: bytes | str | Path, frame_width: int | None = None, where: str = "strip") -> torch.Tensor:
    """Decode a strip PNG/JPEG (a path or its bytes) to a T×C×H×w uint8 clip (grey stays 1 channel, RGBA
    becomes RGB)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return split_strip(decode_pil(img, None, None), frame_width, where)
    except (OSError, ValueError, SyntaxError) as e:  # a 0-byte, truncated or non-image file
        raise SemivitError(f"cannot read the frame strip '{where}' ({type(e).__name__}): it is empty or not an "
                           f"image; delete or replace it") from None


def read_frame_folder(folder: str | Path) -> torch.Tensor:
    """The images of ``folder`` in natural order as a T×C×H×W uint8 clip (all frames the same size)."""
    files = sorted((p for p in Path(folder).iterdir() if is_image(p.name)), key=lambda p: _natural_key(p.name))
    if not files:
        raise SemivitError(f"frame folder '{folder}' has no images: put the clip's frames (PNG/JPEG) in it")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as img:
                arrays.append(decode_pil(img, None, None))
        except (OSError, ValueError, SyntaxError) as e:
            raise SemivitError(f"cannot read the frame '{p}' ({type(e).__name__}): it is empty or not an image; "
                               f"delete or replace it") from None
    if len({a.shape for a in arrays}) > 1:
        raise SemivitError(f"the frames in '{folder}' differ in size: store every frame of a clip at one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _av():
    try:
        import av
    except ImportError:
        raise SemivitError("decoding video files needs PyAV: pip install av (or store clips as frame folders "
                           "or strips)") from None
    return av


def read_video_file(path: str | Path, size: tuple[int, int] | None = None,
                    max_frames: int | None = None) -> torch.Tensor:
    """Decode every frame of a video file with PyAV to a uint8 T×3×H×W clip (scaled by FFmpeg's swscale
    to ``size`` (H, W) when given; ``max_frames`` stops early)."""
    av = _av()
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                kw = {"width": size[1], "height": size[0]} if size else {}
                frames.append(frame.to_ndarray(format="rgb24", **kw))
                if max_frames and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, IndexError) as e:
        raise SemivitError(f"cannot decode video '{path}' ({type(e).__name__}: {e}): re-encode it (e.g. "
                           f"ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it") from None
    if not frames:
        raise SemivitError(f"video '{path}' has no frames: re-encode it or remove it")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def write_video_file(path: str | Path, clip: torch.Tensor, fps: int = 25, codec: str = "mpeg4") -> None:
    """Encode a uint8 T×C×H×W clip (C = 1 or 3; even H and W) as a video file with PyAV (lossy)."""
    av = _av()
    frames = clip.expand(-1, 3, -1, -1) if clip.shape[1] == 1 else clip
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = int(frames.shape[2]), int(frames.shape[3])
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for arr in frames.permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")))
        container.mux(stream.encode(None))


def group_of(name: str, pattern: str = DEFAULT_GROUP_PATTERN) -> str:
    """The group of clip ``name`` (its stem): the first capture group of ``pattern`` (else the whole match,
    else the name). The default drops an ``_orig``/``_mirror`` suffix: a clip and its mirror share a group."""
    m = re.search(pattern, name)
    if not m:
        return name
    return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)


def _finish(videos: list[torch.Tensor], labels: list[int], classes: list[str], names: list[str], where: str,
            size: tuple[int, int] | None, channels: int | None, group_pattern: str) -> VideoSet:
    if not videos:
        raise SemivitError(f"no clips found in '{where}': use ROOT/<class>/<clip> with video files, frame "
                           f"folders or strip images")
    videos = [_channels(_resize(v, size), channels) for v in videos]
    shapes = {tuple(v.shape[1:]) for v in videos}
    if len(shapes) > 1:
        raise SemivitError(f"clips in '{where}' differ in frame size or channels {sorted(shapes)[:3]}: pass "
                           f"--size and --channels to bring them to one")
    stems = [Path(n).stem for n in names]
    return VideoSet(videos, torch.tensor(labels, dtype=torch.long), classes, names,
                    [group_of(s, group_pattern) for s in stems])


def _load_zip(path: Path, frame_width: int | None) -> tuple[list, list, list[str], list[str]]:
    with zipfile.ZipFile(path) as z:
        entries = sorted((n for n in z.namelist() if is_image(n) and "__MACOSX" not in n), key=_natural_key)
        classes = sorted({n.split("/")[-2] for n in entries if "/" in n})
        if not classes:
            raise SemivitError(f"'{path}' holds no <class>/<clip> strip images: use the layout "
                               f"[PREFIX/]<class>/<clip>.png")
        videos, labels, names = [], [], []
        for n in entries:
            if "/" not in n:
                continue
            videos.append(read_strip(z.read(n), frame_width, f"{path}:{n}"))
            labels.append(classes.index(n.split("/")[-2]))
            names.append(n)
    return videos, labels, classes, names


def _load_folder(path: Path, size: tuple[int, int] | None, frame_width: int | None
                 ) -> tuple[list, list, list[str], list[str]]:
    classes = sorted((d.name for d in path.iterdir() if d.is_dir()), key=_natural_key)
    if not classes:
        raise SemivitError(f"'{path}' has no class folders: use ROOT/<class>/<clip> (video files, frame "
                           f"folders or strip images)")
    videos, labels, names = [], [], []
    for k, cls in enumerate(classes):
        for item in sorted((path / cls).iterdir(), key=lambda p: _natural_key(p.name)):
            if item.is_dir():
                clip = read_frame_folder(item)
            elif item.suffix.lower() in VIDEO_EXTENSIONS:
                clip = read_video_file(item, size)
            elif is_image(item.name):
                clip = read_strip(item, frame_width, str(item))
            else:
                continue
            videos.append(clip)
            labels.append(k)
            names.append(f"{cls}/{item.name}")
    return videos, labels, classes, names


def _load_npz(path: Path) -> VideoSet:
    z = read_npz(path)  # never unpickle: arrays and unicode arrays only; a damaged file is one line
    missing = {"videos", "labels", "classes"} - set(z)
    if missing:
        raise SemivitError(f"'{path}' lacks {sorted(missing)}: write it with `semivit video sprites`")
    if z["videos"].dtype != np.uint8 or z["videos"].ndim != 5:
        raise SemivitError(f"'{path}': 'videos' must be uint8 N×T×C×H×W clips, got {z['videos'].dtype} with shape "
                           f"{z['videos'].shape}: write it with `semivit video sprites`")
    x = torch.from_numpy(z["videos"])
    n = len(x)
    names = [str(s) for s in z["names"]] if "names" in z else [f"clip{i}" for i in range(n)]
    groups = [str(s) for s in z["groups"]] if "groups" in z else names
    parts = [str(s) for s in z["parts"]] if "parts" in z else []
    return VideoSet(list(x.unbind(0)), torch.from_numpy(z["labels"]).long(), [str(c) for c in z["classes"]],
                    names, groups, parts)


def load_videos(spec: str, size: tuple[int, int] | None = None, channels: int | None = None,
                frame_width: int | None = None, group_pattern: str = DEFAULT_GROUP_PATTERN) -> VideoSet:
    """Load every clip under ``spec`` (a folder, a zip of strips, or a sprites ``.npz``); see the module
    docstring for the layouts. ``size`` (H, W) and ``channels`` bring all clips to one frame shape."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise SemivitError(f"video data '{spec}' not found: pass a folder ROOT/<class>/<clip>, a zip of strips "
                           f"or a .npz from `semivit video sprites`")
    if path.suffix == ".npz":
        data = _load_npz(path)
        data.videos = [_channels(_resize(v, size), channels) for v in data.videos]
        return data
    if path.suffix == ".zip":
        videos, labels, classes, names = _load_zip(path, frame_width)
    else:
        videos, labels, classes, names = _load_folder(path, size, frame_width)
    return _finish(videos, labels, classes, names, spec, size, channels, group_pattern)


# --------------------------------------------------------------------------------------------------- splits
def group_holdout(data: VideoSet, holdout: str = "auto", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) clip indices with every group wholly on one side.

    ``holdout``: ``auto`` (the split stored in the file if any, else 20% of the groups), a fraction of the
    groups (``0.25``), or ``groups:A,B`` (those groups are the test side: ``groups:actor0`` leaves one
    Weizmann performer out). A stored split is checked for groups on both sides."""
    groups = np.array(data.groups)
    if holdout == "auto" and data.parts:
        test = np.array([p == "test" for p in data.parts])
    elif holdout.startswith("groups:"):
        names = [g for g in holdout[len("groups:"):].split(",") if g]
        unknown = sorted(set(names) - set(data.groups))
        if unknown:
            raise SemivitError(f"unknown group(s) {unknown[:3]} in --holdout: use names among "
                               f"{sorted(set(data.groups))[:8]}")
        test = np.isin(groups, names)
    else:
        try:
            frac = 0.2 if holdout == "auto" else float(holdout)
        except ValueError:
            raise SemivitError(f"--holdout '{holdout}' is not auto, a fraction or groups:A,B: use e.g. 0.2 or "
                               f"groups:actor0") from None
        if not 0 < frac < 1:
            raise SemivitError(f"--holdout fraction must be in (0, 1), got {frac}")
        unique = sorted(set(data.groups), key=_natural_key)
        rng = np.random.default_rng(seed)
        k = max(1, round(frac * len(unique)))
        test = np.isin(groups, [unique[i] for i in rng.permutation(len(unique))[:k]])
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    leaked = set(groups[train_idx]) & set(groups[test_idx])
    if leaked:
        raise SemivitError(f"group(s) {sorted(leaked)[:3]} are on both sides of the stored split: rewrite the "
                           f"file or pass --holdout 0.2")
    if not len(train_idx) or not len(test_idx):
        raise SemivitError(f"--holdout '{holdout}' leaves one side empty: hold out fewer or more groups")
    return torch.from_numpy(train_idx), torch.from_numpy(test_idx)


def leave_one_group_out(data: VideoSet) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """One (group, train, test) fold per group (Weizmann: leave-one-performer-out)."""
    return [(g, *group_holdout(data, f"groups:{g}")) for g in sorted(set(data.groups), key=_natural_key)]
