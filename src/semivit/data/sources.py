"""Turn a data spec (a built-in name or a path) into a :class:`DataBundle`.

Kinds of spec: built-in names (``digits``, ``cifar10``, ``cifar100``, ``stl10``, ``svhn``, ``mnist``,
``fashion-mnist``), an image folder (``train/`` + ``test/``/``val/`` parts, class sub-folders, or loose
unlabeled images), a ``.zip`` holding such a tree, a ``.csv`` manifest (``path,label``), an ``.npz``
(``x``, ``y``, optional ``x_test``, ``y_test``, ``classes``), or a folder of IDX files (MNIST format).

Image ids: files get their path relative to the root of their part (``train/cat/0001.jpg`` gets
``cat/0001.jpg``; CSV rows keep the path as written); arrays get ``str(index)`` within their part
(digits: the index in scikit-learn's array, so train and test ids never collide).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from semivit.data.imageset import UNLABELED, DataBundle, ImageSet
from semivit.errors import SemivitError

BUILTINS = {"digits": False, "cifar10": True, "cifar100": True, "stl10": True, "svhn": False,
            "mnist": False, "fashion-mnist": True}  # name -> whether mirrored images are fine (flip)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]  # torchvision's names
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}
_UNREADABLE = (OSError, ValueError, SyntaxError, KeyError, zipfile.BadZipFile, Image.DecompressionBombError)
_KINDS = "pass an image folder, a .csv, a .npz, a .zip or a built-in name (digits, cifar10, ...)"


@dataclass
class _Opts:
    root: Path
    download: bool
    on_corrupt: str
    stream_threshold: int


def default_root() -> Path:
    """Where built-in torchvision data sets live: ``$SEMIVIT_DATA`` or ``~/.cache/semivit/datasets``."""
    return Path(os.environ.get("SEMIVIT_DATA") or "~/.cache/semivit/datasets").expanduser()


def builtin_name(spec: str) -> str | None:
    """The canonical built-in name ``spec`` means (``fashion_mnist`` -> ``fashion-mnist``), or None."""
    key = re.sub(r"[-_ ]", "", spec.lower())
    return next((name for name in BUILTINS if name.replace("-", "") == key), None)


def load_source(spec: str, *, test: str | None = None, unlabeled: str | None = None, root: str | None = None,
                download: bool = False, image_size: int | None = None, on_corrupt: str = "skip",
                stream_threshold: int = 200_000) -> DataBundle:
    """Load ``spec`` (a built-in name or a path) as a :class:`DataBundle`.

    A built-in name wins over a same-named folder in the working directory (write ``./cifar10`` for that).
    ``test`` replaces the test part with another source (its test part if it has one, else its train part);
    ``unlabeled`` appends a pool of images to ``train`` with label -1 and ids prefixed ``unlabeled/``
    (for ``stl10`` its 'unlabeled' split). Both are resized/converted to the train images' size and channels,
    and test labels are mapped onto the train classes by name. ``image_size`` resizes every image (bilinear);
    without it files take the size of the first image. ``on_corrupt`` is ``skip`` (warn once) or ``fail``.
    Folders/zips/CSVs with more than ``stream_threshold`` images are streamed: decoded on each ``read(i)``.
    """
    if on_corrupt not in ("skip", "fail"):
        raise SemivitError(f"data.on_corrupt is '{on_corrupt}': use 'skip' or 'fail'")
    if image_size is not None and image_size < 1:
        raise SemivitError(f"data.image_size is {image_size}: use a positive size in pixels, or unset it")
    opts = _Opts(Path(root).expanduser() if root else default_root(), download, on_corrupt, stream_threshold)
    size = (image_size, image_size) if image_size else None
    bundle = _load(spec, size, None, opts)
    train = bundle.train
    if test is not None:
        other = _load(test, train.image_size, train.channels, opts)
        bundle.test = other.test if other.test is not None else other.train
    if bundle.test is not None:
        if not train.classes:  # an unlabeled train part takes its class names from the test part
            train = replace(train, classes=list(bundle.test.classes))
        bundle.test = _align(bundle.test, train.classes, f"test data '{test or spec}'")
    if unlabeled is not None:
        pool = _load(unlabeled, train.image_size, train.channels, opts, pool=True).train
        pool = replace(pool, labels=torch.full((len(pool),), UNLABELED, dtype=torch.long),
                       ids=[f"unlabeled/{i}" for i in pool.ids], classes=list(train.classes))
        train = _concat(train, pool)
    bundle.train = train
    return bundle


def _load(spec: str, size: tuple[int, int] | None, channels: int | None, opts: _Opts,
          pool: bool = False) -> DataBundle:
    """One source, with every part converted to ``size``/``channels`` where given (None: keep)."""
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    name, path, flip = builtin_name(spec), Path(spec).expanduser(), True
    if name is not None:
        (train, test), flip = _builtin(name, opts, pool), BUILTINS[name]
    elif not path.exists():
        near = difflib.get_close_matches(spec.lower(), list(BUILTINS), n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SemivitError(f"data path '{spec}' does not exist{hint}: {_KINDS}")
    elif path.is_dir() and _idx_file(path, "train", "images"):
        flip = "fashion" in path.name.lower()  # IDX folders hold digits unless named after Fashion-MNIST
        train, test = _idx_parts(path, FASHION_CLASSES if flip else None)
    elif path.is_dir():
        walk = (os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)
        paths = sorted(p for p in (w.replace(os.sep, "/") for w in walk) if _is_image(p))
        train, test = _tree(paths, f"{path}/", None, False, str(path), size, mode, opts)
    elif path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = sorted(n for n in zf.namelist() if _is_image(n))
        except zipfile.BadZipFile as err:
            raise SemivitError(f"'{path}' is not a readable zip ({err}): re-create or download it") from err
        train, test = _tree(names, "", str(path), True, str(path), size, mode, opts)
    elif path.suffix.lower() == ".csv":
        train, test = _files_to_set(_csv_files(path), str(path), size, mode, opts), None
    elif path.suffix.lower() == ".npz":
        train, test = _npz(path)
    else:
        raise SemivitError(f"unsupported data file '{spec}' ({path.suffix or 'no extension'}): {_KINDS}")
    # array sources (and nothing else: files are decoded at the wanted size) may still need converting
    test = None if test is None else _conform(test, size, channels)
    return DataBundle(name or path.stem or path.name, _conform(train, size, channels), test, flip)


@dataclass
class _Files:
    """Image files of one part before decoding: locations (paths, or members of ``zip_path``), ids, labels."""

    locs: list[str]
    ids: list[str]
    labels: list[int]
    classes: list[str]
    zip_path: str | None = None


class _Decoder:
    """Decodes image ``i`` of a file list to a uint8 H×W×C array (streamed ImageSets use it as ``read``).

    Picklable so DataLoader workers can carry it; each process reopens the zip lazily because an open
    ZipFile handle (and its file offset) must not be shared between processes.
    """

    def __init__(self, locs: list[str], zip_path: str | None, size: tuple[int, int] | None = None,
                 mode: str | None = None) -> None:
        self.locs, self.zip_path, self.size, self.mode = locs, zip_path, size, mode
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def where(self, i: int) -> str:
        return f"{self.zip_path}:{self.locs[i]}" if self.zip_path else self.locs[i]

    def _open(self, i: int) -> Image.Image:
        if self.zip_path is None:
            return Image.open(self.locs[i])
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.zip_path)
        return Image.open(io.BytesIO(self._zip.read(self.locs[i])))

    def probe(self, i: int) -> tuple[tuple[int, int], str] | None:
        """(H, W) and 'L'/'RGB' from the header only, or None when the file does not open."""
        try:
            with self._open(i) as img:
                return (img.height, img.width), "L" if img.mode in _GREY_MODES else "RGB"
        except _UNREADABLE:
            return None

    def array(self, i: int) -> np.ndarray | None:
        """Image ``i`` at ``size`` in ``mode`` (None: 'L' for grey files, else 'RGB'); None if corrupt."""
        assert self.size is not None
        (h, w), want = self.size, self.mode
        try:
            with self._open(i) as img:
                want = want or ("L" if img.mode in _GREY_MODES else "RGB")
                img = img if img.mode == want else img.convert(want)  # skipping a same-mode copy saves ~10%
                img = img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)
                return np.asarray(img).reshape(h, w, -1)
        except _UNREADABLE:
            return None

    def __call__(self, i: int) -> torch.Tensor:
        arr = self.array(i)
        if arr is None:  # only files that went bad after loading (headers were checked) get here
            raise SemivitError(f"cannot read image '{self.where(i)}': restore the file or reload the data")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _files_to_set(files: _Files, where: str, size: tuple[int, int] | None, mode: str | None,
                  opts: _Opts) -> ImageSet:
    """Decode (or, above the stream threshold, check the headers of) ``files`` into an ImageSet."""
    n = len(files.locs)
    if n == 0:
        raise SemivitError(f"no images found under {where}: put .jpg/.png files there (in class sub-folders "
                           "for labels)")
    dec = _Decoder(files.locs, files.zip_path, size, mode)
    stream = n > opts.stream_threshold
    if stream:
        probes = [dec.probe(i) for i in range(n)]
        ok = [p is not None for p in probes]
    else:  # the first image that opens sets the size when none is given
        first = next((p for p in map(dec.probe, range(n)) if p is not None), None)
        dec.size = size or (first[0] if first else (1, 1))
        arrays = [dec.array(i) for i in range(n)] if first else [None] * n
        ok = [a is not None for a in arrays]
    bad = [i for i in range(n) if not ok[i]]
    if bad and opts.on_corrupt == "fail":
        raise SemivitError(f"cannot read image '{dec.where(bad[0])}' ({len(bad)} unreadable in all): fix or "
                           "delete it, or pass --set data.on_corrupt=skip to skip unreadable images")
    if len(bad) == n:
        raise SemivitError(f"no readable images under {where} ({n} files, e.g. '{dec.where(0)}'): check them")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {where} (first: '{dec.where(bad[0])}')",
                      stacklevel=2)
    keep = [i for i in range(n) if ok[i]]
    labels = torch.tensor([files.labels[i] for i in keep], dtype=torch.long)
    ids = [files.ids[i] for i in keep]
    if stream:
        good = [probes[i] for i in keep]
        dec.size = size or good[0][0]
        dec.mode = mode or ("RGB" if any(m == "RGB" for _, m in good) else "L")
        dec.locs = [files.locs[i] for i in keep]
        return ImageSet(labels, ids, files.classes, 3 if dec.mode == "RGB" else 1, dec.size, read=dec)
    kept = [arrays[i] for i in keep]
    c = max(a.shape[2] for a in kept)  # any RGB image makes the whole part RGB
    x = np.stack([a if a.shape[2] == c else np.repeat(a, c, axis=2) for a in kept])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return ImageSet(labels, ids, files.classes, c, dec.size, images=x)


def _is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _tree(paths: list[str], base: str, zip_path: str | None, strip: bool, where: str,
          size: tuple[int, int] | None, mode: str | None, opts: _Opts) -> tuple[ImageSet, ImageSet | None]:
    """Train/test parts of a folder tree given its image paths (posix, relative to ``base``).

    ``strip`` drops wrapping folders shared by every path (zips usually hold one top folder). A tree
    with ``train/`` and ``test/`` (or ``val/``) has two parts; otherwise it is one train part.
    """
    while strip and paths and all("/" in p for p in paths):
        top = paths[0].split("/", 1)[0]
        if any(not p.startswith(top + "/") for p in paths):
            break
        base, paths = f"{base}{top}/", [p[len(top) + 1:] for p in paths]
    tops = {p.split("/", 1)[0] for p in paths if "/" in p}
    test_dir = "test" if "test" in tops else "val" if "val" in tops else None
    if "train" not in tops or test_dir is None:
        return _files_to_set(_part_files(paths, "", base, zip_path), where, size, mode, opts), None
    train = _files_to_set(_part_files(paths, "train/", base, zip_path), f"{where}/train", size, mode, opts)
    test = _files_to_set(_part_files(paths, f"{test_dir}/", base, zip_path), f"{where}/{test_dir}",
                         train.image_size, "RGB" if train.channels == 3 else "L", opts)
    return train, test


def _part_files(paths: list[str], sub: str, base: str, zip_path: str | None) -> _Files:
    """The files under ``sub``: labelled by their first folder, or unlabeled if any image sits at the top."""
    rel = [p[len(sub):] for p in paths if p.startswith(sub)]
    locs = [f"{base}{sub}{p}" for p in rel]
    if any("/" not in p for p in rel):  # loose images: no consistent classes, so the whole part is unlabeled
        return _Files(locs, rel, [UNLABELED] * len(rel), [], zip_path)
    classes = sorted({p.split("/", 1)[0] for p in rel})
    index = {c: k for k, c in enumerate(classes)}
    return _Files(locs, rel, [index[p.split("/", 1)[0]] for p in rel], classes, zip_path)


def _csv_files(path: Path) -> _Files:
    """Rows of a ``path,label`` manifest; paths are relative to the CSV's folder unless absolute."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise SemivitError(f"'{path}' has no 'path' column: start the CSV with the header 'path,label'")
        rows = [((r.get("path") or "").strip(), (r.get("label") or "").strip()) for r in reader]
    rows = [row for row in rows if row[0]]  # blank lines
    names = [label for _, label in rows if label]
    if all(re.fullmatch(r"[+-]?\d+", label) for label in names):  # integer labels: classes "0".."K-1"
        values = [int(label) for label in names]
        if values and min(values) < 0:
            raise SemivitError(f"labels out of range in '{path}': found {min(values)}; use integers 0..K-1 "
                               "and leave the label empty for unlabeled images")
        classes = [str(k) for k in range(max(values, default=-1) + 1)]
        labels = [int(label) if label else UNLABELED for _, label in rows]
    else:
        classes = sorted(set(names))
        index = {c: k for k, c in enumerate(classes)}
        labels = [index[label] if label else UNLABELED for _, label in rows]
    locs = [str(path.parent / p) for p, _ in rows]
    return _Files(locs, [p for p, _ in rows], labels, classes)


def _array_set(x: torch.Tensor, y: torch.Tensor, classes: list[str], ids: list[str] | None = None
               ) -> ImageSet:
    """An in-memory ImageSet from uint8 N×C×H×W images."""
    ids = ids if ids is not None else [str(i) for i in range(len(x))]
    return ImageSet(y.long(), ids, classes, x.shape[1], (x.shape[2], x.shape[3]), images=x.contiguous())


def _conform(part: ImageSet, size: tuple[int, int] | None, channels: int | None) -> ImageSet:
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
    return _array_set(x, part.labels, part.classes, part.ids)


def _array_parts(parts: list[tuple[np.ndarray, np.ndarray, str]], classes: list[str] | None
                 ) -> tuple[ImageSet, ImageSet | None]:
    """Train (and test) parts from (uint8 N×C×H×W images, labels, where) triples, labels checked.

    Without ``classes`` they are "0".."K-1" for the largest label K-1 of all parts.
    """
    parts = [(x, np.asarray(y).astype(np.int64), where) for x, y, where in parts]  # IDX labels are uint8
    k = len(classes) if classes is not None else max(int(y.max(initial=-1)) for _, y, _ in parts) + 1
    sets = []
    for x, y, where in parts:
        bad = y[(y < UNLABELED) | (y >= k)]
        if bad.size:
            raise SemivitError(f"label {int(bad[0])} in {where} is out of range: valid labels are -1 "
                               f"(unlabeled) and 0..{k - 1}; fix the labels or the 'classes' array")
        names = list(classes) if classes is not None else [str(i) for i in range(k)]
        sets.append(_array_set(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), names))
    return sets[0], (sets[1] if len(sets) > 1 else None)


def _npz(path: Path) -> tuple[ImageSet, ImageSet | None]:
    """``x`` (uint8 N×H×W, N×H×W×C or N×C×H×W), ``y`` (-1: unlabeled), optional ``x_test``, ``y_test``,
    ``classes``."""
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z:
            raise SemivitError(f"'{path}' has no 'x' array: save images as x (labels as y) with np.savez")
        arrays = {key: z[key] for key in z.files}
    parts = []
    for key in [k for k in ("x", "x_test") if k in arrays]:
        x, y = arrays[key], arrays.get("y" + key[1:], np.full(len(arrays[key]), UNLABELED))
        if x.dtype != np.uint8:
            raise SemivitError(f"'{key}' in '{path}' is {x.dtype}: save images as uint8 (0..255)")
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
            raise SemivitError(f"'{key}' in '{path}' has shape {x.shape}: use N×H×W, N×H×W×C or N×C×H×W "
                               "with C 1 or 3")
        if len(y) != len(x):
            raise SemivitError(f"'{path}' has {len(x)} images in '{key}' but {len(y)} labels: match them")
        parts.append((x, y, f"'{path}' ({key})"))
    return _array_parts(parts, [str(c) for c in arrays["classes"]] if "classes" in arrays else None)


def _idx_file(folder: Path, part: str, what: str) -> Path | None:
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


def _idx_parts(folder: Path, classes: list[str] | None) -> tuple[ImageSet, ImageSet | None]:
    """``train-``/``t10k-`` image and label IDX pairs in ``folder`` (train labels are required)."""
    if _idx_file(folder, "train", "labels") is None:
        raise SemivitError(f"'{folder}' has no train labels IDX file: add train-labels-idx1-ubyte(.gz)")
    pairs = [(_idx_file(folder, p, "images"), _idx_file(folder, p, "labels")) for p in ("train", "t10k")]
    return _array_parts([(read_idx(x).astype(np.uint8)[:, None], read_idx(y), f"'{y}'")
                         for x, y in pairs if x and y], classes)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the format of Python 2 pickles


def _need(name: str, opts: _Opts) -> None:
    """For missing files of a built-in set: say how to get them, unless the caller may download them."""
    if not opts.download:
        raise SemivitError(f"{name} files not found under {opts.root}: pass --set data.download=true to "
                           "download them, or put torchvision's files there")
    opts.root.mkdir(parents=True, exist_ok=True)


def _builtin(name: str, opts: _Opts, pool: bool) -> tuple[ImageSet, ImageSet | None]:
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
        return (_array_set(x[tr], y[tr], classes, [str(i) for i in tr]),
                _array_set(x[te], y[te], classes, [str(i) for i in te]))
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
        # but the exact original files (re-pickled, subsets), and the format has been fixed since 2009.
        # pickle runs code from the file, as torchvision does too: these are the user's own local files.
        def part(files: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
            entries = [_unpickle(folder / f) for f in files]
            x = np.concatenate([e["data"] for e in entries]).reshape(-1, 3, 32, 32)  # rows are C×H×W already
            return x, np.concatenate([e["labels" if ten else "fine_labels"] for e in entries]), str(folder)

        meta_names = _unpickle(folder / meta)["label_names" if ten else "fine_label_names"]
        return _array_parts([part(train_files), part([test_file])], list(meta_names))
    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        folder = root / cls.__name__ / "raw"  # torchvision's layout
        if _idx_file(folder, "train", "images") is None:
            if name == "fashion-mnist" and _idx_file(DEBIAN_FASHION_MNIST, "train", "images"):
                folder = DEBIAN_FASHION_MNIST
            else:
                _need(name, opts)
                cls(str(root), train=True, download=True)
        return _idx_parts(folder, FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)])
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
    return _array_parts([(ds.data, ds.labels, str(root)) for ds in sets], classes)  # N×C×H×W


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


class _Chain:
    """``read`` over ImageSet ``a`` then ``b`` (picklable when their reads are)."""

    def __init__(self, a: ImageSet, b: ImageSet) -> None:
        self.a, self.b = a, b

    def __call__(self, i: int) -> torch.Tensor:
        part, j = (self.a, i) if i < len(self.a) else (self.b, i - len(self.a))
        return part.images[j] if part.images is not None else part.read(j)


def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    """``b`` appended to ``a`` (same size and channels); streamed when either is."""
    labels, ids = torch.cat([a.labels, b.labels]), a.ids + b.ids
    if a.images is not None and b.images is not None:
        return replace(a, labels=labels, ids=ids, images=torch.cat([a.images, b.images]))
    return ImageSet(labels, ids, a.classes, a.channels, a.image_size, read=_Chain(a, b))


def read_image_files(inputs: list[str], size: int, channels: int) -> tuple[list[str], torch.Tensor]:
    """Image files and folders (searched recursively) → their paths and a uint8 N×C×size×size batch,
    converted to the model's channel count. Used by ``semivit predict``."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and _is_image(f.name))
        elif p.is_file():
            paths.append(str(p))
        else:
            raise SemivitError(f"'{item}' does not exist: pass image files or folders of images")
    if not paths:
        raise SemivitError(f"no images found in {', '.join(inputs)}: pass .jpg/.png files or folders")
    decoder = _Decoder(paths, None, (size, size), "RGB" if channels == 3 else "L")
    arrays = []
    for i in range(len(paths)):
        array = decoder.array(i)
        if array is None:
            raise SemivitError(f"cannot read image '{paths[i]}': it is corrupt or not an image")
        arrays.append(array)
    return paths, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
