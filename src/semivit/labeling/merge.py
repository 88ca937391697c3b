"""Labels a person wrote (into ``to_label.csv`` from ``semivit suggest``, or a reviewed ``pseudo.csv``)
merged with the labels a run or data source already has, into a file the next ``train``/``run`` reads.

The output's suffix says what to write:

- ``.csv`` — a manifest (``path,label``; an empty label = unlabeled) of every training image, the data
  source for the next run (``--data labels.csv --labels all``); needs images that are files;
- ``.txt`` — a list of the training labels (a run's validation images left out), for ``--split``
  (``data.val`` then carves validation);
- ``.json`` — a split file (``--split``) that keeps the run's validation images as they were;
- ``.npz`` — the images as arrays with the merged labels (``x``, ``y``, ``classes``, ``x_test``,
  ``y_test``), for data without files (built-in sets, arrays).

``.txt`` and ``.json`` name images whose labels the data already holds (a simulation on a labeled set), so
the hidden labels stay available for pseudo-label diagnostics; a written label the data lacks or
contradicts needs ``.csv`` or ``.npz``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from semivit.errors import SemivitError
from semivit.labeling.pool import Label, Pool, image_files, label_of

#: values of a ``keep`` column (pseudo-label review) that accept a row
KEEP_YES = {"yes", "y", "1", "true", "x", "keep", "ok"}
OUTPUT_KINDS = (".csv", ".txt", ".json", ".npz")


def read_labels(path: str | Path, pool: Pool) -> dict[int, str]:
    """Image index → label name for the rows of ``path`` that carry a label (and, when the file has a
    ``keep`` column, are kept). Rows are matched to images by file path (absolute, or relative to the CSV
    or the working folder) or by image id."""
    p = Path(path)
    if not p.is_file():
        raise SemivitError(f"labels file '{path}' not found: pass the CSV written by semivit suggest or "
                           "semivit pseudolabels, with labels filled in")
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        column = "labels" if pool.train.multilabel else "label"  # multi-label: 'a|b' in a 'labels' column
        if "path" not in fields or column not in fields:
            raise SemivitError(f"'{path}' needs 'path' and '{column}' columns: use the CSV semivit suggest or "
                               "semivit pseudolabels wrote")
        rows = list(reader)
    by_id = {image_id: i for i, image_id in enumerate(pool.train.ids)}
    by_file = {str(f): i for i, f in enumerate(image_files(pool.cfg, pool.train)) if f is not None}
    out: dict[int, str] = {}
    for n, row in enumerate(rows, start=2):
        name, label = (row.get("path") or "").strip(), (row.get(column) or "").strip()
        if not name or not label:
            continue  # not labeled (yet)
        if "keep" in fields and (row.get("keep") or "").strip().lower() not in KEEP_YES:
            continue
        index = _match(name, p.parent, by_id, by_file)
        if index is None:
            raise SemivitError(f"row {n} of '{path}' names '{name}', which is not an image of the data "
                               f"({pool.cfg.data.source}): label images of the same data and run")
        if index in out and out[index] != label:
            raise SemivitError(f"'{path}' labels '{name}' twice ('{out[index]}' and '{label}'): keep one row")
        out[index] = label
    return out


def _match(name: str, base: Path, by_id: dict[str, int], by_file: dict[str, int]) -> int | None:
    for candidate in (Path(name).expanduser(), base / name):
        if candidate.is_file() and str(candidate.resolve()) in by_file:
            return by_file[str(candidate.resolve())]
    parts = name.replace("\\", "/").split("/")
    return next((by_id[key] for key in ("/".join(parts[k:]) for k in range(len(parts))) if key in by_id), None)


def merge_labels(pool: Pool, new: dict[int, str], out: str | Path) -> tuple[Path, str]:
    """Write the pool's known labels with ``new`` (image index → label name; a person's label wins over a
    known one) to ``out`` (its suffix picks the kind, see the module docstring). Returns the file and the
    command-line arguments the next run takes."""
    out = Path(out)
    kind = out.suffix.lower()
    if kind not in OUTPUT_KINDS:
        raise SemivitError(f"cannot write labels to '{out}': name it .csv (a manifest), .txt (a list for "
                           "--split), .json (a split file) or .npz (arrays)")
    classes = list(pool.train.classes)
    merged: dict[int, Label] = dict(pool.known)
    for index, name in new.items():
        names = [n.strip() for n in name.split("|") if n.strip()] if pool.train.multilabel else [name]
        for n in names:
            if n not in classes:
                classes.append(n)  # a class the data did not have yet
        merged[index] = tuple(sorted(classes.index(n) for n in names)) if pool.train.multilabel \
            else classes.index(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = pool.cfg.data.source
    if kind in (".txt", ".json"):
        differ = [i for i, c in merged.items() if label_of(pool.train, i) != c]
        if differ:
            raise SemivitError(f"{len(differ)} label(s) are not the data's own (e.g. '{pool.train.ids[differ[0]]}'): "
                               f"a {kind} file only names images, so write the labels with -o {out.stem}.csv "
                               f"(a manifest) or -o {out.stem}.npz")
        val = set(pool.val.tolist())
        if kind == ".txt":  # the training labels; the next run's data.val carves validation anew
            out.write_text("".join(f"{pool.train.ids[i]}\n" for i in sorted(merged) if i not in val))
        else:
            out.write_text(json.dumps({"version": 1, "source": source, "num_train": len(pool.train),
                                       "labeled": [pool.train.ids[i] for i in sorted(merged) if i not in val],
                                       "val": [pool.train.ids[i] for i in sorted(val)],
                                       "val_from": pool.val_from if val else "none"}))
        return out, f"--data {source} --split {out}"
    if kind == ".csv":
        files = image_files(pool.cfg, pool.train)
        missing = [i for i, f in enumerate(files) if f is None]
        if missing:
            raise SemivitError(f"the images of '{source}' are not files (e.g. '{pool.train.ids[missing[0]]}'): "
                               f"write -o {out.stem}.npz (arrays) or -o {out.stem}.txt (a --split list)")
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels" if pool.train.multilabel else "label"])
            for i, file in enumerate(files):
                writer.writerow([_relative(file, out.parent), _cell(merged.get(i), classes)])  # type: ignore[arg-type]
        test = f" --test {pool.cfg.data.test or source}" if pool.test is not None else ""
        return out, f"--data {out} --labels all{test}"
    train = pool.train
    if train.images is None:
        raise SemivitError(f"'{source}' is streamed from disk, too large for an .npz: write -o {out.stem}.csv")
    if train.multilabel:  # N×C targets; a class added by a person is a new column
        y = np.full((len(train), len(classes)), -1, dtype=np.int8)
        for i, present in merged.items():
            y[i] = 0
            y[i, list(present)] = 1  # type: ignore[arg-type]
    else:
        y = np.full(len(train), -1, dtype=np.int64)
        for i, c in merged.items():
            y[i] = c
    arrays: dict[str, np.ndarray] = {"x": train.images.numpy(), "y": y, "classes": np.array(classes)}
    test = pool.test
    if test is not None and test.images is not None and train.multilabel:
        extra = np.zeros((len(test), len(classes) - test.num_classes), np.int8)  # new classes: absent there
        arrays.update(x_test=test.images.numpy(), y_test=np.concatenate([test.labels.numpy(), extra], 1))
    elif test is not None and test.images is not None:
        lut = torch.tensor([classes.index(c) for c in test.classes] + [-1])  # lut[-1] keeps -1 unlabeled
        arrays.update(x_test=test.images.numpy(), y_test=lut[test.labels].numpy())
    np.savez_compressed(out, **arrays)
    return out, f"--data {out} --labels all"


def _cell(label: Label | None, classes: list[str]) -> str:
    """A manifest cell: a class name, a multi-label image's ``a|b``, or empty for an unlabeled image."""
    if label is None:
        return ""
    return "|".join(classes[c] for c in label) if isinstance(label, tuple) else classes[label]


def merged_name(pool: Pool) -> str:
    """The output the labels of this pool can go to (see :mod:`semivit.labeling.merge`): a manifest when the
    images are files, a split file for a labeled set with hidden labels, else arrays."""
    if all(f is not None for f in image_files(pool.cfg, pool.train)):
        return "labels.csv"
    if pool.hidden:
        return "labels.json" if len(pool.val) else "labels.txt"
    return "labels.npz"


def _relative(file: Path, base: Path) -> str:
    """``file`` relative to the manifest's folder (CSV paths are read relative to it), or absolute when it
    is on another drive."""
    try:
        return os.path.relpath(file, base.resolve()).replace(os.sep, "/")
    except ValueError:
        return str(file)
