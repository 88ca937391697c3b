"""The class-incremental task sequence and the data each task may use.

As in the paper and the authors' code (kangzhiq/NNCSL ``nncsl_train.py``: ``tasks = [classes[i:i + k]]``), the
classes are split in their natural order into ``T`` consecutive groups (CIFAR-10, 5 tasks: {0,1}, {2,3}, …).
The labels are one class-balanced draw at the share (``--labels 5%``: 5% of every class, as the authors'
subset files), so every task has the same share of labeled images; a task sees only its own classes'
images: their labels at the share plus the replay buffer's exemplars, and all of its classes' training images
unlabeled (their ``setting: current``; labeled images are in the unlabeled pool too, as in every semivit
split). Nothing is held out for validation: the paper selects nothing on a validation set.
"""

from __future__ import annotations

from typing import Any

import torch

from semivit.data.splits import VAL_NONE, Split
from semivit.errors import SemivitError


def make_tasks(num_classes: int, num_tasks: int) -> list[list[int]]:
    """``num_tasks`` groups of consecutive classes, as equal as possible (sizes differ by at most one)."""
    if not 1 <= num_tasks <= num_classes:
        raise SemivitError(f"--tasks {num_tasks} does not fit {num_classes} classes: use 1 to {num_classes} "
                           f"tasks (e.g. 5 for 5 tasks of 2 classes on 10 classes)")
    base, extra = divmod(num_classes, num_tasks)
    tasks, start = [], 0
    for t in range(num_tasks):
        size = base + (1 if t < extra else 0)
        tasks.append(list(range(start, start + size)))
        start += size
    return tasks


def in_classes(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Mask of the ``labels`` that belong to ``classes``."""
    return torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))


def task_split(labels: torch.Tensor, labeled: torch.Tensor, classes: list[int], buffer: torch.Tensor) -> Split:
    """The split one task trains on: its classes' labels at the share plus the ``buffer`` exemplars (old
    classes) as the labeled pool; every training image of its classes as the unlabeled pool; no validation.

    ``labels``: every training image's label; ``labeled``: the indices whose labels the run may use (all
    tasks)."""
    mine = labeled[in_classes(labels[labeled], classes)]
    if len(mine) == 0:
        raise SemivitError(f"the task of classes {classes} has no labeled image at this share: ask for more "
                           f"labels (--labels) or fewer tasks")
    pool = torch.unique(torch.cat([mine, buffer.to(mine.dtype)]))  # sorted, no duplicates
    unlabeled = torch.nonzero(in_classes(labels, classes)).flatten()
    return Split(pool, torch.zeros(0, dtype=torch.long), unlabeled, VAL_NONE)


def label_shares(labels: torch.Tensor, labeled: torch.Tensor, tasks: list[list[int]]) -> list[dict[str, Any]]:
    """Per task: its classes, training images, labeled images and their share (what the run really used)."""
    out = []
    for t, classes in enumerate(tasks):
        images = int(in_classes(labels, classes).sum())
        n = int(in_classes(labels[labeled], classes).sum())
        out.append({"task": t + 1, "classes": classes, "images": images, "labeled": n,
                    "labeled_per_class": round(n / len(classes), 2), "share": n / max(images, 1)})
    return out
