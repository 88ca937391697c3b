"""Arrays in an ``.npz``: images uint8 N×H×W, N×H×W×C or N×C×H×W (C 1 or 3), labels -1 for unlabeled;
labels N×C of 0/1 are multi-label targets (several classes per image).

Parts are found by key, in the conventions users bring:

- semivit's own: ``x``, ``y``, optional ``x_test``, ``y_test``, ``x_val``, ``y_val``, ``classes``;
- Keras (``np.savez(x_train=..., y_train=..., x_test=..., y_test=...)``, as ``keras.datasets`` returns them);
- MedMNIST: ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``,
  ``test_labels`` (labels N×1).

A validation part becomes the run's validation split (see :func:`semivit.data.prepare_data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semivit.core.io import read_npz
from semivit.data.imageset import UNLABELED
from semivit.data.sources.common import Opts, Parts
from semivit.data.sources.parts import array_parts
from semivit.errors import SemivitError

# (images key, labels key) of the train, test and validation parts, per convention, first match wins
CONVENTIONS = {
    "x/y": {"train": ("x", "y"), "test": ("x_test", "y_test"), "val": ("x_val", "y_val")},
    "Keras": {"train": ("x_train", "y_train"), "test": ("x_test", "y_test"), "val": ("x_val", "y_val")},
    "MedMNIST": {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels"),
                 "val": ("val_images", "val_labels")},
}


def claims(spec: str, path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npz"


def _images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``x`` as uint8 N×C×H×W."""
    if x.dtype != np.uint8:
        raise SemivitError(f"'{key}' in '{path}' is {x.dtype}: save images as uint8 (0..255)")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise SemivitError(f"'{key}' in '{path}' has shape {x.shape}: use N×H×W, N×H×W×C or N×C×H×W with C 1 or 3")


def _labels(y: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    """Labels as a flat vector (N×1, as MedMNIST and Keras' CIFAR store them, is flattened), or multi-label
    targets N×C (C ≥ 2) of 1 (present), 0 (absent) and -1 (unknown; a row of -1 is an unlabeled image)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if len(y) != n:
        raise SemivitError(f"'{path}' has {n} images but {len(y)} labels in '{key}': match them")
    if y.ndim == 2:
        if not np.isin(y, (-1, 0, 1)).all():
            raise SemivitError(f"'{key}' in '{path}' is N×{y.shape[1]} but holds values other than 1, 0 and -1: "
                               "store multi-label targets as 0/1 (-1 = unknown), or one class index per image")
        return y.astype(np.int8)
    if y.ndim != 1:
        raise SemivitError(f"'{key}' in '{path}' has shape {y.shape}: use N integer labels or N×C multi-label "
                           "targets")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(y == np.round(y)):
            raise SemivitError(f"'{key}' in '{path}' holds {y.dtype} values: store integer class labels")
    return y.astype(np.int64)


def load(spec: str, path: Path, size: tuple[int, int] | None, mode: str | None, opts: Opts) -> Parts:
    arrays = read_npz(path)
    found = next(((name, keys) for name, keys in CONVENTIONS.items() if keys["train"][0] in arrays), None)
    if found is None:
        raise SemivitError(f"'{path}' holds {sorted(arrays)[:6]}, no images under a known key: save them as "
                           "x (labels y), x_train/y_train (Keras) or train_images/train_labels (MedMNIST)")
    convention, keys = found
    parts, present = [], []
    for part in ("train", "test", "val"):
        xkey, ykey = keys[part]
        if xkey not in arrays:
            continue
        x = _images(arrays[xkey], xkey, path)
        y = (_labels(arrays[ykey], ykey, len(x), path) if ykey in arrays
             else np.full(len(x), UNLABELED, np.int64))
        parts.append((x, y, f"'{path}' ({xkey})"))
        present.append(part)
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    sets = dict(zip(present, array_parts(parts, classes)))
    return Parts(sets["train"], sets.get("test"), sets.get("val"))


def bundle_from_arrays(x: Any, y: Any, x_test: Any = None, y_test: Any = None,
                       classes: list[str] | None = None, name: str = "arrays") -> Any:
    """A data set from in-memory arrays (numpy or torch): uint8 images N×H×W, N×H×W×C or N×C×H×W, integer
    labels (−1 = unlabeled); the same checks as an ``.npz`` file. What ``semivit.fit((x, y))`` trains on."""
    from semivit.data.imageset import DataBundle

    where = Path(f"<{name}>")
    parts = []
    for xs, ys, key in ((x, y, "x"), (x_test, y_test, "x_test")):
        if xs is None:
            continue
        xs = _images(np.asarray(xs), key, where)
        ys = (_labels(np.asarray(ys), f"y of {key}", len(xs), where) if ys is not None
              else np.full(len(xs), UNLABELED, np.int64))
        parts.append((xs, ys, f"the arrays ({key})"))
    sets = array_parts(parts, classes)
    return DataBundle(name, sets[0], sets[1] if len(sets) > 1 else None)
