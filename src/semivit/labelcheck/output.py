"""What ``semivit labelcheck`` writes: a CSV a person reviews (and ``--accept`` merges back through
:mod:`semivit.labeling.merge`) and a contact sheet of the flagged images.

The CSV holds one row per flagged image, most likely wrong first: ``rank, path, index, given, suggested,
label, keep, quality, given_prob, suggested_prob``. ``label`` starts as the suggested class and ``keep``
empty: a reviewer looks at each image and sets ``keep`` to ``yes`` where the given label is wrong (correcting
``label`` where the suggestion is wrong too); only those rows are merged. ``keep`` is not pre-filled because
the flags are not precise enough to take unseen: with 10% of the labels flipped, only 23–29% of the flagged
labels were wrong (CIFAR-10's 250 labels, Fashion-MNIST's 100), and accepting every suggestion left more wrong
labels than before (benchmarks/RESULTS.md, issue 28).
"""

from __future__ import annotations

from pathlib import Path

import torch

from semivit.labelcheck.check import LabelIssues
from semivit.labeling.pool import Pool, image_files, write_table
from semivit.labeling.suggest import display_names

HEADER = ["rank", "path", "index", "given", "suggested", "label", "keep", "quality", "given_prob", "suggested_prob"]


def merged_name(pool: Pool) -> str:
    """Where corrected labels can go: a manifest when the images are files, else arrays (a ``--split``
    list or split file can only name images, not change their labels: see semivit.labeling.merge)."""
    return "labels.csv" if all(f is not None for f in image_files(pool.cfg, pool.train)) else "labels.npz"


def _name(pool: Pool, label: object, empty: str = "none") -> str:
    """A class's name, or a label set's ``a|b`` (multi-label data; ``empty`` for the empty set)."""
    if isinstance(label, tuple):
        return pool.class_name(label) or empty
    return pool.class_name(int(label))  # type: ignore[call-overload]


def write_csv(pool: Pool, issues: LabelIssues, path: str | Path) -> Path:
    """The flagged labels as the CSV described in the module docstring (multi-label data: a ``labels`` column of
    ``a|b``, what ``--accept`` reads there)."""
    names = display_names(pool)
    header = [("labels" if h == "label" and pool.train.multilabel else h) for h in HEADER]
    return write_table(path, header, (
        [n + 1, names[int(i)], int(i), _name(pool, issues.given[n]), _name(pool, issues.suggested[n]),
         _name(pool, issues.suggested[n], empty=""), "",
         f"{issues.quality[n]:.4f}", f"{issues.given_prob[n]:.4f}", f"{issues.suggested_prob[n]:.4f}"]
        for n, i in enumerate(issues.indices)))


def write_sheet(pool: Pool, issues: LabelIssues, path: str | Path, limit: int = 500) -> Path:
    """A self-contained HTML contact sheet of the flagged images, most likely wrong first (at most
    ``limit``; the CSV lists them all): each with its given label, the suggestion and the score."""
    from semivit.report.html import esc, grid, page, png_data_uri, tile

    path = Path(path)
    names = display_names(pool)
    shown = issues.indices[:limit]
    images = pool.train.get(torch.from_numpy(shown)) if len(shown) else []
    tiles = []
    for n, i in enumerate(shown):
        given, suggested = _name(pool, issues.given[n]), _name(pool, issues.suggested[n])
        caption = (f"#{n + 1} {esc(Path(names[int(i)]).name)}<br>given <b>{esc(given)}</b> "
                   f"{issues.given_prob[n]:.2f}<br>suggested <b>{esc(suggested)}</b> {issues.suggested_prob[n]:.2f}"
                   f"<br>quality {issues.quality[n]:.3f}")
        tiles.append(tile(png_data_uri(images[n]), caption, "warn", title=names[int(i)]))
    more = f" The {len(issues) - len(shown)} after the first {limit} are in the CSV only." \
        if len(issues) > len(shown) else ""
    title = "labels that are likely wrong"
    body = (f"<h1>{esc(title)}</h1><p>{len(issues)} of {issues.checked} labels of {esc(pool.cfg.data.source)} "
            f"flagged by confident learning (Cleanlab; Northcutt et al. 2021) on out-of-sample probabilities from "
            f"{esc(issues.source)}, most likely wrong first.{more} In the CSV beside this page set "
            "<code>keep</code> to <code>yes</code> where the given label is wrong (and correct <code>label</code> "
            "where the suggestion is wrong too); then merge it with <code>semivit labelcheck … --accept CSV -o "
            f"{merged_name(pool)}</code>.</p>" + grid(tiles))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, body))
    return path
