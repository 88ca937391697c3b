"""Image files: a folder tree, the same tree inside a ``.zip``, or a ``.csv`` manifest (``path,label``).

A tree with ``train/`` and ``test/`` (or ``val/``) has two parts; otherwise class sub-folders label their
images, and images at the top make the whole part unlabeled. Image ids are paths relative to the root of
their part (``train/cat/0001.jpg`` gets ``cat/0001.jpg``); CSV rows keep the path as written.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from semivit.data.imageset import UNLABELED, ImageSet
from semivit.data.sources.common import Decoder, Files, Opts, Parts, files_to_set, is_image
from semivit.data.sources.parts import multi_hot
from semivit.errors import SemivitError


def claims(spec: str, path: Path) -> bool:
    return path.is_dir() or (path.is_file() and path.suffix.lower() in (".zip", ".csv"))


def load(spec: str, path: Path, size: tuple[int, int] | None, mode: str | None, opts: Opts) -> Parts:
    special: Counter = Counter()
    if path.is_dir():
        names, special = regular_files(path)
        zip_path, base, strip = None, f"{path}/", False
    elif path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile as err:
            raise SemivitError(f"'{path}' is not a readable zip ({err}): re-create or download it") from err
        zip_path, base, strip = str(path), "", True
    else:
        files, skipped, first = csv_files(path, opts.on_corrupt)
        return Parts(files_to_set(files, str(path), size, mode, opts, skipped, first))
    skipped = Counter(_skip_reason(n) for n in names if not is_image(n)) + special
    first = next((n for n in sorted(names) if not is_image(n)), None)
    paths = sorted(n for n in names if is_image(n))
    train, test = _tree(paths, base, zip_path, strip, str(path), size, mode, opts, skipped, first)
    return Parts(train, test)


def regular_files(folder: Path) -> tuple[list[str], Counter]:
    """The regular files under ``folder`` (relative, '/'-separated), and what was left out by reason: FIFOs,
    sockets and devices (reading a FIFO named ``x.png`` would hang the run), and symbolic links that lead
    out of the folder or to something that is not a regular file. Links inside the folder are followed."""
    root = folder.resolve()
    names: list[str] = []
    left_out: Counter = Counter()
    for d, _, files in os.walk(folder):
        for f in files:
            full = os.path.join(d, f)
            try:
                mode = os.lstat(full).st_mode
                if stat.S_ISLNK(mode):
                    target = Path(full).resolve()
                    if not target.is_relative_to(root):
                        left_out["link(s) leading out of the folder"] += 1
                        continue
                    mode = os.stat(full).st_mode
            except OSError:  # vanished, or a link loop
                left_out["unreadable file(s)"] += 1
                continue
            if not stat.S_ISREG(mode):
                left_out["special file(s) (FIFO, socket, device)"] += 1
                continue
            names.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    return names, left_out


def _skip_reason(name: str) -> str:
    """Why a file in a folder or zip is not read as an image (counted in the one 'skipped' line)."""
    parts = name.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in ("thumbs.db",
                                                                                         "desktop.ini"):
        return "hidden/system file(s)"
    return "non-image file(s)"


def _tree(paths: list[str], base: str, zip_path: str | None, strip: bool, where: str,
          size: tuple[int, int] | None, mode: str | None, opts: Opts, skipped: Counter | None = None,
          first_skipped: str | None = None) -> tuple[ImageSet, ImageSet | None]:
    """Train/test parts of a folder tree given its image paths (posix, relative to ``base``).

    ``strip`` drops wrapping folders shared by every path (zips usually hold one top folder). A tree
    with ``train/`` and ``test/`` (or ``val/``) has two parts; otherwise it is one train part. ``skipped``
    counts the tree's files that are not images (reported once, with the train part's unreadable ones).
    """
    while strip and paths and all("/" in p for p in paths):
        top = paths[0].split("/", 1)[0]
        if any(not p.startswith(top + "/") for p in paths):
            break
        base, paths = f"{base}{top}/", [p[len(top) + 1:] for p in paths]
    tops = {p.split("/", 1)[0] for p in paths if "/" in p}
    test_dir = "test" if "test" in tops else "val" if "val" in tops else None
    if "train" not in tops or test_dir is None:
        return files_to_set(_part_files(paths, "", base, zip_path), where, size, mode, opts, skipped,
                            first_skipped), None
    train = files_to_set(_part_files(paths, "train/", base, zip_path), f"{where}/train", size, mode, opts,
                         skipped, first_skipped)
    test = files_to_set(_part_files(paths, f"{test_dir}/", base, zip_path), f"{where}/{test_dir}",
                        train.image_size, "RGB" if train.channels == 3 else "L", opts)
    return train, test


def _part_files(paths: list[str], sub: str, base: str, zip_path: str | None) -> Files:
    """The files under ``sub``: labelled by their first folder, or unlabeled if any image sits at the top."""
    rel = [p[len(sub):] for p in paths if p.startswith(sub)]
    locs = [f"{base}{sub}{p}" for p in rel]
    if any("/" not in p for p in rel):  # loose images: no consistent classes, so the whole part is unlabeled
        return Files(locs, rel, [UNLABELED] * len(rel), [], zip_path)
    classes = sorted({p.split("/", 1)[0] for p in rel})
    index = {c: k for k, c in enumerate(classes)}
    return Files(locs, rel, [index[p.split("/", 1)[0]] for p in rel], classes, zip_path)


def csv_files(path: Path, on_corrupt: str = "skip") -> tuple[Files, Counter, str | None]:
    """Rows of a ``path,label`` manifest (``path,labels`` with ``a|b`` cells: several classes per image; paths
    relative to the CSV's folder unless absolute), without the
    rows whose file is missing: their count (and the first) are returned, or with ``on_corrupt='fail'``
    they stop the run. Labels are read from every row, so class numbering does not depend on which files
    exist."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise SemivitError(f"'{path}' has no 'path' column: start the CSV with the header 'path,label'")
        multilabel = "labels" in (reader.fieldnames or [])
        rows = [((r.get("path") or "").strip(), (r.get("labels" if multilabel else "label") or "").strip())
                for r in reader]
    rows = [row for row in rows if row[0]]  # blank lines
    if multilabel:  # a 'labels' column of 'a|b': several classes per image
        cells = [[n.strip() for n in label.split("|") if n.strip()] for _, label in rows]
        classes = sorted({n for names in cells for n in names})
        if classes and all(re.fullmatch(r"\d+", n) for n in classes):  # integer labels: classes "0".."K-1"
            classes = [str(k) for k in range(max(int(n) for n in classes) + 1)]
        index = {c: k for k, c in enumerate(classes)}
        return _existing(path, rows, [multi_hot([index[n] for n in names], len(classes)) for names in cells],
                         classes, on_corrupt)
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
    return _existing(path, rows, labels, classes, on_corrupt)


def _existing(path: Path, rows: list[tuple[str, str]], labels: list, classes: list[str],
              on_corrupt: str) -> tuple[Files, Counter, str | None]:
    """The manifest's rows whose file exists (see :func:`csv_files`)."""
    locs = [str(path.parent / p) for p, _ in rows]
    present = [os.path.isfile(loc) for loc in locs]
    missing = [p for (p, _), ok in zip(rows, present) if not ok]
    if missing and on_corrupt == "fail":
        raise SemivitError(f"'{path}' names {len(missing)} file(s) that do not exist (first: '{missing[0]}'): fix "
                           "the paths (relative to the CSV's folder), or pass --set data.on_corrupt=skip to skip them")
    keep = [k for k, ok in enumerate(present) if ok]
    files = Files([locs[k] for k in keep], [rows[k][0] for k in keep], [labels[k] for k in keep], classes)
    return files, Counter({"missing file(s)": len(missing)} if missing else {}), (missing[0] if missing else None)


def read_image_files(inputs: list[str], size: int, channels: int) -> tuple[list[str], torch.Tensor]:
    """Image files and folders (searched recursively) → their paths and a uint8 N×C×size×size batch,
    converted to the model's channel count. Used by ``semivit predict``."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image(f.name))
        elif p.is_file():
            paths.append(str(p))
        else:
            raise SemivitError(f"'{item}' does not exist: pass image files or folders of images")
    if not paths:
        raise SemivitError(f"no images found in {', '.join(inputs)}: pass .jpg/.png files or folders")
    decoder = Decoder(paths, None, (size, size), "RGB" if channels == 3 else "L")
    arrays = []
    for i in range(len(paths)):
        array = decoder.array(i)
        if array is None:
            raise SemivitError(f"cannot read image '{paths[i]}': it is corrupt or not an image")
        arrays.append(array)
    return paths, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

