"""Tables of issue 28's open-set runs: closed-set test top-1 on the known classes and the AUROC of unknown vs
known on the whole test set, mean ± std over seeds.

    python benchmarks/openset/summarize.py runs/openset/cifar10 [runs/openset/fmnist]

A run folder holds recipe stages (``RECIPE-sSEED/stageN-METHOD``) or single runs (``METHOD-sSEED``). Each
stage's ``results.json`` gives ``test_top1`` (semivit skips test labels −1, so it is the top-1 on the known
classes); the AUROC is OpenMatch's ``test_openset_auroc`` (its outlier score), and for every method the
maximum-softmax-probability baseline, 1 − max p, from ``test_report.json``'s per-image confidences against the
test labels (−1 = unknown class).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def row_of(stage: Path, unknown: np.ndarray) -> dict[str, float] | None:
    res, rep = stage / "results.json", stage / "test_report.json"
    if not res.is_file() or not rep.is_file():
        return None
    results, report = json.loads(res.read_text()), json.loads(rep.read_text())
    conf = np.array(report["predictions"]["confidence"])
    out = {"top1": results["test_top1"], "auroc_msp": float(roc_auc_score(unknown, 1 - conf))}
    if "test_openset_auroc" in results:
        out["auroc_ova"] = results["test_openset_auroc"]
    if "test_openset_auroc_knn" in results:  # nearest-neighbour scores (engine/outliers.py), from session 17
        out["auroc_knn"] = results["test_openset_auroc_knn"]
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> int:
    for root in map(Path, sys.argv[1:]):
        npz = {"cifar10": "runs/openset/cifar10-6of10.npz", "fmnist": "runs/openset/fmnist-6of10.npz"}[root.name]
        unknown = np.load(npz)["y_test"] < 0
        rows: dict[str, list[dict[str, float]]] = defaultdict(list)
        for results in sorted(root.glob("**/results.json")):
            stage = results.parent
            if stage.name.startswith("stage"):  # a recipe's stage: named by its path (frozen-, partial-) and method
                recipe = stage.parent.name.rsplit("-s", 1)[0]
                name = f"{recipe.split('-')[0]} {stage.name.split('-', 1)[1]}"
                if stage.name.startswith("stage1") and not recipe.endswith("-fixmatch"):
                    continue  # every recipe of a path starts from the same labels-only stage: count it once
            else:
                name = stage.name.rsplit("-s", 1)[0]
            row = row_of(stage, unknown)
            if row is not None:
                rows[name].append(row)
        print(f"\n{root} (n seeds per row)\n| method | closed-set top-1 (6 known) | AUROC, OVA outlier score | "
              f"AUROC, 1 − max softmax | AUROC, k-NN | n |\n|---|---|---|---|---|---|")
        for name, rs in rows.items():
            ova = fmt([r["auroc_ova"] for r in rs if "auroc_ova" in r])
            knn = fmt([r["auroc_knn"] for r in rs if "auroc_knn" in r])
            top1, msp = fmt([r["top1"] for r in rs]), fmt([r["auroc_msp"] for r in rs])
            print(f"| {name} | {top1} | {ova} | {msp} | {knn} | {len(rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
