"""The one data interface every source returns: uint8 images, integer labels, stable ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

UNLABELED = -1  # label value of an image whose class is unknown


@dataclass
class ImageSet:
    """One part (train or test) of a data set.

    Small sets live in memory as ``images`` (uint8, N×C×H×W). Large image folders are *streamed*:
    ``images`` is None and ``read(i)`` decodes image ``i`` to a uint8 C×H×W tensor of ``image_size``
    (used by DataLoader workers). ``labels`` holds -1 (:data:`UNLABELED`) where the class is unknown;
    ``ids`` are stable names (relative paths, or indices as strings) that split files refer to.
    """

    labels: torch.Tensor
    ids: list[str]
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    images: torch.Tensor | None = None
    read: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images is None and self.read is None:
            raise ValueError("an ImageSet needs in-memory images or a read function")
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images at ``indices`` (B×C×H×W)."""
        if self.images is not None:
            return self.images[indices]
        assert self.read is not None
        return torch.stack([self.read(int(i)) for i in indices])


@dataclass
class DataBundle:
    """What a data source gives: a training part, an optional test part, and how to augment it.

    ``flip`` is False for data where a mirrored image is another class or unnatural (digits, text).
    ``val_index``: indices of ``train`` that are the source's own validation part (MedMNIST's ``val_images``,
    a Hugging Face 'validation' split), used as the validation split unless ``data.val`` says otherwise.
    """

    name: str
    train: ImageSet
    test: ImageSet | None = None
    flip: bool = True
    val_index: torch.Tensor | None = None
