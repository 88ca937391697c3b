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
            name = stage.name.split("-", 1)[1] if stage.name.startswith("stage") else stage.name.rsplit("-s", 1)[0]
            if stage.name.startswith("stage1") and not stage.parent.name.startswith("frozen-fixmatch"):
                continue  # every recipe's stage 1 is the same labels-only head: count it once
            row = row_of(stage, unknown)
            if row is not None:
                rows[name].append(row)
        print(f"\n{root} (n seeds per row)\n| method | closed-set top-1 (6 known) | AUROC, outlier score | "
              f"AUROC, 1 − max softmax | n |\n|---|---|---|---|---|")
        for name, rs in rows.items():
            ova = fmt([r["auroc_ova"] for r in rs if "auroc_ova" in r])
            top1, msp = fmt([r["top1"] for r in rs]), fmt([r["auroc_msp"] for r in rs])
            print(f"| {name} | {top1} | {ova} | {msp} | {len(rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
