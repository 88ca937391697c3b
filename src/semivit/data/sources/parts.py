"""In-memory parts of a data set: arrays made into :class:`ImageSet` s with their labels checked (one class per
image, or multi-label targets N×C), resized or converted to another part's shape, and parts joined."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from semivit.data.imageset import UNLABELED, ImageSet
from semivit.errors import SemivitError


def array_set(x: torch.Tensor, y: torch.Tensor, classes: list[str], ids: list[str] | None = None) -> ImageSet:
    """An in-memory ImageSet from uint8 N×C×H×W images."""
    ids = ids if ids is not None else [str(i) for i in range(len(x))]
    labels = y if y.dim() == 2 else y.long()  # multi-label targets stay int8
    return ImageSet(labels, ids, classes, x.shape[1], (x.shape[2], x.shape[3]), images=x.contiguous())


def conform(part: ImageSet, size: tuple[int, int] | None, channels: int | None) -> ImageSet:
    """``part`` resized (bilinear, antialiased) and converted (grey <-> RGB) where it differs."""
    if (size is None or tuple(size) == part.image_size) and channels in (None, part.channels):
        return part
    assert part.images is not None, "streamed parts are decoded at the wanted size and channels"
    x = part.images
    if channels is not None and channels != x.shape[1]:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = x.expand(-1, 3, -1, -1) if channels == 3 else ((x * luma).sum(1, keepdim=True)).round().byte()
    if size is not None and tuple(size) != tuple(x.shape[2:]):
        x = torch.cat([F.interpolate(c.float(), size=tuple(size), mode="bilinear", antialias=True)
                       .round().clamp(0, 255).byte() for c in x.split(4096)])  # chunks bound float memory
    return array_set(x, part.labels, part.classes, part.ids)


def multi_hot(indices: list[int], k: int) -> list[int]:
    """A multi-label row of ``k`` classes with ``indices`` set; no index at all = an unlabeled image (-1s)."""
    if not indices:
        return [UNLABELED] * k
    row = [0] * k
    for i in indices:
        row[int(i)] = 1
    return row


def _multilabel_parts(parts: list[tuple[np.ndarray, np.ndarray, str]], classes: list[str] | None) -> list[ImageSet]:
    """In-memory multi-label parts: labels N×C of 0/1, -1 where unknown (a row of -1: unlabeled)."""
    k = len(classes) if classes is not None else parts[0][1].shape[1]
    sets = []
    for x, y, where in parts:
        y = np.asarray(y)
        if y.ndim == 1 and (y == UNLABELED).all():  # a part without labels
            y = np.full((len(y), k), UNLABELED)
        if y.ndim != 2 or y.shape[1] != k:
            raise SemivitError(f"the labels of {where} have shape {y.shape}, the training part's are N×{k}: give every "
                               f"part multi-label targets with one column per class")
        bad = y[(y != 0) & (y != 1) & (y != UNLABELED)]
        if bad.size:
            raise SemivitError(f"multi-label targets in {where} hold {bad.flat[0]}: use 1 (present), 0 (absent) and -1 "
                               f"(unknown)")
        names = list(classes) if classes is not None else [str(i) for i in range(k)]
        sets.append(array_set(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int8)), names))
    return sets


def array_parts(parts: list[tuple[np.ndarray, np.ndarray, str]], classes: list[str] | None) -> list[ImageSet]:
    """In-memory parts from (uint8 N×C×H×W images, labels, where) triples, labels checked.

    Without ``classes`` they are "0".."K-1" for the largest label K-1 of the first (training) part, or of all
    parts when the first has no labels: a test label the training part never has (99 of 2 classes) is named
    as such, instead of surfacing later as a shortage of labeled images of classes 2..99. Labels N×C (the
    first part's) are multi-label targets.
    """
    if parts and np.asarray(parts[0][1]).ndim == 2:
        return _multilabel_parts(parts, classes)
    parts = [(x, np.asarray(y).astype(np.int64), where) for x, y, where in parts]  # IDX labels are uint8
    first = int(parts[0][1].max(initial=-1)) if parts else -1
    k = len(classes) if classes is not None else \
        (first if first >= 0 else max(int(y.max(initial=-1)) for _, y, _ in parts)) + 1
    sets = []
    for n, (x, y, where) in enumerate(parts):
        bad = y[(y < UNLABELED) | (y >= k)]
        if bad.size and classes is None and n > 0 and int(bad[0]) >= k:
            raise SemivitError(f"label {int(bad[0])} in {where} is not a class of the training part (its labels are "
                               f"0..{k - 1}): fix the label, or add training images of that class")
        if bad.size:
            raise SemivitError(f"label {int(bad[0])} in {where} is out of range: valid labels are -1 "
                               f"(unlabeled) and 0..{k - 1}; fix the labels or the 'classes' array")
        names = list(classes) if classes is not None else [str(i) for i in range(k)]
        sets.append(array_set(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), names))
    return sets


class _Chain:
    """``read`` over ImageSet ``a`` then ``b`` (picklable when their reads are)."""

    def __init__(self, a: ImageSet, b: ImageSet) -> None:
        self.a, self.b = a, b

    def __call__(self, i: int) -> torch.Tensor:
        part, j = (self.a, i) if i < len(self.a) else (self.b, i - len(self.a))
        return part.images[j] if part.images is not None else part.read(j)


def concat(a: ImageSet, b: ImageSet) -> ImageSet:
    """``b`` appended to ``a`` (same size and channels); streamed when either is."""
    if a.multilabel != b.multilabel and not b.known().any():  # an unlabeled pool joins multi-label data
        b = replace(b, labels=a.unlabeled_labels(len(b)))
    if a.multilabel != b.multilabel:
        raise SemivitError("one part of the data has several labels per image and the other one: give both "
                           "parts the same kind of labels")
    labels, ids = torch.cat([a.labels, b.labels]), a.ids + b.ids
    if a.images is not None and b.images is not None:
        return replace(a, labels=labels, ids=ids, images=torch.cat([a.images, b.images]))
    return ImageSet(labels, ids, a.classes, a.channels, a.image_size, read=_Chain(a, b))
