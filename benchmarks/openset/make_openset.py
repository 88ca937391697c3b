"""Open-set semi-supervised data (issue 28): 6 known classes labeled, an unlabeled pool holding all 10.

    python benchmarks/openset/make_openset.py cifar10 --out runs/openset/cifar10-6of10.npz --per-class 2000
    python benchmarks/openset/make_openset.py fashion-mnist --out runs/openset/fmnist-6of10.npz --per-class 2000

The standard protocol (OpenMatch, Saito et al. 2021, Sec. 4.1): on CIFAR-10 the 6 animal classes (bird, cat,
deer, dog, frog, horse) are known and the 4 vehicles unknown; on Fashion-MNIST classes 0–5 (T-shirt/top, Trouser,
Pullover, Dress, Coat, Sandal) are known and 6–9 (Shirt, Sneaker, Bag, Ankle boot) unknown. The .npz holds:

- ``x_train``/``y_train``: ``per_class`` training images of every class (the first ones by index), known classes
  relabeled 0..5, unknown classes −1 (unlabeled: no one labeled them; ``--labels N-per-class`` then draws the
  labeled images from the known classes only, and every training image is in the unlabeled pool);
- ``x_test``/``y_test``: the whole test part, unknown classes −1, so semivit's test top-1 (which skips −1) is
  the closed-set accuracy on the known classes, and −1 marks the unknowns for AUROC;
- ``classes``: the 6 known class names; ``test_class``: every test image's original class (0..9).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from semivit.data.sources import load_source

KNOWN = {"cifar10": [2, 3, 4, 5, 6, 7], "fashion-mnist": [0, 1, 2, 3, 4, 5]}
SOURCES = {"cifar10": "/work/shared/data/cifar10_jpeg.zip", "fashion-mnist": "fashion-mnist"}


def relabel(labels: np.ndarray, known: list[int]) -> np.ndarray:
    out = np.full(len(labels), -1, np.int64)
    for new, old in enumerate(known):
        out[labels == old] = new
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=sorted(KNOWN))
    p.add_argument("--out", required=True)
    p.add_argument("--source", default=None, help="where the data set is (default: the shared copy)")
    p.add_argument("--per-class", type=int, default=2000, help="training images kept per class (all 10)")
    args = p.parse_args()
    bundle = load_source(args.source or SOURCES[args.dataset])
    known = KNOWN[args.dataset]
    names = [bundle.train.classes[k] for k in known]
    x, y = bundle.train.images.numpy(), bundle.train.labels.numpy()
    keep = np.sort(np.concatenate([np.nonzero(y == c)[0][:args.per_class] for c in range(10)]))
    x_test, y_test = bundle.test.images.numpy(), bundle.test.labels.numpy()
    grey = x.shape[1] == 1
    x, x_test = (x[:, 0], x_test[:, 0]) if grey else (x.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=x[keep], y_train=relabel(y[keep], known), x_test=x_test,
                        y_test=relabel(y_test, known), classes=np.array(names), test_class=y_test.astype(np.int64))
    print(f"{args.out}: known {names}; train {len(keep)} ({(relabel(y[keep], known) < 0).sum()} unknown), "
          f"test {len(y_test)} ({(relabel(y_test, known) < 0).sum()} unknown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
