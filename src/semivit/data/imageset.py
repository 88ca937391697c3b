"""The one data interface every source returns: uint8 images, integer labels, stable ids.

Labels are one class per image (a vector of class indices, -1 = unlabeled) or, for multi-label data, an
N×C matrix of 0/1 (int8; a row of -1 = unlabeled, a single -1 = that class unknown for that image): the shape
says which, and :attr:`ImageSet.multilabel` reads it.
"""

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
    ``ids`` are stable names (relative paths, or indices as strings) that split files refer to. Multi-label
    ``labels`` are N×C int8 0/1 (-1 = unknown), see the module docstring.
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
        if self.labels.dim() == 2:
            if self.labels.shape[1] != len(self.classes):
                raise ValueError(f"multi-label targets have {self.labels.shape[1]} columns for "
                                 f"{len(self.classes)} classes")
            self.labels = self.labels.to(torch.int8)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Whether an image may hold several classes (labels N×C) rather than one (labels N)."""
        return self.labels.dim() == 2

    def known(self) -> torch.Tensor:
        """Which images carry a label (a bool vector): class ≥ 0, or any known entry of a multi-label row."""
        return known_rows(self.labels)

    def unlabeled_labels(self, n: int) -> torch.Tensor:
        """Labels of ``n`` unlabeled images in this set's layout (to append a pool of unlabeled images)."""
        if self.multilabel:
            return torch.full((n, self.num_classes), UNLABELED, dtype=torch.int8)
        return torch.full((n,), UNLABELED, dtype=torch.long)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images at ``indices`` (B×C×H×W)."""
        if self.images is not None:
            return self.images[indices]
        assert self.read is not None
        return torch.stack([self.read(int(i)) for i in indices])


def known_rows(labels: torch.Tensor) -> torch.Tensor:
    """A bool vector: which rows of ``labels`` (N, or N×C multi-label) carry a label."""
    return labels >= 0 if labels.dim() == 1 else (labels >= 0).any(1)


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
