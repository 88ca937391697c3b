"""Data: sources → one :class:`ImageSet` interface → seeded splits → batches with views on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.config import DataConfig
from semivit.data.imageset import UNLABELED, DataBundle, ImageSet
from semivit.data.splits import Split, load_split, make_split

__all__ = ["UNLABELED", "DataBundle", "ImageSet", "PreparedData", "Split", "channel_stats", "prepare_data"]


@dataclass
class PreparedData:
    bundle: DataBundle
    split: Split
    flip: bool

    @property
    def train(self) -> ImageSet:
        return self.bundle.train

    @property
    def test(self) -> ImageSet | None:
        return self.bundle.test


def prepare_data(cfg: DataConfig, seed: int, bundle: DataBundle | None = None) -> PreparedData:
    """Load the source named by ``cfg`` (unless ``bundle``: already loaded from it) and split it (from
    ``cfg.split`` when given)."""
    from semivit.data.sources import load_source

    if bundle is None:
        bundle = load_source(cfg.source, test=cfg.test, unlabeled=cfg.unlabeled, root=cfg.root,
                             download=cfg.download, image_size=cfg.image_size, on_corrupt=cfg.on_corrupt)
    if cfg.split:
        split = load_split(cfg.split, bundle.train, cfg.val, seed)
    else:
        split = make_split(bundle.train, cfg.labels, cfg.val, seed)
    flip = bundle.flip if cfg.flip is None else cfg.flip
    return PreparedData(bundle, split, flip)


def channel_stats(images: ImageSet, max_images: int = 10_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (a seeded sample of) ``images``, in [0, 1] units."""
    n = len(images)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images] if n > max_images \
        else torch.arange(n)
    x = images.get(idx).float().div_(255)
    return x.mean(dim=(0, 2, 3)).cpu(), x.std(dim=(0, 2, 3)).cpu()
