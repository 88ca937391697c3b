"""Data: sources → one :class:`ImageSet` interface → seeded splits → batches with views on the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from semivit.config import DataConfig
from semivit.data.imageset import UNLABELED, DataBundle, ImageSet
from semivit.data.splits import VAL_EXTRA, Split, load_split, make_split
from semivit.errors import SemivitError

log = logging.getLogger(__name__)

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

    if cfg.stream_threshold < 0 or cfg.shuffle_buffer < 1:
        raise SemivitError(f"data.stream_threshold must be ≥ 0 and data.shuffle_buffer ≥ 1, got "
                           f"{cfg.stream_threshold} and {cfg.shuffle_buffer}")
    if bundle is None:
        bundle = load_source(cfg.source, test=cfg.test, unlabeled=cfg.unlabeled, root=cfg.root,
                             download=cfg.download, image_size=cfg.image_size, on_corrupt=cfg.on_corrupt,
                             stream_threshold=cfg.stream_threshold)
    if cfg.split:
        split = load_split(cfg.split, bundle.train, cfg.val, seed)
    elif bundle.val_index is not None and cfg.val == "auto":
        split = _provided_val_split(bundle.train, bundle.val_index, cfg.labels, seed)
    else:  # an explicit data.val: the source's validation images are ordinary labeled training images
        split = make_split(bundle.train, cfg.labels, cfg.val, seed)
    flip = bundle.flip if cfg.flip is None else cfg.flip
    if cfg.flip is None:
        _announce_flip(bundle.name, flip)
    return PreparedData(bundle, split, flip)


_ANNOUNCED: set[tuple[str, bool]] = set()


def _announce_flip(name: str, flip: bool) -> None:
    """Say once per data set whether augmentation mirrors images: a mirrored digit, letter or lateralised
    medical image means something else, and the default cannot know the user's images."""
    if (name, flip) in _ANNOUNCED:
        return
    _ANNOUNCED.add((name, flip))
    if flip:
        log.info("augmentation flips images left-right (weak and strong views); if a mirrored image means "
                 "something else (digits, text, left/right anatomy), pass --set data.flip=false")
    else:
        log.info("augmentation does not flip '%s' left-right (mirrored images change meaning); "
                 "--set data.flip=true turns flips on", name)


def _provided_val_split(train: ImageSet, val_index: torch.Tensor, labels_spec: str, seed: int) -> Split:
    """The source's own validation part as the validation split: ``--labels`` is drawn from the rest, which
    (as in every split) also forms the unlabeled pool. Its labels are extra, beyond ``--labels``."""
    val_index = val_index[train.known()[val_index]]  # an unlabeled validation image validates nothing
    if len(val_index) == 0:
        return make_split(train, labels_spec, "auto", seed)
    hidden = train.labels.clone()
    hidden[val_index] = UNLABELED  # so that make_split never picks a validation image as a training label
    labeled = make_split(replace(train, labels=hidden), labels_spec, "0", seed).labeled
    everything = torch.arange(len(train))
    return Split(labeled, val_index.clone(), everything[~torch.isin(everything, val_index)], VAL_EXTRA)


def channel_stats(images: ImageSet, max_images: int = 10_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (a seeded sample of) ``images``, in [0, 1] units."""
    n = len(images)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images] if n > max_images \
        else torch.arange(n)
    x = images.get(idx).float().div_(255)
    return x.mean(dim=(0, 2, 3)).cpu(), x.std(dim=(0, 2, 3)).cpu()
