"""Seeded, class-balanced label splits, saved as JSON so others can reproduce a run exactly.

A split divides the training part into three index sets:

- ``labeled``: the images whose labels training may use (``--labels 4-per-class | 250 | 10% | all``);
- ``val``: a labeled validation split for model selection and gates (``data.val``), disjoint from ``labeled``
  and never trained on; the test part is never used. It comes either from labeled images *beyond* the
  ``--labels`` (``auto``, ``5-per-class``, ``50``, ``10%``: a simulation with a fully labeled training part
  can afford it, but the run then consumes more labels than ``--labels`` says), or from the labeled set
  itself (``20%-of-labels``, ``2-per-class-of-labels``, one fold of k ``fold-1-of-5``: the rest train, so
  the labels consumed are exactly ``--labels``, as for a user who only has those);
- ``unlabeled``: every training image except ``val`` (labeled ones included, as in FixMatch/USB) — their
  labels are hidden from methods and used only for diagnostics such as pseudo-label accuracy.

Every run reports how many labels each part used (:meth:`Split.label_counts`, :func:`describe_label_counts`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semivit.data.imageset import ImageSet
from semivit.errors import SemivitError

SPEC_HELP = "use 'all', 'N-per-class' (e.g. 4-per-class), a total 'N' (e.g. 250) or a percentage (e.g. 10%)"
VAL_HELP = ("use 'auto' or extra labeled images beyond --labels ('5-per-class', '50', '10%', '0' = none), a share "
            "held out of the labels ('20%-of-labels', '2-per-class-of-labels') or one fold of k ('fold-1-of-5')")
OF_LABELS = "-of-labels"
_FOLD = re.compile(r"fold-?(\d+)-?of-?(\d+)")

# where the validation labels come from (Split.val_from)
VAL_EXTRA = "extra"  # labeled images beyond --labels: the run consumes more labels than --labels
VAL_HELD_OUT = "labels"  # held out of the --labels set: the rest train, the total is --labels
VAL_NONE = "none"  # no validation split


@dataclass
class Split:
    labeled: torch.Tensor  # the labels training uses
    val: torch.Tensor
    unlabeled: torch.Tensor
    val_from: str = VAL_EXTRA  # VAL_EXTRA, VAL_HELD_OUT or VAL_NONE

    def label_counts(self) -> dict[str, Any]:
        """How many labeled images training and validation each used, and the total consumed (a run's
        results.json and summary carry these, so a '10-per-class' run that validates on 50 extra labels per
        class says so)."""
        return {"labeled": len(self.labeled), "val_labeled": len(self.val),
                "labels_total": len(self.labeled) + len(self.val),
                "val_from": self.val_from if len(self.val) else VAL_NONE}

    def to_json(self, train: ImageSet, meta: dict) -> dict:
        return {"version": 1, **meta, "num_train": len(train), **self.label_counts(),
                "labeled": [train.ids[i] for i in self.labeled.tolist()],
                "val": [train.ids[i] for i in self.val.tolist()]}


def describe_label_counts(counts: dict[str, Any]) -> str:
    """One line for a run summary, e.g. 'labels used: 120 = 20 training + 100 validation (...)'."""
    train, val, total = counts["labeled"], counts["val_labeled"], counts["labels_total"]
    if not val:
        return f"labels used: {total}, all for training (no validation split)"
    line = f"labels used: {total} = {train} training + {val} validation"
    if counts.get("val_from") == VAL_HELD_OUT:
        return line + " (validation held out of --labels)"
    return line + (" (validation labels are extra, beyond --labels; data.val=20%-of-labels validates on a "
                   "share of the labels instead)")


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


def _take_multilabel(labels: torch.Tensor, pool: torch.Tensor, spec: str, generator: torch.Generator,
                     what: str) -> torch.Tensor:
    """Pick images of a multi-label ``pool`` (labels N×C), seeded: ``all``; ``N-per-class``: until every class
    has N positive images (rarest class first); a total ``N`` or ``p%`` of the pool: first one positive image of
    each class (rarest first, when the total allows one per class), the rest at random."""
    spec = spec.strip().lower()
    if spec == "all":
        return torch.sort(pool).values
    pos = labels[pool] == 1
    k = pos.shape[1]
    perm = torch.randperm(len(pool), generator=generator)
    chosen = torch.zeros(len(pool), dtype=torch.bool)
    rarest_first = torch.argsort(pos.sum(0), stable=True).tolist()

    def add_positives(c: int, need: int) -> None:
        candidates = perm[pos[perm, c] & ~chosen[perm]]
        if need > len(candidates):
            raise SemivitError(f"{what} '{spec}' asks for {need} more images with class {c} but only "
                               f"{len(candidates)} are labeled (and not used elsewhere): ask for fewer labels")
        chosen[candidates[:need]] = True

    if m := re.fullmatch(r"(\d+)-?per-?class", spec):
        for c in rarest_first:
            add_positives(c, max(0, int(m.group(1)) - int(pos[chosen, c].sum())))
        return torch.sort(pool[chosen]).values
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", spec):
        frac = float(m.group(1)) / 100
        if not 0 < frac <= 1:
            raise SemivitError(f"{what} '{spec}' must be a percentage in (0, 100]")
        total = max(1, round(frac * len(pool)))
    elif re.fullmatch(r"\d+", spec):
        total = int(spec)
    else:
        raise SemivitError(f"cannot read {what} '{spec}': {SPEC_HELP}")
    if total > len(pool):
        raise SemivitError(f"{what} '{spec}' asks for {total} images but only {len(pool)} are labeled (and not "
                           f"used elsewhere): ask for fewer labels")
    if total >= k:
        for c in rarest_first:
            if pos[:, c].any() and not pos[chosen, c].any():
                add_positives(c, 1)
    rest = perm[~chosen[perm]]
    chosen[rest[:max(0, total - int(chosen.sum()))]] = True
    return torch.sort(pool[chosen]).values


def _take_per_class(labels: torch.Tensor, pool: torch.Tensor, spec: str, num_classes: int,
                    generator: torch.Generator, what: str) -> torch.Tensor:
    """Pick ``spec`` images per class from ``pool`` (indices), seeded and class-balanced (multi-label data:
    :func:`_take_multilabel`)."""
    if labels.dim() == 2:
        return _take_multilabel(labels, pool, spec, generator, what)
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
    # 10% of what is left, between 1 and 50 per class: enough to rank settings. These are labels beyond
    # --labels (the run reports them): kept as the default so that existing splits and benchmarks reproduce.
    return f"{min(50, max(1, remaining_per_class // 10))}-per-class"


def _held_out_counts(spec: str, available: list[int]) -> list[int]:
    """Validation images per class taken out of ``available`` labels per class; every class keeps at least
    one training label (a class with a single label is never validated)."""
    if spec.strip().lower() == "all":
        raise SemivitError(f"data.val 'all{OF_LABELS}' would leave nothing to train on: {VAL_HELP}")
    counts = _per_class_counts(spec, available, "data.val")
    if spec.strip().endswith("%"):  # a share: clamp so that 1 label per class is still validated and trained
        return [min(n, a - 1) if a >= 2 else 0 for n, a in zip(counts, available)]
    for c, (n, a) in enumerate(zip(counts, available)):
        if n and n >= a:
            raise SemivitError(f"data.val '{spec}{OF_LABELS}' holds out {n} of the {a} labels of class {c}, "
                               f"leaving none to train on: ask for fewer (e.g. '20%{OF_LABELS}')")
    return counts


def _hold_out(train: ImageSet, labeled: torch.Tensor, spec: str,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``spec`` images per class of ``labeled`` (seeded) for validation; the rest train."""
    if train.multilabel:
        if spec.strip().lower() == "all":
            raise SemivitError(f"data.val 'all{OF_LABELS}' would leave nothing to train on: {VAL_HELP}")
        val_t = _take_multilabel(train.labels, labeled, spec, generator, "data.val")
        if len(val_t) >= len(labeled):
            raise SemivitError(f"data.val '{spec}{OF_LABELS}' holds out all {len(labeled)} labels, leaving none to "
                               f"train on: ask for fewer (e.g. '20%{OF_LABELS}')")
        return labeled[~torch.isin(labeled, val_t)], val_t
    k = train.num_classes
    by_class = [labeled[train.labels[labeled] == c] for c in range(k)]
    counts = _held_out_counts(spec, [len(b) for b in by_class])
    val = [members[torch.randperm(len(members), generator=generator)[:n]] for members, n in zip(by_class, counts)]
    val_t = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.long)
    return labeled[~torch.isin(labeled, val_t)], val_t


def _fold(train: ImageSet, labeled: torch.Tensor, fold: int, folds: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``fold`` (1-based) of a seeded, class-stratified k-fold partition of ``labeled`` validates; the
    other folds train. The partition depends on the seed only, so folds 1..k of one seed cover every label
    once. Each class's shuffled labels are dealt round-robin, continuing from where the previous class
    stopped, so folds differ in size by at most one and a class with ≥ 2 labels keeps one in training."""
    if folds < 2 or not 1 <= fold <= folds:
        raise SemivitError(f"data.val 'fold-{fold}-of-{folds}' needs 2 or more folds and 1 ≤ fold ≤ folds")
    if train.multilabel:  # dealt round-robin in a seeded order (no classes to stratify by)
        shuffled = labeled[torch.randperm(len(labeled), generator=generator)]
        val_t = torch.sort(shuffled[torch.arange(len(shuffled)) % folds == fold - 1]).values
        return labeled[~torch.isin(labeled, val_t)], val_t
    val, position = [], 0
    for c in range(train.num_classes):
        members = labeled[train.labels[labeled] == c]
        if len(members) < 2:
            continue  # a lone label always trains
        members = members[torch.randperm(len(members), generator=generator)]
        slots = (torch.arange(len(members)) + position) % folds
        val.append(members[slots == fold - 1])
        position += len(members)
    val_t = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.long)
    return labeled[~torch.isin(labeled, val_t)], val_t


def make_split(train: ImageSet, labels_spec: str = "all", val_spec: str = "auto", seed: int = 0) -> Split:
    """A seeded class-balanced split of ``train`` (see the module docstring)."""
    k = train.num_classes
    known = torch.nonzero(train.known()).flatten()
    if k == 0 or len(known) == 0:
        raise SemivitError("the training data has no labeled images: give a labeled source (class folders, "
                           "a CSV with labels) and add unlabeled images with --unlabeled")
    generator = torch.Generator().manual_seed(seed)
    labeled = _take_per_class(train.labels, known, labels_spec, k, generator, "--labels")
    return _with_unlabeled(train, *_carve_val(train, labeled, val_spec, generator))


def _carve_val(train: ImageSet, labeled: torch.Tensor, val_spec: str,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The training labels, the validation split and where it came from (see the module docstring)."""
    spec = val_spec.strip().lower()
    if spec.endswith(OF_LABELS):
        return *_hold_out(train, labeled, spec[: -len(OF_LABELS)], generator), VAL_HELD_OUT
    if m := _FOLD.fullmatch(spec):
        return *_fold(train, labeled, int(m.group(1)), int(m.group(2)), generator), VAL_HELD_OUT
    known = torch.nonzero(train.known()).flatten()
    rest = known[~torch.isin(known, labeled)]
    if spec == "auto" and train.multilabel:  # 10% of what is left, between one and 50 images per class
        k = train.num_classes
        spec = str(min(50 * k, max(k, len(rest) // 10))) if len(rest) >= k else "0"
    elif spec == "auto":
        per_class = min(int((train.labels[rest] == c).sum()) for c in range(train.num_classes))
        spec = _auto_val_spec(per_class) if per_class else "0"
    try:
        val = _take_per_class(train.labels, rest, spec, train.num_classes, generator, "data.val")
    except SemivitError as exc:
        if "cannot read" in str(exc):
            raise SemivitError(f"cannot read data.val '{val_spec}': {VAL_HELP}") from None
        raise
    return labeled, val, VAL_EXTRA


def _with_unlabeled(train: ImageSet, labeled: torch.Tensor, val: torch.Tensor, val_from: str = VAL_EXTRA) -> Split:
    everything = torch.arange(len(train))
    return Split(labeled, val, everything[~torch.isin(everything, val)], val_from if len(val) else VAL_NONE)


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
        # files written before val_from was recorded could only hold extra validation labels
        return _with_unlabeled(train, _indices_of(train, labeled, path), _indices_of(train, val, path),
                               str(data.get("val_from", VAL_EXTRA)))
    names = [line.strip().split()[0] for line in text.splitlines() if line.strip()]
    labeled = _indices_of(train, names, path)
    if not train.known()[labeled].all():
        raise SemivitError(f"list file '{path}' names unlabeled images: list labeled images only")
    return _with_unlabeled(train, *_carve_val(train, labeled, val_spec, torch.Generator().manual_seed(seed)))


def save_split(split: Split, train: ImageSet, path: str | Path, meta: dict) -> None:
    Path(path).write_text(json.dumps(split.to_json(train, meta)))


def steps_for_epochs(epochs: float, n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n_images / batch_size))
