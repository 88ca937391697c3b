"""Issue 28: the nearest-neighbour outlier score (semivit.engine.outliers, deep k-NN of Sun et al. 2022) on the
frozen backbone's cached features of the CIFAR-10 open-set protocol: AUROC of unknown against known, on the test
set and on the unlabeled pool, for each seed's labeled split, at the default k (the paper's k = 50 per 50,000,
scaled: 1 for 300 labels) and, for the record, at other k (not used to choose anything).

The features of a frozen backbone do not change with the method, so one number per seed covers frozen-fixmatch,
frozen-semivit and frozen-openmatch (each run now writes the same scores itself: train.outliers=auto).

    python benchmarks/openset/knn_auroc.py runs/openset/cifar10   # reads RECIPE-sS/stage2-*/config.yaml
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from semivit.config import Config, apply_overrides, load_yaml
from semivit.engine.evaluate import roc_auc
from semivit.engine.outliers import default_k, knn_outlier_scores
from semivit.engine.trainer import Trainer


def main(root: Path) -> None:
    rows: dict[int, list[float]] = {}
    for seed in (0, 1, 2):
        runs = sorted(root.glob(f"frozen-openmatch-s{seed}/stage2-*"))
        if not runs:
            continue
        cfg = apply_overrides(Config(), {**load_yaml(runs[0] / "config.yaml"), "train.out": "/tmp/knn-auroc",
                                         "train.resume": False, "train.overwrite": True})
        trainer = Trainer(cfg)  # reads the cache: nothing is embedded
        feats, data = trainer.inputs.feats, trainer.data
        bank = feats.train["none"][data.split.labeled]
        pool = data.split.unlabeled
        line = []
        for k in (default_k(len(bank)), 5, 10, 50):
            test = roc_auc(knn_outlier_scores(bank, feats.test, k), data.test.labels < 0)
            unl = roc_auc(knn_outlier_scores(bank, feats.train["none"][pool], k), data.train.labels[pool] < 0)
            rows.setdefault(k, []).append(test)
            line.append(f"k={k}: test {test:.3f} pool {unl:.3f}")
        print(f"seed {seed} ({len(bank)} labeled): " + "; ".join(line))
    for k, values in rows.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"k={k}: test AUROC {statistics.fmean(values):.3f} ± {sd:.3f} over {len(values)} seeds")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/openset/cifar10"))
