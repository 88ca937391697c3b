"""The tables, plots and HTML report of a benchmark suite (``semivit bench``): rows of finished cells summarised
per data set, label count and method (mean ± std over seeds), with every label a cell consumed. Kept apart from
:mod:`semivit.bench`, which defines and runs the cells."""

from __future__ import annotations

import csv
import logging
import statistics
from pathlib import Path
from typing import Any

from semivit.bench_suite import Suite

log = logging.getLogger("semivit")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


#: how each score a row can hold is named in tables
METRIC_NAMES = {"top1": "top-1", "map": "mAP"}


def row_metric(row: dict[str, Any]) -> str:
    """The score a bench row holds: ``map`` for label sets, ``top1`` otherwise (rows from before the field)."""
    return row.get("metric") or "top1"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data, labels, method): mean and std over seeds of its score (``metric``: top-1, or mAP for
    label sets)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["labels"], r["method"]), []).append(r)
    out = []
    for (dname, labels, method), rs in groups.items():
        metric = row_metric(rs[0])
        last = _mean_std([float(r[f"test_{metric}_last"]) for r in rs])
        best = _mean_std([float(r[f"test_{metric}_best"]) for r in rs])
        out.append({"data": dname, "labels": labels, "method": method, "seeds": len(rs),
                    "labels_per_class": rs[0]["labels_per_class"], **_labels_used(rs), "metric": metric,
                    "score_last_mean": last[0], "score_last_std": last[1],
                    "score_best_mean": best[0], "score_best_std": best[1],
                    "images_per_sec": statistics.fmean(r["images_per_sec"] for r in rs),
                    "pseudo_acc": _mean_or_none([r.get("pseudo_acc") for r in rs]),
                    "wall_seconds": statistics.fmean(r["wall_seconds"] for r in rs),
                    "steps": rs[0]["steps"], **_skew_scores(rs)})
    return out


def _skew_scores(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Balanced accuracy and macro-F1 of the last weights (mean, std over seeds) where the cells recorded them:
    the test classes are skewed (engine/evaluate.is_skewed), and top-1 alone rewards leaning to the majority."""
    out: dict[str, float | None] = {}
    for key, name in (("test_balanced_accuracy", "balanced"), ("test_macro_f1", "macro_f1")):
        values = [r.get(key) for r in rows]
        known = None if any(v in (None, "") for v in values) else _mean_std([float(v) for v in values])
        out[f"{name}_mean"], out[f"{name}_std"] = known if known else (None, None)
    return out


def _mean_or_none(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v not in (None, "")]
    return statistics.fmean(known) if known else None


def _labels_used(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The labels a group's cells consumed (training, validation, total). The seeds of one row draw the same
    counts; should they differ (a percentage of a data set whose classes change size...), the largest is
    shown, so that a row never claims fewer labels than it used. Cells from before the counts were recorded
    give None (unknown)."""
    def most(key: str) -> Any:
        values = [r.get(key) for r in rows]
        return None if any(v in (None, "") for v in values) else max(int(v) for v in values)

    froms = {r.get("val_from") for r in rows} - {None, ""}
    return {"labeled": most("labeled"), "val_labeled": most("val_labeled"), "labels_total": most("labels_total"),
            "val_from": "/".join(sorted(froms)) or None}


def _labels_cell(s: dict[str, Any]) -> str:
    """'90 (40 + 50)': the labels a row consumed (training + validation), '?' where unknown."""
    def show(v: Any) -> str:
        return "?" if v is None else str(v)

    return f"{show(s.get('labels_total'))} ({show(s.get('labeled'))} + {show(s.get('val_labeled'))})"


def _columns(metric: str = "top1") -> list[str]:
    name = METRIC_NAMES[metric]
    return ["method", "labels (train + val)", f"test {name} (last)", f"test {name} (best val)",
            "pseudo-label acc", "seeds", "steps", "images/s", "wall s"]


def _intro(suite: Suite) -> list[str]:
    budget = ", ".join(f"{k} {v:g}" for k, v in suite.budget.items())
    return [f"Default budget per cell: {budget} (data sets or methods may set their own: see the suite). "
            "Labels: every labeled image a cell consumed, training + validation (data.val `auto` validates "
            "on labeled images beyond the row's labels; `20%-of-labels` holds them out of the row's labels). "
            "Test top-1 (mAP for data with several labels per image) of the final weights (last) and of the "
            "best-validation weights (best), mean ± std "
            "over seeds; pseudo-label accuracy against the hidden labels over the last logged steps (— : the "
            "method makes none; near chance = collapse); images/s of training (all stages); wall seconds per cell.",
            *(f"Skipped: {dname} ({why})." for dname, why in suite.skipped.items())]


def _tables(suite: Suite, summary: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]], int]]:
    """Per (data, labels): a title, the columns (:func:`_columns` of its score), the rows in the suite's method
    order, and the index of the row with the best last-weights score."""
    order = list(suite.methods)
    by_data: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summary:
        by_data.setdefault((s["data"], s["labels"]), []).append(s)
    out = []
    for (dname, labels), ss in by_data.items():
        ss.sort(key=lambda s: order.index(s["method"]) if s["method"] in order else len(order))
        top = max(range(len(ss)), key=lambda i: ss[i]["score_last_mean"])
        rows = [[s["method"], _labels_cell(s), _spread_cell(s["score_last_mean"], s["score_last_std"], s["seeds"]),
                 _spread_cell(s["score_best_mean"], s["score_best_std"], s["seeds"]),
                 "—" if s.get("pseudo_acc") in (None, "") else f"{float(s['pseudo_acc']):.3f}",
                 str(s["seeds"]), str(s["steps"]),
                 f"{s['images_per_sec']:.0f}", f"{s['wall_seconds']:.0f}"] for s in ss]
        columns = _columns(row_metric(ss[0]))
        if any(s.get("balanced_mean") is not None for s in ss):  # skewed test classes: beside top-1
            columns[4:4] = ["balanced acc (last)", "macro-F1 (last)"]
            for row, s in zip(rows, ss):
                row[4:4] = ["—" if s.get(f"{k}_mean") is None else _spread_cell(s[f"{k}_mean"], s[f"{k}_std"],
                                                                                  s["seeds"])
                            for k in ("balanced", "macro_f1")]
        out.append((f"{dname}, {labels} labels", columns, rows, top))
    return out


def _spread_cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if int(seeds) > 1 else f"{mean:.4f}"  # one seed: no spread to show


def markdown_table(suite: Suite, summary: list[dict[str, Any]]) -> str:
    lines = [f"# Suite {suite.name}", ""]
    for paragraph in _intro(suite):
        lines += [paragraph, ""]
    for title, columns, rows, top in _tables(suite, summary):
        lines += [f"## {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        for i, row in enumerate(rows):
            cells = [f"**{c}**" if i == top and k == 2 else c for k, c in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def html_report(suite: Suite, summary: list[dict[str, Any]], root: Path) -> Path:
    """``root/report.html``: the tables of :func:`markdown_table` and the label-efficiency plots, inline."""
    from semivit.report.html import esc, page, plot_img, png_bytes_uri, table

    body = [f"<h1>semivit bench: {esc(suite.name)}</h1>", *(f"<p>{esc(p)}</p>" for p in _intro(suite))]
    for title, columns, rows, _ in _tables(suite, summary):
        body += [f"<h2>{esc(title)}</h2>", table(columns, rows)]
    for png in sorted(root.glob("label-efficiency-*.png")):
        body.append(f"<p>{plot_img(png_bytes_uri(png.read_bytes()), png.stem)}</p>")
    path = root / "report.html"
    path.write_text(page(f"semivit bench: {suite.name}", "".join(body)))
    return path


def label_efficiency_plot(summary: list[dict[str, Any]], dname: str, methods: list[str], path: Path) -> None:
    """Test top-1 (mAP for label sets; last weights, mean ± std over seeds) against labels per class (log x), one
    line per method; written as PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [s for s in summary if s["data"] == dname]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(m for m in methods if any(s["method"] == m for s in pts)):
        line = sorted((s for s in pts if s["method"] == method), key=lambda s: s["labels_per_class"])
        ax.errorbar([s["labels_per_class"] for s in line], [s["score_last_mean"] for s in line],
                    yerr=[s["score_last_std"] for s in line], capsize=3, label=method,
                    # the colour cycle has 10 colours: later methods differ by line and marker
                    linestyle="-" if i < 10 else "--", marker="o" if i < 10 else "s")
    xs = sorted({s["labels_per_class"] for s in pts})
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set(xlabel="training labels per class", ylabel=f"test {METRIC_NAMES[row_metric(pts[0])]}",
           title=f"{dname}: label efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(path.with_suffix(f".{ext}"), dpi=110)
    plt.close(fig)


def write_reports(suite: Suite, rows: list[dict[str, Any]], root: Path) -> None:
    if not rows:
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "results.csv", "w", newline="") as f:
        # every key of every row: cells finished by an older version lack the newer columns (left empty)
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (root / "table.md").write_text(markdown_table(suite, summary) + "\n")
    for dname in {s["data"] for s in summary}:
        label_efficiency_plot(summary, dname, list(suite.methods), root / f"label-efficiency-{dname}")
    html_report(suite, summary, root)
