"""An imbalanced two-class set from Fashion-MNIST, written as a Keras-style .npz a user could hold (issue 19).

    python benchmarks/imbalanced/make_pair.py --out runs/imbalanced/shirt-vs-tshirt.npz

Classes T-shirt/top (0) and Shirt (6), the pair Fashion-MNIST confuses most, at 1 : 3 in both parts: all
6,000 Shirts and 2,000 T-shirts of the training part (the first 2,000 by index), and 1,000 Shirts and 333
T-shirts of the test part. Labels: 0 = T-shirt/top (the minority, the positive class of ROC AUC is class 1 =
Shirt, as semivit reports it), 1 = Shirt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from semivit.data.sources import load_source


def pair(images: np.ndarray, labels: np.ndarray, minority: int) -> tuple[np.ndarray, np.ndarray]:
    tshirt = np.nonzero(labels == 0)[0][:minority]
    shirt = np.nonzero(labels == 6)[0]
    keep = np.sort(np.concatenate([tshirt, shirt]))
    return images[keep], (labels[keep] == 6).astype(np.int64)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/imbalanced/shirt-vs-tshirt.npz")
    args = p.parse_args()
    bundle = load_source("fashion-mnist")
    x_train, y_train = pair(bundle.train.images[:, 0].numpy(), bundle.train.labels.numpy(), 2000)
    x_test, y_test = pair(bundle.test.images[:, 0].numpy(), bundle.test.labels.numpy(), 333)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"{args.out}: train {np.bincount(y_train).tolist()}, test {np.bincount(y_test).tolist()} "
          "(T-shirt/top, Shirt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
