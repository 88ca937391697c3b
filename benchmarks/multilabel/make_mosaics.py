"""A multi-label data set composed from real images (issue 28): 2×2 mosaics whose labels are the set of classes
shown. No real multi-label image set can be had on this machine (no downloads), so this composes one and says so.

    python benchmarks/multilabel/make_mosaics.py cifar10 --out runs/multilabel/cifar10-mosaics.npz
    python benchmarks/multilabel/make_mosaics.py fashion-mnist --out runs/multilabel/fmnist-mosaics.npz
    python benchmarks/multilabel/make_mosaics.py digits --out runs/multilabel/digits-mosaics.npz --train 3000 \
        --test 1000

Each mosaic holds 4 images drawn at random (seeded) from the source's training part (test mosaics: from its test
part, so no test tile was ever a training tile); a class may appear more than once, so a mosaic has 1 to 4
labels (3.4 on average with 10 balanced classes: 10·(1 − 0.9⁴)). The .npz holds ``x_train``/``y_train`` (N×C 0/1
targets), ``x_test``/``y_test`` and ``classes``: semivit reads it as multi-label data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from semivit.data.sources import load_source

SOURCES = {"cifar10": "/work/shared/data/cifar10_jpeg.zip", "fashion-mnist": "fashion-mnist", "digits": "digits"}


def mosaics(x: np.ndarray, y: np.ndarray, n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2×2 mosaics of images ``x`` (N×C×H×W) and their multi-hot labels over ``k`` classes."""
    pick = rng.integers(0, len(x), size=(n, 4))
    c, h, w = x.shape[1:]
    out = np.zeros((n, c, 2 * h, 2 * w), np.uint8)
    for slot, (r, s) in enumerate([(0, 0), (0, w), (h, 0), (h, w)]):
        out[:, :, r:r + h, s:s + w] = x[pick[:, slot]]
    targets = np.zeros((n, k), np.int8)
    for slot in range(4):
        targets[np.arange(n), y[pick[:, slot]]] = 1
    return out, targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=sorted(SOURCES))
    p.add_argument("--out", required=True)
    p.add_argument("--source", default=None, help="where the data set is (default: the shared copy)")
    p.add_argument("--train", type=int, default=10_000, help="training mosaics")
    p.add_argument("--test", type=int, default=2_000, help="test mosaics")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bundle = load_source(args.source or SOURCES[args.dataset])
    if bundle.test is None:
        print(f"{args.dataset} has no test part", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    k = bundle.train.num_classes
    x, y = mosaics(bundle.train.images.numpy(), bundle.train.labels.numpy(), args.train, k, rng)
    xt, yt = mosaics(bundle.test.images.numpy(), bundle.test.labels.numpy(), args.test, k, rng)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=x, y_train=y, x_test=xt, y_test=yt, classes=np.array(bundle.train.classes))
    print(f"{args.out}: {len(x)} training and {len(xt)} test mosaics of {x.shape[2]}×{x.shape[3]} px, "
          f"{y.sum(1).mean():.2f} labels per mosaic on average, class frequencies {np.round(y.mean(0), 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
