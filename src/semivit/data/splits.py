"""Seeded, class-balanced label splits, saved as JSON so others can reproduce a run exactly.

A split divides the training part into three index sets:

- ``labeled``: the images whose labels training may use (``--labels 4-per-class | 250 | 10% | all``);
- ``val``: a labeled validation split for model selection and gates (``data.val``). It is carved from the
  training part's labels, disjoint from ``labeled``, and never trained on; the test part is never used;
- ``unlabeled``: every training image except ``val`` (labeled ones included, as in FixMatch/USB) — their
  labels are hidden from methods and used only for diagnostics such as pseudo-label accuracy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from semivit.data.imageset import ImageSet
from semivit.errors import SemivitError

SPEC_HELP = "use 'all', 'N-per-class' (e.g. 4-per-class), a total 'N' (e.g. 250) or a percentage (e.g. 10%)"


@dataclass
class Split:
    labeled: torch.Tensor
    val: torch.Tensor
    unlabeled: torch.Tensor

    def to_json(self, train: ImageSet, meta: dict) -> dict:
        return {"version": 1, **meta, "num_train": len(train),
                "labeled": [train.ids[i] for i in self.labeled.tolist()],
                "val": [train.ids[i] for i in self.val.tolist()]}


def _per_class_counts(spec: str, available: list[int], what: str) -> list[int]:
    """How many images of each class ``spec`` asks for, given ``available`` images per class."""
    spec = spec.strip().lower()
    k = len(available)
    if spec == "all":
        return list(available)
    if m := re.fullmatch(r"(\d+)-?per-?class", spec):
        counts = [int(m.group(1))] * k
    elif m := re.fullmatch(r"(\d+(?:\.\d+)?)%", spec):
        frac = float(m.group(1)) / 100
        if not 0 < frac <= 1:
            raise SemivitError(f"{what} '{spec}' must be a percentage in (0, 100]")
        counts = [max(1, round(frac * a)) if a else 0 for a in available]
    elif m := re.fullmatch(r"\d+", spec):
        total = int(spec)
        if total == 0:
            return [0] * k
        if total < k:
            raise SemivitError(f"{what} '{spec}' gives fewer labels ({total}) than classes ({k}): "
                               f"ask for at least {k}, e.g. '{k}' or '1-per-class'")
        counts = [total // k + (1 if c < total % k else 0) for c in range(k)]
    else:
        raise SemivitError(f"cannot read {what} '{spec}': {SPEC_HELP}")
    return counts


def _take_per_class(labels: torch.Tensor, pool: torch.Tensor, spec: str, num_classes: int,
                    generator: torch.Generator, what: str) -> torch.Tensor:
    """Pick ``spec`` images per class from ``pool`` (indices), seeded and class-balanced."""
    by_class = [pool[labels[pool] == c] for c in range(num_classes)]
    counts = _per_class_counts(spec, [len(b) for b in by_class], what)
    chosen = []
    for c, (members, n) in enumerate(zip(by_class, counts)):
        if n > len(members):
            raise SemivitError(f"{what} '{spec}' asks for {n} images of class {c} but only {len(members)} "
                               f"are labeled (and not used elsewhere): ask for fewer labels")
        perm = torch.randperm(len(members), generator=generator)
        chosen.append(members[perm[:n]])
    return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)


def _auto_val_spec(remaining_per_class: int) -> str:
    # 10% of what is left, between 1 and 50 per class: enough to rank settings, few enough to be realistic.
    return f"{min(50, max(1, remaining_per_class // 10))}-per-class"


def make_split(train: ImageSet, labels_spec: str = "all", val_spec: str = "auto", seed: int = 0) -> Split:
    """A seeded class-balanced split of ``train`` (see the module docstring)."""
    k = train.num_classes
    known = torch.nonzero(train.labels >= 0).flatten()
    if k == 0 or len(known) == 0:
        raise SemivitError("the training data has no labeled images: give a labeled source (class folders, "
                           "a CSV with labels) and add unlabeled images with --unlabeled")
    generator = torch.Generator().manual_seed(seed)
    labeled = _take_per_class(train.labels, known, labels_spec, k, generator, "--labels")
    return _with_unlabeled(train, labeled, _carve_val(train, labeled, val_spec, generator))


def _carve_val(train: ImageSet, labeled: torch.Tensor, val_spec: str,
               generator: torch.Generator) -> torch.Tensor:
    """The validation split: labeled training images outside ``labeled``."""
    known = torch.nonzero(train.labels >= 0).flatten()
    rest = known[~torch.isin(known, labeled)]
    if val_spec == "auto":
        per_class = min(int((train.labels[rest] == c).sum()) for c in range(train.num_classes))
        val_spec = _auto_val_spec(per_class) if per_class else "0"
    return _take_per_class(train.labels, rest, val_spec, train.num_classes, generator, "data.val")


def _with_unlabeled(train: ImageSet, labeled: torch.Tensor, val: torch.Tensor) -> Split:
    everything = torch.arange(len(train))
    return Split(labeled, val, everything[~torch.isin(everything, val)])


def _indices_of(train: ImageSet, names: list[str], path: str) -> torch.Tensor:
    """Map image names from a split/list file to indices of ``train``.

    A name matches an id exactly or after dropping leading folders (``train/cat/1.jpg`` → ``cat/1.jpg``);
    a bare file name matches when it is unique in the data (ImageNet-style list files).
    """
    by_id = {name: i for i, name in enumerate(train.ids)}
    base_count: dict[str, int] = {}
    by_base: dict[str, int] = {}
    for i, name in enumerate(train.ids):
        base = Path(name).name
        base_count[base] = base_count.get(base, 0) + 1
        by_base[base] = i
    out, missing = [], []
    for name in names:
        parts = name.replace("\\", "/").split("/")
        found = next((by_id[key] for key in ("/".join(parts[k:]) for k in range(len(parts))) if key in by_id),
                     None)
        if found is None and base_count.get(parts[-1]) == 1:
            found = by_base[parts[-1]]
        if found is None:
            missing.append(name)
        else:
            out.append(found)
    if missing:
        raise SemivitError(f"split file '{path}' names {len(missing)} images not in the training data "
                           f"(first: '{missing[0]}'): was it made for another data set?")
    return torch.tensor(sorted(set(out)), dtype=torch.long)


def load_split(path: str, train: ImageSet, val_spec: str = "auto", seed: int = 0) -> Split:
    """Read a saved ``split.json``, or a list file with one labeled image name per line."""
    p = Path(path)
    if not p.is_file():
        raise SemivitError(f"split file '{path}' not found: pass a split.json from a run or a list file")
    text = p.read_text()
    if p.suffix == ".json":
        try:
            data = json.loads(text)
            labeled, val = data["labeled"], data["val"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SemivitError(f"split file '{path}' is not a semivit split.json (needs 'labeled' and "
                               f"'val' lists)") from None
        if data.get("num_train", len(train)) != len(train):
            raise SemivitError(f"split file '{path}' was made for {data['num_train']} training images, "
                               f"this data has {len(train)}: use the same data set")
        return _with_unlabeled(train, _indices_of(train, labeled, path), _indices_of(train, val, path))
    names = [line.strip().split()[0] for line in text.splitlines() if line.strip()]
    labeled = _indices_of(train, names, path)
    if (train.labels[labeled] < 0).any():
        raise SemivitError(f"list file '{path}' names unlabeled images: list labeled images only")
    val = _carve_val(train, labeled, val_spec, torch.Generator().manual_seed(seed))
    return _with_unlabeled(train, labeled, val)


def save_split(split: Split, train: ImageSet, path: str | Path, meta: dict) -> None:
    Path(path).write_text(json.dumps(split.to_json(train, meta)))


def steps_for_epochs(epochs: float, n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n_images / batch_size))
