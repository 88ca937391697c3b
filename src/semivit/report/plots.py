"""The report's figures (matplotlib, Agg): learning curves, per-class accuracy, confusion matrix,
reliability diagram, ROC curve. Each returns a figure; :func:`semivit.report.html.figure_data_uri` inlines it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` with their numeric values (empty cells dropped)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    continue
            if "step" in values:
                rows.append(values)
    return rows


#: the learning-curve panels: title, y label, which metrics.csv columns each holds
PANELS: list[tuple[str, str, Any]] = [
    ("losses", "loss", lambda k: k.startswith("train/") and "loss" in k),
    ("validation", "top-1", lambda k: k.startswith(("val/", "test/")) and ("top1" in k)),
    ("pseudo-labels", "ratio", lambda k: k in ("train/mask", "train/mask_unmixed", "train/pseudo_acc",
                                                 "train/pseudo_recall", "train/teacher_acc")),
    ("gate", "value", lambda k: k.startswith("gate/")),
]


def curve_figures(rows: list[dict[str, float]]) -> list[tuple[str, Any]]:
    """One figure per panel of :data:`PANELS` that has data: each column against the step."""
    plt = _plt()
    keys = sorted({k for r in rows for k in r if k != "step"})
    out = []
    for title, ylabel, wanted in PANELS:
        cols = [k for k in keys if wanted(k)]
        if not cols:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        for col in cols:
            pts = [(r["step"], r[col]) for r in rows if col in r]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=col)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((title, fig))
    return out


def chained_curve(series: dict[str, list[Path]], column: str = "val/top1") -> Any:
    """``column`` of several runs in one plot; a run given as several stage folders is drawn as one line,
    each stage continuing at the step where the previous ended (the demo's pipeline against its baseline)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, dirs in series.items():
        offset, xs, ys = 0.0, [], []
        for d in dirs:
            rows = read_metrics(d / "metrics.csv")
            xs += [offset + r["step"] for r in rows if column in r]
            ys += [r[column] for r in rows if column in r]
            offset += max((r["step"] for r in rows), default=0.0)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("step (stages in sequence)")
    ax.set_ylabel(column.replace("val/top1", "validation top-1"))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def per_class_figure(per_class: dict[str, float], ylabel: str = "test accuracy",
                     title: str = "per-class accuracy") -> Any:
    plt = _plt()
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names) + 1.5), 3.2))
    ax.bar(range(len(names)), [per_class[n] for n in names], color="#4a7fb5")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center",
                       fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str]) -> Any:
    """Rows: true class, columns: predicted; colour = share of the row, numbers = counts (up to 20 classes)."""
    plt = _plt()
    m = np.asarray(confusion, dtype=np.float64)
    k = len(m)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = min(9.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ticks = range(k) if k <= 40 else range(0, k, max(1, k // 20))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.set_xticklabels([classes[i] for i in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels([classes[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, ece: float, bins: int = 15) -> Any:
    """Accuracy against confidence in equal-width bins (Guo et al. 2017, Fig. 1), the diagonal being perfect
    calibration; bar width = bin, the gap to the diagonal is what ECE averages."""
    plt = _plt()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] bins
    acc = np.array([correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    count = np.bincount(which, minlength=bins)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, np.nan_to_num(acc), width=1 / bins, edgecolor="#234", color="#4a7fb5", alpha=0.85,
           label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f}, n={int(count.sum())})")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def roc_figure(scores: np.ndarray, positives: np.ndarray, auc: float, positive_name: str) -> Any:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(positives.astype(int), scores)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot(fpr, tpr, color="#c0392b", label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC ('{positive_name}' positive)")
    ax.legend(loc="lower right")
    return fig
