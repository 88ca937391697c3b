"""A long-tailed 10-class set, CIFAR-10-LT style (Cui et al. 2019; the profile DARP, DASO and ACR use), as a
Keras-style ``.npz`` a user could hold (issue 28).

    python benchmarks/imbalanced/make_lt.py --ratio 10 --out runs/imbalanced/cifar10-lt10.npz

The training part keeps n_c = ⌊n_max · ratio^(−c/9)⌋ images of class c (c = 0 … 9 in CIFAR-10's class order,
airplane the head, truck the tail), the first n_c of each class in the source's order, so the ratio-100 set
is a subset of the ratio-10 one; the test part stays balanced (all 10,000 images), as in CIFAR-10-LT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from semivit.data.sources import load_source


def lt_counts(n_max: int, ratio: float, classes: int = 10) -> list[int]:
    """n_c = ⌊n_max · ratio^(−c/(K−1))⌋: the exponential profile of CIFAR-10-LT (head n_max, tail n_max/ratio)."""
    return [int(n_max * ratio ** (-c / (classes - 1))) for c in range(classes)]


def long_tail(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """Indices of the first ``counts[c]`` images of each class c, in the source's order."""
    keep = [np.nonzero(labels == c)[0][:n] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(keep))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10_jpeg.zip")
    p.add_argument("--ratio", type=float, default=10.0, help="imbalance ratio n_max / n_min (10 or 100)")
    p.add_argument("--n-max", type=int, default=5000, help="images of the head class (CIFAR-10: 5,000)")
    p.add_argument("--out", default="runs/imbalanced/cifar10-lt10.npz")
    args = p.parse_args()
    bundle = load_source(args.data)
    y = bundle.train.labels.numpy()
    counts = lt_counts(args.n_max, args.ratio, len(bundle.train.classes))
    keep = long_tail(y, counts)
    x_train = bundle.train.images[keep].numpy().transpose(0, 2, 3, 1)  # Keras layout: N, H, W, C
    x_test = bundle.test.images.numpy().transpose(0, 2, 3, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=x_train, y_train=y[keep], x_test=x_test,
                        y_test=bundle.test.labels.numpy(), classes=np.array(bundle.train.classes))
    print(f"{args.out}: train {np.bincount(y[keep]).tolist()} ({len(keep)}), test "
          f"{np.bincount(bundle.test.labels.numpy()).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
