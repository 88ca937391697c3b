"""``semivit demo``: supervised-only vs the Semi-ViT pipeline on digits with 4 labels per class.

Both rows use the same split, seed, model and augmentations; the supervised-only row trains on the 40
labels for as many steps as the pipeline's supervised + semi-supervised stages together. Writes
``results.csv`` (method, labels, test_top1, seconds), learning curves (PNG) and a self-contained HTML report
with each run's section of the per-run report.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from semivit.config import apply_overrides, load_yaml
from semivit.data import prepare_data
from semivit.engine.trainer import train
from semivit.pipeline import find_recipe, run_recipe, stage_configs

LABELS = "4-per-class"


def _curves(run_dirs: dict[str, list[Path]], out: Path) -> Path:
    from semivit.report.html import figure_png
    from semivit.report.plots import chained_curve

    path = out / "curves.png"
    path.write_bytes(figure_png(chained_curve(run_dirs), dpi=110))
    return path


def _write_report(rows: list[dict[str, Any]], out: Path, png: Path, runs: dict[str, Path] | None = None) -> None:
    """``results.csv`` and a self-contained ``report.html``: the table, the curves and each run's section of
    the per-run report (:mod:`semivit.report`)."""
    from semivit.report import render_sections
    from semivit.report.html import esc, page, png_bytes_uri, table

    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "labels", "test_top1", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    cells = table(["method", "labels", "test top-1", "seconds"],
                  [[r["method"], r["labels"], f"{r['test_top1']:.4f}", f"{r['seconds']:.0f}"] for r in rows])
    uri = png_bytes_uri(png.read_bytes())
    sections = "".join(f"<h1>{esc(name)}</h1>{render_sections(path)}" for name, path in (runs or {}).items())
    (out / "report.html").write_text(page("semivit demo", "<h1>semivit demo: digits, 4 labels per class</h1>"
                                          f"{cells}<p><img src='{uri}' alt='validation curves'></p>{sections}"))


def run_demo(out: Path = Path("runs/demo"), device: str = "auto", quick: bool = False) -> list[dict[str, Any]]:
    """Train both rows, print the table and write the report; returns the rows."""
    overrides: dict[str, Any] = {"data.source": "digits", "data.labels": LABELS, "train.device": device,
                                 "train.out": str(out), "train.overwrite": True}  # a demo runs again
    if quick:  # a smoke test of the whole path, not a result
        overrides["train.steps"] = 4
    _, stages = stage_configs(load_yaml(find_recipe("semivit")), overrides)
    data = prepare_data(stages[0].data, stages[0].train.seed)

    # supervised-only: the pipeline's fine-tuning settings, for the steps of stages 2 and 3 together (a new
    # config: the recipe's stage configs are never written)
    baseline = apply_overrides(stages[1], {"train.steps": sum(cfg.train.steps or 0 for cfg in stages[1:]),
                                           "model.pretrained": "none"})
    start = time.perf_counter()
    sup = train(baseline, data, out / "supervised")
    sup_seconds = time.perf_counter() - start

    start = time.perf_counter()
    semi = run_recipe("semivit", overrides, run_name="semivit")
    semi_seconds = time.perf_counter() - start

    # every label the runs consumed: the training labels and the validation labels that chose checkpoints
    n, n_val = len(data.split.labeled), len(data.split.val)
    labels = f"{n} + {n_val}" if n_val else str(n)
    rows = [{"method": "supervised-only", "labels": labels,
             "test_top1": round(sup.metrics["test_top1"], 4), "seconds": round(sup_seconds, 1)},
            {"method": "semivit (mae → supervised → ema_teacher + pseudo mixup)",
             "labels": labels, "test_top1": round(semi.metrics["test_top1"], 4),
             "seconds": round(semi_seconds, 1)}]
    stage_dirs = sorted((out / "semivit").glob("stage*"))
    png = _curves({"supervised-only": [out / "supervised"], "semivit": stage_dirs[1:]}, out)
    _write_report(rows, out, png, {"supervised-only": out / "supervised", "semivit": out / "semivit"})
    print(f"\n{'method':<58}{'labels (train + val)':>21}{'test top-1':>12}{'seconds':>9}")
    for r in rows:
        print(f"{r['method']:<58}{r['labels']:>21}{r['test_top1']:>12.4f}{r['seconds']:>9.0f}")
    print(f"\nreport: {out / 'report.html'}   table: {out / 'results.csv'}")
    return rows
