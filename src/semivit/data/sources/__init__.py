"""Turn a data spec (a built-in name, a path or ``hf:ORG/NAME``) into a :class:`DataBundle`.

One module per family, each with ``claims(spec, path)`` and ``load(spec, path, size, mode, opts) -> Parts``;
a new format is a new module added to :data:`FAMILIES`:

- :mod:`.builtin`: built-in names (``digits``, ``cifar10``, ``cifar100``, ``stl10``, ``svhn``, ``mnist``,
  ``fashion-mnist``) and folders of IDX files (MNIST format);
- :mod:`.hf`: Hugging Face ``datasets`` (``hf:ORG/NAME``, ``save_to_disk`` folders, Parquet files, the
  ``imagefolder`` layout with ``metadata.csv``);
- :mod:`.shards`: WebDataset-style tar shards (``train-{000000..000127}.tar``; their sample index in
  :mod:`.shard_index`);
- :mod:`.arrays`: ``.npz`` arrays (``x``/``y``, Keras, MedMNIST keys);
- :mod:`.files`: image folders (``train/`` + ``test/``/``val/`` parts, class sub-folders, or loose unlabeled
  images), the same tree in a ``.zip``, and ``.csv`` manifests (``path,label``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from semivit.config import DataConfig
from semivit.data.imageset import UNLABELED, DataBundle, ImageSet
from semivit.data.sources import arrays, builtin, files, hf, shards
from semivit.data.sources.builtin import (
    BUILTINS,
    DEBIAN_FASHION_MNIST,
    FASHION_CLASSES,
    builtin_name,
    default_root,
    read_idx,
)
from semivit.data.sources.common import IMAGE_EXTENSIONS, KINDS, Opts, Parts
from semivit.data.sources.files import read_image_files
from semivit.data.sources.parts import concat, conform
from semivit.errors import SemivitError

__all__ = ["BUILTINS", "DEBIAN_FASHION_MNIST", "FASHION_CLASSES", "FAMILIES", "IMAGE_EXTENSIONS", "Parts",
           "builtin_name", "default_root", "load_parts", "load_source", "read_idx", "read_image_files"]


@dataclass(frozen=True)
class _Family:
    """A format family: ``claims(spec, path)`` says whether it reads ``spec``; ``load`` reads it."""

    name: str
    claims: Callable[[str, Path], bool]
    load: Callable[[str, Path, tuple[int, int] | None, str | None, Opts], Parts]


# Asked in order: more specific layouts first (an IDX folder or a Hugging Face folder is also a folder).
FAMILIES: list[_Family] = [
    _Family("idx", builtin.claims_idx, builtin.load_idx),
    _Family("hf", hf.claims, hf.load),
    _Family("shards", shards.claims, shards.load),
    _Family("npz", arrays.claims, arrays.load),
    _Family("files", files.claims, files.load),
]


def load_source(spec: str, *, test: str | None = None, unlabeled: str | None = None, root: str | None = None,
                download: bool = False, image_size: int | None = None, on_corrupt: str = "skip",
                stream_threshold: int = DataConfig.stream_threshold) -> DataBundle:
    """Load ``spec`` (a built-in name, a path or ``hf:ORG/NAME``) as a :class:`DataBundle`.

    A built-in name wins over a same-named folder in the working directory (write ``./cifar10`` for that).
    ``test`` replaces the test part with another source (its test part if it has one, else its train part);
    ``unlabeled`` appends a pool of images to ``train`` with label -1 and ids prefixed ``unlabeled/``
    (for ``stl10`` its 'unlabeled' split). Both are resized/converted to the train images' size and channels,
    and test labels are mapped onto the train classes by name. ``image_size`` resizes every image (bilinear);
    without it files take the size of the first image. ``on_corrupt`` is ``skip`` (warn once) or ``fail``.
    Folders/zips/CSVs/shards with more than ``stream_threshold`` images are streamed: decoded on each
    ``read(i)``. A validation part the source provides (MedMNIST's ``val_images``, a Hugging Face
    'validation' split) is appended to ``train`` with ids prefixed ``val/``; ``bundle.val_index`` says where,
    and :func:`semivit.data.prepare_data` validates on it.
    """
    parts = load_parts(spec, test=test, unlabeled=unlabeled, root=root, download=download, image_size=image_size,
                       on_corrupt=on_corrupt, stream_threshold=stream_threshold)
    bundle = DataBundle(parts.name or spec, parts.train, parts.test, parts.flip)
    if parts.val is not None and len(parts.val):
        n = len(parts.train)
        bundle.train = concat(parts.train, replace(parts.val, ids=[f"val/{i}" for i in parts.val.ids]))
        bundle.val_index = torch.arange(n, n + len(parts.val))
    return bundle


def load_parts(spec: str, *, test: str | None = None, unlabeled: str | None = None, root: str | None = None,
               download: bool = False, image_size: int | None = None, on_corrupt: str = "skip",
               stream_threshold: int = DataConfig.stream_threshold) -> Parts:
    """:func:`load_source` with the source's validation part kept apart (``Parts.val``, classes aligned)."""
    if on_corrupt not in ("skip", "fail"):
        raise SemivitError(f"data.on_corrupt is '{on_corrupt}': use 'skip' or 'fail'")
    if image_size is not None and image_size < 1:
        raise SemivitError(f"data.image_size is {image_size}: use a positive size in pixels, or unset it")
    opts = Opts(Path(root).expanduser() if root else default_root(), download, on_corrupt, stream_threshold)
    size = (image_size, image_size) if image_size else None
    parts = _load(spec, size, None, opts)
    train = parts.train
    if test is not None:
        other = _load(test, train.image_size, train.channels, opts)
        parts.test = other.test if other.test is not None else other.train
    if parts.test is not None:
        if not train.classes:  # an unlabeled train part takes its class names from the test part
            train = replace(train, classes=list(parts.test.classes))
        parts.test = _align(parts.test, train.classes, f"test data '{test or spec}'")
    if parts.val is not None:
        parts.val = _align(conform(parts.val, train.image_size, train.channels), train.classes,
                           f"the validation part of '{spec}'")
    if unlabeled is not None:
        pool = _load(unlabeled, train.image_size, train.channels, opts, pool=True).train
        pool = replace(pool, labels=torch.full((len(pool),), UNLABELED, dtype=torch.long),
                       ids=[f"unlabeled/{i}" for i in pool.ids], classes=list(train.classes))
        train = concat(train, pool)
    parts.train = train
    return parts


def _load(spec: str, size: tuple[int, int] | None, channels: int | None, opts: Opts, pool: bool = False) -> Parts:
    """One source, with every part converted to ``size``/``channels`` where given (None: keep)."""
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    name, path = builtin_name(spec), Path(spec).expanduser()
    if name is not None:
        parts = builtin.load_builtin(name, opts, pool)
    else:
        family = next((f for f in FAMILIES if f.claims(spec, path)), None)
        if family is None and not path.exists():
            near = difflib.get_close_matches(spec.lower(), list(BUILTINS), n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise SemivitError(f"data path '{spec}' does not exist{hint}: {KINDS}")
        if family is None:
            raise SemivitError(f"unsupported data file '{spec}' ({path.suffix or 'no extension'}): {KINDS}")
        parts = family.load(spec, path, size, mode, opts)
        parts.name = parts.name or path.stem or path.name
    # array sources (and nothing else: files are decoded at the wanted size) may still need converting
    parts.train = conform(parts.train, size, channels)
    parts.test = None if parts.test is None else conform(parts.test, size, channels)
    parts.val = None if parts.val is None else conform(parts.val, size, channels)
    return parts


def _align(part: ImageSet, classes: list[str], what: str) -> ImageSet:
    """``part`` with its labels renumbered onto ``classes`` by class name."""
    if part.classes == classes or not part.classes:
        return replace(part, classes=list(classes))
    extra = [c for c in part.classes if c not in classes]
    if extra:
        raise SemivitError(f"{what} has classes {extra[:3]} that the training data lacks: use the same class "
                           "names (folders or labels) for both")
    lut = torch.tensor([classes.index(c) for c in part.classes] + [UNLABELED])  # lut[-1] keeps -1 as -1
    return replace(part, labels=lut[part.labels], classes=list(classes))
