"""What ``semivit suggest`` and ``semivit pseudolabels`` do, behind the thin parsers in :mod:`semivit.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semivit.config import Config, apply_overrides
from semivit.errors import SemivitError
from semivit.labeling.merge import merge_labels, merged_name, read_labels
from semivit.labeling.pool import Pool, pool_from_data, pool_from_run


def make_pool(run: str | None, data: str | None = None, *, test: str | None = None, unlabeled: str | None = None,
              labels: str = "all", split: str | None = None, seed: int = 0,
              settings: dict[str, Any] | None = None) -> Pool:
    """The pool of a run (``run``), or of a data source (``data``, with ``labels``/``split`` saying which of
    its labels count as known)."""
    if run and data:
        raise SemivitError("pass a run folder or --data, not both (a run already names its data)")
    if run:
        pool = pool_from_run(run)
        pool.origin = str(pool.run_dir)
        return pool
    if not data:
        raise SemivitError("nothing to choose from: pass a run folder (runs/NAME) or --data (a folder, CSV, "
                           ".npz or built-in name)")
    values: dict[str, Any] = {"data.source": data, "data.test": test, "data.unlabeled": unlabeled, "train.seed": seed}
    cfg = apply_overrides(Config(), {**{k: v for k, v in values.items() if v is not None}, **(settings or {})})
    pool = pool_from_data(cfg, labels=labels, split=split)
    # the arguments that rebuild this pool, for the commands printed after it
    pool.origin = " ".join(f"{flag} {value}" for flag, value in (
        ("--data", data), ("--test", test), ("--unlabeled", unlabeled), ("--split", split),
        ("--labels", None if split or labels == "all" else labels)) if value)
    return pool


def accept(pool: Pool, labels_csv: str, out: str | None) -> str:
    """Merge the labels in ``labels_csv`` into ``out``; returns the lines to print."""
    if not out:
        raise SemivitError("--accept needs -o FILE for the merged labels: labels.csv (a manifest), labels.txt "
                           "(a --split list), labels.json or labels.npz")
    new = read_labels(labels_csv, pool)
    if not new:
        column = "labels' column (a|b" if pool.train.multilabel else "label' column"
        raise SemivitError(f"'{labels_csv}' has no labeled rows: fill in the '{column} (and 'keep' = yes for "
                           "pseudo-labels to accept) first")
    changed = sum(1 for i, name in new.items() if i in pool.known and pool.class_name(pool.known[i]) != name)
    path, next_args = merge_labels(pool, new, out)
    total = len(set(pool.known) | set(new))
    lines = [f"merged {len(new)} new label(s) with {len(pool.known)} known: {total} labeled images in {path}"]
    if changed:
        lines.append(f"{changed} label(s) replace the ones the data had (yours win)")
    lines.append(f"next: semivit train {next_args}   (or: semivit run RECIPE {next_args})")
    return "\n".join(lines)


def suggest_command(pool: Pool, budget: int | None, out: str, *, html: bool = True, **options: Any) -> str:
    """Choose ``budget`` images, write the CSV (and its contact sheet beside it); returns the lines to print."""
    from semivit.labeling.suggest import hidden_coverage, suggest, write_csv, write_sheet

    if budget is None:
        raise SemivitError("how many images to suggest? pass --budget N")
    s = suggest(pool, budget, **options)
    csv_path = write_csv(pool, s, out)
    lines = [f"chose {len(s)} of {len(pool.candidates)} unlabeled images ({s.strategy}): {csv_path}"]
    if html:
        lines.append(f"contact sheet: {write_sheet(pool, s, Path(out).with_suffix('.html'))}")
    coverage = hidden_coverage(pool, s)
    if coverage:
        lines.append(f"the hidden labels of the chosen images cover {coverage[0]} of {coverage[1]} classes")
    column = "labels column (a|b)" if pool.train.multilabel else "label column"
    lines.append(f"fill in the {column}, then: semivit suggest {pool.origin} --accept {csv_path} "
                 f"-o {merged_name(pool)}")
    return "\n".join(lines)


def pseudolabels_command(pool: Pool, out: str, *, html: bool = False, threshold: float | None = None,
                         per_class: int = 120, device: str = "cpu") -> str:
    from semivit.labeling import pseudo, pseudo_multilabel
    from semivit.report.runs import resolve_device

    if pool.train.multilabel:  # label sets, each class settled or unsure (labeling/pseudo_multilabel.py)
        m = found = pseudo_multilabel.multilabel_pseudo_labels(pool, threshold, resolve_device(device))
        path = pseudo_multilabel.write_multilabel_csv(pool, m, out)
        lines = [f"{len(m.indices)} pseudo-label sets, {int(m.passes.sum())} with every class settled "
                 f"(p ≥ {m.positive:g} or ≤ {m.negative:g}): {path}"]
        sheet = pseudo_multilabel.write_multilabel_sheet if html else None
        summary, column = pseudo_multilabel.multilabel_review_summary(pool, m), "labels"
    else:
        p = found = pseudo.pseudo_labels(pool, threshold, resolve_device(device))
        path = pseudo.write_csv(pool, p, out)
        lines = [f"{len(p.indices)} pseudo-labels, {int(p.passes.sum())} pass τ = {p.threshold:g}: {path}"]
        sheet = pseudo.write_sheet if html else None
        summary, column = pseudo.review_summary(pool, p), "label"
    if sheet is not None:
        lines.append(f"contact sheet: {sheet(pool, found, Path(out).with_suffix('.html'), per_class)}")  # type: ignore
    if summary:
        lines.append("against the hidden labels: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}"
                                                               for k, v in summary.items()))
    lines.append(f"review (correct '{column}', set 'keep'), then: semivit pseudolabels {pool.run_dir} --accept {path} "
                 f"-o {merged_name(pool)}")
    return "\n".join(lines)
