"""Built-in sets by name (scikit-learn's digits; torchvision's CIFAR-10/100, STL-10, SVHN, MNIST,
Fashion-MNIST, read from their files under ``data.root``) and folders of IDX files (MNIST's format).

Digits ids are the index in scikit-learn's array, so train and test ids never collide; other arrays get
``str(index)`` within their part.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import torch

from semivit.core.safe_pickle import load_data_pickle
from semivit.data.imageset import ImageSet
from semivit.data.sources.common import Opts, Parts
from semivit.data.sources.parts import array_parts, array_set
from semivit.errors import SemivitError

BUILTINS = {"digits": False, "cifar10": True, "cifar100": True, "stl10": True, "svhn": False,
            "mnist": False, "fashion-mnist": True}  # name -> whether mirrored images are fine (flip)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]  # torchvision's names


def default_root() -> Path:
    """Where built-in torchvision data sets live: ``$SEMIVIT_DATA`` or ``~/.cache/semivit/datasets``."""
    return Path(os.environ.get("SEMIVIT_DATA") or "~/.cache/semivit/datasets").expanduser()


def builtin_name(spec: str) -> str | None:
    """The canonical built-in name ``spec`` means (``fashion_mnist`` -> ``fashion-mnist``), or None."""
    key = re.sub(r"[-_ ]", "", spec.lower())
    return next((name for name in BUILTINS if name.replace("-", "") == key), None)


def claims_idx(spec: str, path: Path) -> bool:
    return path.is_dir() and idx_file(path, "train", "images") is not None


def load_idx(spec: str, path: Path, size: tuple[int, int] | None, mode: str | None, opts: Opts) -> Parts:
    flip = "fashion" in path.name.lower()  # IDX folders hold digits unless named after Fashion-MNIST
    train, test = idx_parts(path, FASHION_CLASSES if flip else None)
    return Parts(train, test, flip=flip)


def load_builtin(name: str, opts: Opts, pool: bool) -> Parts:
    train, test = _builtin(name, opts, pool)
    return Parts(train, test, flip=BUILTINS[name], name=name)


def idx_file(folder: Path, part: str, what: str) -> Path | None:
    """``<part>-<what>-idx?-ubyte`` in ``folder``, gzipped or not (also ``<part>-<what>.idx?-ubyte``)."""
    return next(iter(sorted(folder.glob(f"{part}-{what}[-.]idx?-ubyte*"))), None)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format; ``.gz`` or plain) as a numpy array of its declared type and dims."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in types:
        raise SemivitError(f"'{path}' is not an IDX file (bad magic number): use the original *-ubyte files")
    ndim, dtype = data[3], np.dtype(types[data[2]])
    dims = np.frombuffer(data, ">u4", ndim, 4).astype(int)
    if len(data) != 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize:
        raise SemivitError(f"'{path}' is truncated or damaged ({len(data)} bytes for shape {tuple(dims)}): "
                           "download it again")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def idx_parts(folder: Path, classes: list[str] | None) -> tuple[ImageSet, ImageSet | None]:
    """``train-``/``t10k-`` image and label IDX pairs in ``folder`` (train labels are required)."""
    if idx_file(folder, "train", "labels") is None:
        raise SemivitError(f"'{folder}' has no train labels IDX file: add train-labels-idx1-ubyte(.gz)")
    pairs = [(idx_file(folder, p, "images"), idx_file(folder, p, "labels")) for p in ("train", "t10k")]
    sets = array_parts([(read_idx(x).astype(np.uint8)[:, None], read_idx(y), f"'{y}'")
                        for x, y in pairs if x and y], classes)
    return sets[0], (sets[1] if len(sets) > 1 else None)


def _batch(path: Path) -> dict:
    """One CIFAR python batch (a Python 2 pickle of a dict), read without running code from it."""
    entry = load_data_pickle(path)
    if not isinstance(entry, dict):
        raise SemivitError(f"'{path}' is not a CIFAR batch (it holds a {type(entry).__name__}, not a dict): "
                           f"download the data set again")
    return entry


def _need(name: str, opts: Opts) -> None:
    """For missing files of a built-in set: say how to get them, unless the caller may download them."""
    if not opts.download:
        raise SemivitError(f"{name} files not found under {opts.root}: pass --set data.download=true to "
                           "download them, or put torchvision's files there")
    opts.root.mkdir(parents=True, exist_ok=True)


def _builtin(name: str, opts: Opts, pool: bool) -> tuple[ImageSet, ImageSet | None]:
    """Train and test parts of a built-in set (``pool``: the part to use as an unlabeled pool, test None)."""
    root = opts.root
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
        y = torch.from_numpy(d.target)
        parts = train_test_split(np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0)
        tr, te = (np.sort(p) for p in parts)
        classes = [str(c) for c in range(10)]
        return (array_set(x[tr], y[tr], classes, [str(i) for i in tr]),
                array_set(x[te], y[te], classes, [str(i) for i in te]))
    import torchvision.datasets as tvd  # lazy: slow to import, and digits does not need it

    if name in ("cifar10", "cifar100"):
        ten = name == "cifar10"
        folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
        train_files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
        meta, test_file = ("batches.meta", "test_batch") if ten else ("meta", "test")
        if not all((folder / f).is_file() for f in [*train_files, test_file, meta]):
            _need(name, opts)
            (tvd.CIFAR10 if ten else tvd.CIFAR100)(str(root), download=True)  # torchvision's download code
        # We read the pickles ourselves instead of through torchvision: its md5 check rejects any copy
        # but the exact original files (re-pickled, subsets), and torchvision's reader would run code a crafted
        # file names. A restricted unpickler builds only dicts, lists, str, bytes, numbers and numpy arrays.
        def part(files: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
            entries = [_batch(folder / f) for f in files]
            x = np.concatenate([e["data"] for e in entries]).reshape(-1, 3, 32, 32)  # rows are C×H×W already
            return x, np.concatenate([e["labels" if ten else "fine_labels"] for e in entries]), str(folder)

        meta_names = _batch(folder / meta)["label_names" if ten else "fine_label_names"]
        train, test = array_parts([part(train_files), part([test_file])], list(meta_names))
        return train, test
    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        folder = root / cls.__name__ / "raw"  # torchvision's layout
        if idx_file(folder, "train", "images") is None:
            if name == "fashion-mnist" and idx_file(DEBIAN_FASHION_MNIST, "train", "images"):
                folder = DEBIAN_FASHION_MNIST
            else:
                _need(name, opts)
                cls(str(root), train=True, download=True)
        return idx_parts(folder, FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)])
    cls = tvd.STL10 if name == "stl10" else tvd.SVHN
    splits = ["unlabeled" if name == "stl10" else "train"] if pool else ["train", "test"]
    sets = []
    for which in splits:  # as an unlabeled pool: STL-10's own unlabeled split, SVHN's training images
        try:
            sets.append(cls(str(root), split=which))
        except RuntimeError:  # torchvision's "Dataset not found or corrupted"
            _need(name, opts)
            sets.append(cls(str(root), split=which, download=True))
    classes = list(getattr(sets[0], "classes", None) or [str(i) for i in range(10)])
    out = array_parts([(ds.data, ds.labels, str(root)) for ds in sets], classes)  # N×C×H×W
    return out[0], (out[1] if len(out) > 1 else None)
