"""How ``label_choice.py --linear`` chose its one classifier setting: on digits only, with 360 training images
held out of the pool as a validation split (their labels score the setting, never choose images), every
selection of the benchmark (random and TypiClust, 10 / 20 / 40 labels, seeds 0-2) on both embeddings (raw
pixels and the MAE stage), for standardised vs L2-normalised features and C from 0.1 to 10,000.

    OMP_NUM_THREADS=1 python benchmarks/labeling/linear_setting.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import label_choice as lc  # noqa: E402

from semivit.data import prepare_data  # noqa: E402
from semivit.labeling import select  # noqa: E402

HELD_OUT = 360


def main() -> int:
    bundle = prepare_data(lc.configs("digits", 0)[1].data, 0).bundle
    y = bundle.train.labels.numpy()
    order = np.random.default_rng(0).permutation(len(y))
    val, pool = order[:HELD_OUT], np.sort(order[HELD_OUT:])
    none = np.zeros(0, dtype=np.int64)
    print("| embedding | features | C | validation top-1 (mean of 18 selections) |\n|---|---|---|---|")
    for encoder in lc.LINEAR_ENCODERS:
        emb, _ = lc.frozen_features("digits", encoder, bundle)
        chosen = []
        for seed, per_class, strategy in itertools.product(range(3), lc.PER_CLASS, ("random", "typiclust")):
            if strategy == "random":
                idx, _, _ = select.random_choice(none, pool, per_class * 10, seed)
            else:
                idx, _, _ = select.typiclust(emb, none, pool, per_class * 10, seed, select.duplicate_radius(emb, seed))
            chosen.append(idx)
        for standardise, c in itertools.product((True, False), (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)):
            accs = [lc.linear_top1(emb[i], y[i], emb[val], y[val], c, standardise) for i in chosen]
            print(f"| {encoder} | {'standardised' if standardise else 'L2-normalised'} | {c:g} | "
                  f"{np.mean(accs):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
