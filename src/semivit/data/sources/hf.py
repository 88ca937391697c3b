"""Hugging Face ``datasets``: ``hf:ORG/NAME`` from the hub, a folder written by ``save_to_disk``, Parquet
files (one ``.parquet`` or a folder of them), and the ``imagefolder`` layout with ``metadata.csv``.

Read through the ``datasets`` library (``pip install 'semivit[hf]'``). Splits: ``train`` is the training
part (or the only split), ``test`` the test part, ``validation``/``valid``/``val``/``dev`` a validation part
that becomes the run's validation split, ``unlabeled``/``unsupervised`` images appended to ``train`` without
labels (ids ``unlabeled/ROW``). The image column is the one typed ``Image`` (else a binary column,
else a path column such as ``image``/``file_name``); the label column is the ``ClassLabel`` one (its names
become class names), else ``label``/``labels``/``fine_label``/``class``/``target`` (strings become sorted
class names, integers "0".."K-1"); -1 or an empty value is unlabeled. Ids are ``SPLIT/ROW``.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from semivit.data.imageset import UNLABELED, ImageSet
from semivit.data.sources.common import Decoder, Files, Opts, Parts, files_to_set
from semivit.data.sources.parts import concat, multi_hot
from semivit.errors import SemivitError

INSTALL = "pip install 'semivit[hf]' (or pip install datasets)"
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
PATH_NAMES = ("image", "img", "image_path", "file_name", "filename", "file", "path", "filepath")
VAL_SPLITS = ("validation", "valid", "val", "dev")
POOL_SPLITS = ("unlabeled", "unlabelled", "unsupervised")
_SPLIT_OF_FILE = re.compile(r"(?:^|[-_./])(train|test|validation|valid|val|dev|unlabeled|unlabelled|unsupervised)"
                            r"(?:[-_.]|$)")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SemivitError(f"reading Hugging Face data needs the 'datasets' library: {INSTALL}") from None
    return datasets


def _parquet_files(path: Path) -> list[Path]:
    """Parquet files of a folder: at its top or in ``data/`` (the hub's layout). Not every sub-folder: this
    runs for every folder source, and listing each class folder of an ImageNet tree would cost seconds."""
    return sorted([*path.glob("*.parquet"), *path.glob("data/*.parquet")])


def _metadata(path: Path) -> Path | None:
    return next((p for p in (path / "metadata.csv", path / "metadata.jsonl", path / "train" / "metadata.csv",
                             path / "train" / "metadata.jsonl") if p.is_file()), None)


def layout(path: Path) -> str | None:
    """'disk' (save_to_disk), 'parquet' or 'imagefolder' for a path in one of those layouts, else None."""
    if path.is_file():
        return "parquet" if path.suffix.lower() == ".parquet" else None
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    if _metadata(path) is not None:
        return "imagefolder"
    return "parquet" if _parquet_files(path) else None


def claims(spec: str, path: Path) -> bool:
    return spec.startswith("hf:") or layout(path) is not None


def _open(spec: str, path: Path) -> dict[str, Any]:
    """The splits of ``spec`` as {name: datasets.Dataset}."""
    ds = _datasets()
    kind = "hub" if spec.startswith("hf:") else layout(path)
    try:
        if kind == "hub":
            # hf:ORG/NAME or hf:ORG/NAME:CONFIG; files are cached by datasets (HF_DATASETS_CACHE), and
            # HF_HUB_OFFLINE=1 makes it read only that cache
            name, _, config = spec[3:].partition(":")
            if not name:
                raise SemivitError("'hf:' needs a dataset name: --data hf:ORG/NAME (or hf:ORG/NAME:CONFIG)")
            data = ds.load_dataset(name, config or None)
        elif kind == "disk":
            data = ds.load_from_disk(str(path))
        elif kind == "imagefolder":
            data = ds.load_dataset("imagefolder", data_dir=str(path))
        else:
            files = [path] if path.is_file() else _parquet_files(path)
            by_split: dict[str, list[str]] = {}
            for f in files:  # the hub's naming: data/train-00000-of-00002.parquet, test-..., validation-...
                m = _SPLIT_OF_FILE.search(f.relative_to(path.parent if path.is_file() else path).as_posix())
                by_split.setdefault(m.group(1) if m else "train", []).append(str(f))
            data = ds.load_dataset("parquet", data_files=by_split)
    except SemivitError:
        raise
    except Exception as err:  # network, missing repository, damaged files: one line, not the library's trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"'{spec}' from the Hugging Face hub" if kind == "hub" else f"'{path}' ({kind})"
        fix = ("check the name and your network, or set HF_HUB_OFFLINE=1 to use the cache" if kind == "hub"
               else "check the files, or re-create them with datasets' save_to_disk / to_parquet")
        raise SemivitError(f"cannot read {where}: {first[:200]} — {fix}") from None
    return dict(data) if isinstance(data, ds.DatasetDict) else {"train": data}


def _columns(d: Any, where: str) -> tuple[str, str, str | None]:
    """(image column, its kind 'image'/'bytes'/'path', label column or None)."""
    ds = _datasets()
    feats = d.features
    # datasets.Image, or the {bytes, path} struct it is stored as (Parquet written without HF metadata)
    image = next((c for c, f in feats.items() if isinstance(f, ds.Image)
                  or (isinstance(f, dict) and set(f) == {"bytes", "path"})), None)
    kind = "image"
    if image is None:
        image = next((c for c, f in feats.items() if isinstance(f, ds.Value) and f.dtype in ("binary",
                                                                                             "large_binary")), None)
        kind = "bytes"
    if image is None:
        image = next((c for c in PATH_NAMES if c in feats and isinstance(feats[c], ds.Value)
                      and feats[c].dtype in ("string", "large_string")), None)
        kind = "path"
    if image is None:
        raise SemivitError(f"{where} has no image column (columns: {', '.join(list(feats)[:8])}): add a column "
                           "of type datasets.Image, of image bytes, or of file paths named 'image'")
    label = next((c for c, f in feats.items() if isinstance(f, ds.ClassLabel) or _classlabel_list(f)), None)
    label = label or next((c for c in LABEL_NAMES if c in feats and c != image), None)
    return image, kind, label


class RowDecoder(Decoder):
    """Decodes the image of row ``locs[i]`` of a Hugging Face Dataset (picklable: Arrow-backed datasets
    pickle as references to their memory-mapped files, so DataLoader workers can carry it)."""

    def __init__(self, data: Any, column: str, kind: str, base: Path, where: str) -> None:
        super().__init__(list(range(len(data))), None)
        if kind == "image":  # undecoded: {'bytes': ..., 'path': ...}, decoded here with our size rule
            data = data.cast_column(column, _datasets().Image(decode=False))
        self.data = data.select_columns([column])
        self.column, self.kind, self.base, self.where_ = column, kind, base, where

    def where(self, i: int) -> str:
        return f"{self.where_} row {self.locs[i]}"

    def _bytes(self, i: int) -> bytes:
        value = self.data[int(self.locs[i])][self.column]
        if isinstance(value, dict):  # datasets.Image(decode=False): bytes, or a path for imagefolder rows
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            p = Path(value)
            return (p if p.is_absolute() else self.base / p).read_bytes()
        raise OSError("empty image cell")

    def _open(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self._bytes(i)))


def _classlabel_list(feat: Any) -> bool:
    """Whether ``feat`` is a list of class labels (``Sequence(ClassLabel)``, shown as ``List`` by datasets ≥ 4):
    several labels per image."""
    inner = getattr(feat, "feature", None)
    return type(feat).__name__ in ("Sequence", "List") and isinstance(inner, _datasets().ClassLabel)


def _labels(d: Any, label: str | None, classes: list[str] | None) -> tuple[list, list[str]]:
    """Integer labels of a split and the class names (``classes`` given: map string labels onto them); for a
    ``Sequence(ClassLabel)`` column, multi-hot rows (an empty or missing list: unlabeled)."""
    ds = _datasets()
    if label is None:
        return [UNLABELED] * len(d), list(classes or [])
    feat, values = d.features[label], d[label]
    if _classlabel_list(feat):
        names = list(feat.feature.names)
        return [multi_hot(v or [], len(names)) for v in values], names
    if isinstance(feat, ds.ClassLabel):
        return [UNLABELED if v is None or v < 0 else int(v) for v in values], list(feat.names)
    if all(v is None or isinstance(v, (int, bool)) for v in values):
        k = max([v for v in values if v is not None] + [-1]) + 1
        names = list(classes) if classes is not None else [str(c) for c in range(k)]
        return [UNLABELED if v is None or v < 0 else int(v) for v in values], names
    text = ["" if v is None else str(v).strip() for v in values]
    names = list(classes) if classes is not None else sorted({t for t in text if t})
    index = {c: k for k, c in enumerate(names)}
    return [index[t] if t in index else UNLABELED for t in text], names


def load(spec: str, path: Path, size: tuple[int, int] | None, mode: str | None, opts: Opts) -> Parts:
    splits = _open(spec, path)
    train_key = "train" if "train" in splits else next(iter(splits))
    test_key = next((k for k in ("test",) if k in splits and k != train_key), None)
    val_key = next((k for k in VAL_SPLITS if k in splits and k != train_key), None)
    base = path.parent if path.is_file() else path
    parts: dict[str, ImageSet] = {}
    classes: list[str] | None = None
    for part, key in (("train", train_key), ("test", test_key), ("val", val_key)):
        if key is None:
            continue
        d = splits[key]
        where = f"'{spec}' split '{key}'"
        image, kind, label = _columns(d, where)
        labels, names = _labels(d, label, classes)
        classes = classes if classes is not None else names
        dec = RowDecoder(d, image, kind, base, where)
        files = Files(dec.locs, [f"{key}/{i}" for i in range(len(d))], labels, names)
        first = parts.get("train")
        parts[part] = files_to_set(files, where, first.image_size if first else size,
                                   ("RGB" if first.channels == 3 else "L") if first else mode, opts,
                                   Counter(), None, decoder=dec)
    train = parts["train"]
    pool_key = next((k for k in POOL_SPLITS if k in splits and k != train_key), None)
    if pool_key is not None:  # STL-10's 'unlabeled' split and the like: appended as unlabeled images
        d = splits[pool_key]
        where = f"'{spec}' split '{pool_key}'"
        image, kind, _ = _columns(d, where)
        dec = RowDecoder(d, image, kind, base, where)
        files = Files(dec.locs, [f"{pool_key}/{i}" for i in range(len(d))], train.unlabeled_labels(len(d)).tolist(),
                      train.classes)
        pool = files_to_set(files, where, train.image_size, "RGB" if train.channels == 3 else "L", opts,
                            decoder=dec)
        train = concat(train, pool)
    return Parts(train, parts.get("test"), parts.get("val"), name=spec[3:] if spec.startswith("hf:") else None)
