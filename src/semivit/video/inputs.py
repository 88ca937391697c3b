"""Video as the inputs of the one Trainer: clips in the batches, multi-clip predictions in evaluation.

:class:`VideoInputs` answers the questions the :class:`~semivit.engine.trainer.Trainer` asks its inputs (the
:class:`~semivit.engine.inputs.StageInputs` protocol), as images and cached features do: batches for a
method's :class:`~semivit.methods.base.DataRequest`, logits and embeddings of a part of the data, the model to
export. So CVRL (:mod:`semivit.methods.cvrl`), supervised fine-tuning, FixMatch, the EMA-Teacher and UDA
train on clips in the same loop, with its AMP, accumulation, EMA, validation, checkpoints, resume, SIGTERM
handling and DDP.

The views a video batch makes (one draw per clip, every frame alike: CVRL's temporally consistent
augmentation):

- ``weak``: one clip of each video at a uniform start, cropped and flipped (the fine-tuning view);
- ``strong``: the same clip as ``weak``, with CVRL's second view on top (crop, flip, colour jitter,
  grayscale, solarization): FixMatch's weak/strong pair at clip level;
- ``cvrl`` / ``cvrl:2``: two clips of each video whose starts are drawn by temporal interval sampling
  (:func:`~semivit.video.sampling.sample_clip_pair`), with CVRL's two augmentations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semivit.config import Config
from semivit.core.distributed import DistInfo
from semivit.data.loaders import Batch, IndexStream, LabeledAndUnlabeled
from semivit.data.splits import Split, load_split, make_split
from semivit.engine.checkpoint import read_export_meta
from semivit.engine.stage import per_rank_batches
from semivit.errors import SemivitError
from semivit.methods.base import DataRequest
from semivit.video.augment import ClipAugment, augment_clips, cvrl_views, finetune_view
from semivit.video.data import VideoSet, group_holdout, load_videos
from semivit.video.models import ARCHS, VideoClassifier, VideoSpec, channel_stats, load_video_model
from semivit.video.sampling import random_clip, sample_clip_pair, spaced_clips

log = logging.getLogger("semivit")

VIDEO_VIEWS = ("weak", "strong", "cvrl")


#: the methods that train on clips: their views are ones video batches make (weak, strong, CVRL's pair) and
#: they need no more of the network than logits and pooled features (MAE's patches, PAWS's support set,
#: teachers read from image model files are image-only)
VIDEO_METHODS = ("cvrl", "supervised", "fixmatch", "ema_teacher", "uda")


def check_video_method(method: str) -> None:
    """Refuse, in one line and before any data loads, a method that cannot train on clips."""
    if method not in VIDEO_METHODS:
        raise SemivitError(f"method '{method}' does not train on video: video runs take {', '.join(VIDEO_METHODS)}")


@dataclass
class PreparedVideo:
    """A video run's data, shaped as :class:`~semivit.data.PreparedData` is: the training side, the held-out
    test side (whole groups: a performer and their mirror clips on one side) and the split of the training
    side into labeled, validation and unlabeled videos (:func:`~semivit.data.splits.make_split`)."""

    train: VideoSet
    test: VideoSet
    split: Split
    flip: bool


def prepare_video(cfg: Config) -> PreparedVideo:
    """Load ``cfg.data.source`` as videos, hold out ``cfg.video.holdout`` groups as the test side, and split
    the training side by ``cfg.data.labels`` / ``cfg.data.val`` (or ``cfg.data.split``) at the run's seed."""
    v, seed = cfg.video, cfg.train.seed
    data = load_videos(cfg.data.source, channels=v.channels, frame_width=v.frame_width,
                       **({"group_pattern": v.group_pattern} if v.group_pattern else {}))
    train_idx, test_idx = group_holdout(data, v.holdout, seed)
    train, test = data.subset(train_idx), data.subset(test_idx)
    split = (load_split(cfg.data.split, train, cfg.data.val, seed) if cfg.data.split   # type: ignore[arg-type]
             else make_split(train, cfg.data.labels, cfg.data.val, seed))  # type: ignore[arg-type]
    log.info("%d videos (%d classes, %d groups): %d train (%d labeled, %d validation), %d test", len(data),
             len(data.classes), len(set(data.groups)), len(train), len(split.labeled), len(split.val), len(test))
    return PreparedVideo(train, test, split, v.flip)


def to_clips(videos: VideoSet, index: torch.Tensor, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float B×T×C×H×W clips in [0, 1]: video ``index[b]`` at frame indices ``frames[b]``."""
    clips = torch.stack([videos.videos[int(v)][f] for v, f in zip(index, frames, strict=True)])
    return clips.to(device, non_blocking=True).float().div_(255)


class VideoBatches(LabeledAndUnlabeled):
    """:class:`~semivit.data.loaders.Batch` es of clips for a method's request: the image batches' seeded index
    streams (each rank its slice), and the clips, temporal offsets and augmentations drawn from a generator
    seeded by (seed, rank, step), so a resumed run takes exactly the batches it would have taken."""

    def __init__(self, data: PreparedVideo, cfg: Config, request: DataRequest, device: torch.device,
                 dist: DistInfo) -> None:
        unknown = sorted({v.split(":", 1)[0] for v in request.views} - set(VIDEO_VIEWS))
        if unknown or request.support:  # a method's settings can ask for more than its defaults
            raise SemivitError(f"method '{cfg.train.method}' asks for "
                               f"{', '.join(unknown) + ' views' if unknown else 'a support set'}, which video "
                               f"batches do not make: use its weak/strong settings")
        self.data, self.device, self.v = data, device, cfg.video
        self.seed, self.rank = cfg.train.seed, dist.rank
        self.labeled_views, self.unlabeled_views = request.labeled_views, request.unlabeled_views
        self.cvrl = request.view_options.get("cvrl", {})
        labeled, unlabeled = per_rank_batches(cfg, request, data, dist.world)  # type: ignore[arg-type]
        self.labeled = (IndexStream(data.split.labeled, labeled, self.seed, 1, dist.rank, dist.world)
                        if request.labeled_views and labeled > 0 else None)
        self.unlabeled = (IndexStream(data.split.unlabeled, unlabeled, self.seed, 2, dist.rank, dist.world)
                          if request.unlabeled_views and unlabeled > 0 else None)
        self.lengths = data.train.lengths
        self.labels = data.train.labels.to(device)
        self.weak = finetune_view(self.v.flip)
        # FixMatch's strong view at clip level: CVRL's second augmentation on the weak view's clip
        self.strong = ClipAugment(flip=self.v.flip, p_blur=0.5 if self.v.blur else 0.0, p_solarize=0.2)

    def _views(self, index: torch.Tensor, names: tuple[str, ...], g: torch.Generator) -> dict[str, torch.Tensor]:
        v, out = self.v, {}
        if "weak" in names or "strong" in names:
            raw = to_clips(self.data.train, index, random_clip(self.lengths[index], v.num_frames, v.stride, g),
                           self.device)
            for name, aug in (("weak", self.weak), ("strong", self.strong)):
                if name in names:
                    out[name] = augment_clips(raw, g, aug, v.size)
        if "cvrl" in names:
            first, second = sample_clip_pair(self.lengths[index], v.num_frames, v.stride, g,
                                             float(self.cvrl.get("power", 1.0)))
            view1, view2 = cvrl_views(v.flip, v.blur, bool(self.cvrl.get("per_frame", False)))
            out["cvrl"] = augment_clips(to_clips(self.data.train, index, first, self.device), g, view1, v.size)
            out["cvrl:2"] = augment_clips(to_clips(self.data.train, index, second, self.device), g, view2, v.size)
        return {name: out[name] for name in names}

    def next(self, step: int) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + step * 31 + 17)
        batch = Batch()
        if self.labeled is not None:
            idx = self.labeled.next()
            batch.x, batch.y = self._views(idx, self.labeled_views, g), self.labels[idx.to(self.device)]
        if self.unlabeled is not None:
            idx = self.unlabeled.next()
            batch.u, batch.u_index = self._views(idx, self.unlabeled_views, g), idx.to(self.device)
            batch.u_true = self.labels[batch.u_index]  # diagnostics only (pseudo-label accuracy)
        return batch


@torch.no_grad()
def video_outputs(model: VideoClassifier, videos: VideoSet, indices: torch.Tensor, num_clips: int = 4,
                  features: bool = True, batch: int = 64) -> torch.Tensor:
    """Per-video features (``features``) or logits, averaged over ``num_clips`` evenly spaced clips of the
    whole frame resized to the model's size (CVRL's multi-clip evaluation, one centre view)."""
    spec, device = model.spec, next(model.parameters()).device
    was = model.training
    model.eval()
    outs = []
    for start in range(0, len(indices), batch):
        vids = indices[start:start + batch]
        frames = torch.stack([spaced_clips(len(videos.videos[int(v)]), spec.num_frames, spec.stride, num_clips)
                              for v in vids])  # B×K×n
        b, k, n = frames.shape
        clips = to_clips(videos, vids.repeat_interleave(k), frames.view(b * k, n), device)
        if clips.shape[-1] != spec.frame_size:
            clips = F.interpolate(clips.flatten(0, 1), size=(spec.frame_size,) * 2, mode="bilinear",
                                  antialias=True, align_corners=False).view(b * k, n, clips.shape[2],
                                                                            spec.frame_size, spec.frame_size)
        out = model.features(clips) if features else model(clips)
        outs.append(out.float().view(b, k, -1).mean(1).cpu())
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0, 0)


class VideoInputs:
    """The :class:`~semivit.engine.inputs.StageInputs` of a video run (see the module docstring)."""

    def __init__(self, data: PreparedVideo, device: torch.device, eval_clips: int = 4) -> None:
        self.data, self.device, self.eval_clips = data, device, eval_clips

    def _part(self, part: str) -> tuple[VideoSet, torch.Tensor]:
        if part == "test":
            return self.data.test, torch.arange(len(self.data.test))
        if part not in ("labeled", "val"):
            raise ValueError(f"unknown part '{part}'")
        return self.data.train, getattr(self.data.split, part)

    def batches(self, cfg: Config, request: DataRequest, dist: DistInfo) -> VideoBatches:
        return VideoBatches(self.data, cfg, request, self.device, dist)

    def logits(self, net: nn.Module, part: str) -> torch.Tensor:
        videos, idx = self._part(part)
        return video_outputs(net, videos, idx, self.eval_clips, features=False)  # type: ignore[arg-type]

    def head_logits(self, net: nn.Module, part: str) -> dict[str, torch.Tensor]:
        return {"logits": self.logits(net, part)}

    def labels(self, part: str) -> torch.Tensor:
        videos, idx = self._part(part)
        return videos.labels[idx]

    def embeddings(self, net: nn.Module, part: str) -> torch.Tensor:
        videos, idx = self._part(part)
        return video_outputs(net, videos, idx, self.eval_clips, features=True)  # type: ignore[arg-type]

    def exportable(self, net: nn.Module) -> nn.Module:
        return net


def build_video_model(cfg: Config, data: PreparedVideo) -> VideoClassifier:
    """The 3D ResNet ``cfg.model.name`` (r3d_18, r2plus1d_18; auto = r3d_18) of width ``cfg.video.width``,
    normalised by the training videos' channel statistics, with a classifier over the data's classes (untrained
    in a CVRL stage, as an image pre-training stage's). ``cfg.model.pretrained``: a video run folder (or its
    model.safetensors) whose encoder and normalisation it starts from, and its classifier when the run trained
    one for these classes: a recipe's later stage starts from the earlier's export."""
    m, v = cfg.model, cfg.video
    arch = "r3d_18" if m.name == "auto" else m.name
    if arch not in ARCHS:
        raise SemivitError(f"unknown video model '{arch}': use --model {' or '.join(ARCHS)}")
    torch.manual_seed(cfg.train.seed)  # the same initial weights for every run of this seed
    spec = VideoSpec(arch, v.width, data.train.channels, len(data.train.classes), v.num_frames, v.stride, v.size,
                     data.train.classes)
    model = VideoClassifier(spec)
    model.set_normalization(*channel_stats(data.train.videos))
    init = m.pretrained.strip()
    if init.lower() not in ("auto", "none", "scratch", ""):
        pre = load_video_model(init)
        if (pre.spec.arch, pre.spec.width, pre.spec.in_chans) != (arch, v.width, data.train.channels):
            raise SemivitError(f"'{init}' is a {pre.spec.arch} of width {pre.spec.width} on {pre.spec.in_chans} "
                               f"channels: train with the same --model and video.width on the same data")
        model.encoder.load_state_dict(pre.encoder.state_dict())
        model.set_normalization(pre.mean, pre.std)
        trained = (read_export_meta(init) or {}).get("classifier_trained")
        if trained and (pre.spec.num_classes, pre.spec.classes) == (spec.num_classes, spec.classes):
            model.head.load_state_dict(pre.head.state_dict())  # the classifier an earlier stage trained
    return model
