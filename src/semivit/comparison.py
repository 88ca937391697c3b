"""``semivit compare``: does my unlabeled data help, on my data, with my backbone, at my budget?

Users of pretrained backbones keep asking whether semi-supervised training would beat fine-tuning on their
labels alone; recent studies find that on strong backbones it often does not, so the answer depends on the data.
``compare`` answers it on the user's own data: it is ``semivit bench`` with a suite built from the command line
(one data set, one label set, the seeds), whose rows are

- ``linear-probe``: a linear head on the frozen backbone's cached features, trained on the labels alone
  (``frozen-fixmatch``'s first stage);
- ``fine-tuning``: the whole network fine-tuned on the labels alone (the ``full-supervised`` recipe:
  ``full-semivit``'s first stage, with the CPU-sized batch and learning rate of the full fine-tuning recipes);
- ``frozen-fixmatch`` and ``partial-semivit``: the semi-supervised paths that fit a CPU (FixMatch on the frozen
  backbone's cached features; the EMA-Teacher with the backbone's last block trained too); ``--rows`` adds
  ``partial-fixmatch``, ``frozen-semivit`` and the full fine-tuning paths ``full-semivit`` and ``full-fixmatch``.

Every row gets the same budget (``--budget``: at most that wall-clock time, its recipe's own steps when they
fit, else its stages shrunk to fit as ``semivit run --budget`` plans them — a head tuned for 1,000 steps is not run
for a hundred times more; or ``--steps``: the same number of optimizer steps), the same backbone at the same input
resolution, and the same labels: a validation split is carved out of them (``--val``, 20% by default), so every
row consumes exactly the user's labels. The recommendation reads the validation accuracy only; the test accuracy,
when the data has a test part, is reported beside it.

Examples:
    >>> suite = compare_suite("~/images", "10%", model="local-dir:lite0-hub", budget="30m")
    >>> sorted(suite.methods)
    ['fine-tuning', 'frozen-fixmatch', 'linear-probe', 'partial-semivit']
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from semivit.bench import finished_rows, run_suite, suite_from_dict
from semivit.bench_report import METRIC_NAMES, row_metric
from semivit.bench_suite import Suite
from semivit.core.io import atomic_write
from semivit.errors import SemivitError
from semivit.planning import parse_budget

#: the rows: the two labels-only baselines first, then the semi-supervised paths
ROWS: dict[str, dict[str, Any]] = {
    "linear-probe": {"recipe": "frozen-fixmatch", "stages": 1},
    "fine-tuning": {"recipe": "full-supervised"},
    "frozen-fixmatch": {"recipe": "frozen-fixmatch"},
    "partial-fixmatch": {"recipe": "partial-fixmatch"},
    "partial-semivit": {"recipe": "partial-semivit"},
    "frozen-semivit": {"recipe": "frozen-semivit"},
    "full-semivit": {"recipe": "full-semivit"},
    "full-fixmatch": {"recipe": "full-fixmatch"},
}
#: the rows run when none are named: the baselines and the best path of each kind on CIFAR-10's validation split
DEFAULT_ROWS = ("linear-probe", "fine-tuning", "frozen-fixmatch", "partial-semivit")
BASELINES = ("linear-probe", "fine-tuning")


def compare_suite(data: str, labels: str | None, *, model: str, budget: str | float | None = "30m",
                  steps: int | None = None,
                  split: str | None = None, test: str | None = None, seeds: list[int] | None = None,
                  val: str = "20%-of-labels", resolution: str = "96", rows: list[str] | None = None,
                  settings: dict[str, Any] | None = None, out: str = "runs/compare",
                  name: str = "compare") -> Suite:
    """The suite ``compare`` runs: ``rows`` (default :data:`DEFAULT_ROWS`) on one data set and label set, each
    path planned to fit ``budget`` (wall-clock), or, with ``steps``, given that many optimizer steps over its
    stages (USB's equal-steps rule)."""
    if not model or model == "auto":
        raise SemivitError("compare measures what a pretrained backbone gains from your unlabeled images: name it "
                           "with --model (a hub name, local-dir:FOLDER, or an architecture with --pretrained FILE)")
    chosen = rows or list(DEFAULT_ROWS)
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        raise SemivitError(f"unknown compare rows {unknown}: use some of {', '.join(ROWS)}")
    dataset: dict[str, Any] = {"source": data, "labels": [labels or "all"]}
    for key, value in (("split", split), ("test", test)):
        if value:
            dataset[key] = value
    # a cap, not a target: a path whose recipe fits runs its own (validation-chosen) steps, as `run auto` does
    plan = {"steps": steps} if steps else {"cap": parse_budget(budget or "30m")}
    raw = {"name": name, "out": out, "seeds": seeds or [0, 1, 2], "budget": plan,
           "set": {"model.name": model, "model.resolution": resolution, "data.val": val,
                   **(settings or {})},
           "data": {"data": dataset}, "methods": {r: dict(ROWS[r]) for r in chosen}}
    return suite_from_dict(raw, Path(f"compare:{name}"))


def compare_table(suite: Suite, root: Path) -> tuple[str, str]:
    """The markdown table of a finished compare (one row per path: labels, validation and test top-1 as mean ±
    std over seeds, the gain over the best labels-only baseline, optimizer steps, training images/s — cached
    feature vectors for the heads — and wall time) and the one-line recommendation."""
    cells = finished_rows(suite, root)
    if not cells:
        raise SemivitError(f"no finished cell in {root}: run the comparison first")
    by_row: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        by_row.setdefault(cell["method"], []).append(cell)
    stats = {name: _row_stats(rs) for name, rs in by_row.items()}
    base = best_on_validation(stats, baselines=True)
    name = METRIC_NAMES[next(iter(stats.values()))["metric"]]
    lines = [f"| path | labels (train + val) | val {name} | test {name} | test gain over " +
             (f"{base} (points)" if base else "the baseline") + " | seeds | steps | images/s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in [n for n in ROWS if n in stats]:
        s = stats[name]
        gain = "—" if base is None or s["test"] is None or stats[base]["test"] is None else \
            f"{100 * (s['test'][0] - stats[base]['test'][0]):+.1f}"
        lines.append(f"| {name} | {s['labels']} | {_fmt(s['val'])} | {_fmt(s['test'])} | {gain} | {s['seeds']} | "
                     f"{s['steps']:.0f} | {s['images_per_sec']:.0f} | {s['wall']:.0f} |")
    return "\n".join(lines) + _cache_note(root), recommend(stats)


def _cache_note(root: Path) -> str:
    """The feature caches built before the rows (bench_cache.embed_once): one cost, shared by every row and seed
    that reads it, so not in their wall times."""
    path = root / "embedding.json"
    records = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if r.get("images")]
    if not records:
        return ""
    return "\n\none-time feature caches, shared by the rows that read them and not in their wall times: " + \
        "; ".join(f"{r['cache']}: {r['images']:,} images and views in {r['seconds']:.0f} s" for r in records)


def _row_stats(cells: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float, float] | None:
        values = [float(c[key]) for c in cells if c.get(key) is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    first = cells[0]
    metric = row_metric(first)  # mAP for label sets
    return {"val": mean_std(f"val_{metric}") or (float("nan"), 0.0), "test": mean_std(f"test_{metric}_last"),
            "metric": metric,
            "seeds": len(cells), "wall": statistics.fmean(c["wall_seconds"] for c in cells),
            # training images (or cached feature vectors, for the heads) per second, over every stage
            "steps": statistics.fmean(c.get("steps", 0) for c in cells),
            "images_per_sec": statistics.fmean(c.get("images_per_sec", 0.0) for c in cells),
            "labels": f"{first.get('labeled', '?')} + {first.get('val_labeled', '?')}"}


def _fmt(value: tuple[float, float] | None) -> str:
    return "—" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def best_on_validation(stats: dict[str, dict[str, Any]], baselines: bool) -> str | None:
    """The row with the best mean validation top-1 among the labels-only baselines (or the other rows)."""
    names = [n for n in stats if (n in BASELINES) == baselines]
    return max(names, key=lambda n: stats[n]["val"][0], default=None)


def recommend(stats: dict[str, dict[str, Any]]) -> str:
    """One line from the validation accuracies: the best semi-supervised path against the best labels-only
    baseline, and whether its gain is larger than the seeds' spread (the larger of the two rows' std)."""
    base, semi = best_on_validation(stats, baselines=True), best_on_validation(stats, baselines=False)
    if base is None or semi is None:
        return "recommendation: needs a labels-only baseline and a semi-supervised row"
    gain = stats[semi]["val"][0] - stats[base]["val"][0]
    spread = max(stats[semi]["val"][1], stats[base]["val"][1])
    if gain > spread and gain > 0:
        return (f"recommendation: use {semi} — your unlabeled images help: +{100 * gain:.1f} points over {base} on "
                f"validation (seed spread {100 * spread:.1f})")
    return (f"recommendation: use {base} — at this budget your unlabeled images do not help beyond the seeds' "
            f"spread: {semi} {100 * gain:+.1f} points on validation (spread {100 * spread:.1f})")


def run_compare(suite: Suite, jobs: int = 1) -> tuple[Path, str, str]:
    """Run (or continue: finished cells are kept) the comparison; returns its folder, table and recommendation,
    also written to ``compare.md`` there."""
    root = run_suite(suite, jobs=jobs)
    table, line = compare_table(suite, root)
    atomic_write(root / "compare.md", lambda tmp: Path(tmp).write_text(f"{table}\n\n{line}\n"))
    return root, table, line
