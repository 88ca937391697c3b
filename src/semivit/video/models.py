"""Video encoders: torchvision's 3D ResNet-18 (R3D, Tran et al. 2018) and (2+1)D ResNet-18 (R(2+1)D) with a
width option, and the classifier that wraps one.

CVRL's backbone is R3D-50 (Sec. 4.1); on CPUs and small clips the 18-layer BasicBlock network is the
practical member of the family, and ``width`` (64 in torchvision) scales every stage (width, 2w, 4w, 8w):
width 16 runs an 8×32×32 clip in a few milliseconds. The blocks, convolution builders and ``_make_layer``
are torchvision's own; only the stem is built here so that its width and input channels follow the
arguments (torchvision fixes 3 → 64, and 45 mid channels for R(2+1)D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple, VideoResNet

from semivit.errors import SemivitError

ARCHS = ("r3d_18", "r2plus1d_18")


class VideoEncoder(VideoResNet):
    """An 18-layer video ResNet of stage widths (w, 2w, 4w, 8w) returning pooled B×8w features from a
    B×C×T×H×W clip (no classifier: ``fc`` is the identity)."""

    def __init__(self, arch: str = "r3d_18", width: int = 64, in_chans: int = 3) -> None:
        if arch not in ARCHS:
            raise SemivitError(f"unknown video encoder '{arch}': use one of {', '.join(ARCHS)}")
        nn.Module.__init__(self)  # VideoResNet.__init__ hard-codes width 64 and 3 channels
        conv = Conv3DSimple if arch == "r3d_18" else Conv2Plus1D
        if arch == "r3d_18":
            self.stem = nn.Sequential(
                nn.Conv3d(in_chans, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        else:  # R(2+1)D stem: a spatial 1×7×7 then a temporal 3×1×1 convolution
            mid = max(width * 45 // 64, 8)
            self.stem = nn.Sequential(
                nn.Conv3d(in_chans, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                nn.Conv3d(mid, width, (3, 1, 1), 1, (1, 0, 0), bias=False),
                nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.inplanes = width
        self.layer1 = self._make_layer(BasicBlock, conv, width, 2, stride=1)
        self.layer2 = self._make_layer(BasicBlock, conv, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, conv, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, conv, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Identity()
        self.num_features = 8 * width
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


@dataclass
class VideoSpec:
    """What rebuilds a :class:`VideoClassifier` (stored in the exported safetensors' metadata)."""

    arch: str = "r3d_18"
    width: int = 16
    in_chans: int = 3
    num_classes: int = 0
    num_frames: int = 8
    stride: int = 2
    frame_size: int = 32
    classes: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "video", **asdict(self)}


class VideoClassifier(nn.Module):
    """Encoder + linear classifier over B×T×C×H×W float clips in [0, 1] (normalised inside with the
    per-channel mean/std of the training videos, kept as buffers so the exported file is complete)."""

    def __init__(self, spec: VideoSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = VideoEncoder(spec.arch, spec.width, spec.in_chans)
        self.head = nn.Linear(self.encoder.num_features, spec.num_classes) if spec.num_classes else nn.Identity()
        self.register_buffer("mean", torch.full((spec.in_chans,), 0.5))
        self.register_buffer("std", torch.full((spec.in_chans,), 0.25))

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-3))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        x = (clips - self.mean.view(1, 1, -1, 1, 1)) / self.std.view(1, 1, -1, 1, 1)
        return self.encoder(x.transpose(1, 2))  # torchvision's layout: B×C×T×H×W

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips))


def channel_stats(videos: list[torch.Tensor], max_frames: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) over up to ``max_frames`` evenly chosen frames."""
    frames = torch.cat(videos)
    step = max(1, len(frames) // max_frames)
    x = frames[::step].float().div_(255)
    return x.mean((0, 2, 3)), x.std((0, 2, 3))


def export_video_model(model: VideoClassifier, path: str, extra: dict | None = None) -> None:
    from semivit.engine.checkpoint import export_weights

    export_weights(model, path, model.spec.to_dict(), extra)


def load_video_model(path: str) -> VideoClassifier:
    """A :class:`VideoClassifier` from a run folder or its ``model.safetensors`` (no pickle)."""
    from semivit.engine.checkpoint import read_weights

    tensors, meta = read_weights(path)
    spec = dict(meta["semivit_spec"])
    if spec.pop("kind", None) != "video":
        raise SemivitError(f"'{path}' holds an image model, not a video one: pass a `semivit video` run folder")
    model = VideoClassifier(VideoSpec(**spec))
    model.load_state_dict(tensors)
    return model.eval()
