"""Issue 28, "Mistakes in the labels", for label sets: on CIFAR-10 mosaics (benchmarks/multilabel/make_mosaics.py)
with 10% of the labeled mosaics labeled (1,000 of 10,000; no validation labels), one class of 10% of those sets is
flipped (present ↔ absent) at a fixed seed; ``semivit labelcheck``'s functions (``labeled_features`` with
EfficientNet-Lite0 at 128 px from the feature cache → ``out_of_sample_multilabel_probs`` →
``find_multilabel_issues``) flag sets, and the flags are compared with the flipped ones (also the precision of
the first 100 flags, as many as were flipped: what a reviewer with that much time would look at). Then the linear probe
(one logistic regression per class) is fitted on the noisy sets, on the sets after a reviewer corrects the
flagged ones that are wrong, and on the clean sets; test mAP on the 2,000 test mosaics. As in flip_labels.py the
flags come from the functions in memory: changed labels change the data's fingerprint, so the command itself
would embed the mosaics again.

    OMP_NUM_THREADS=1 python benchmarks/labelcheck/flip_multilabel.py --seeds 0 1 2 \\
        --data runs/multilabel/cifar10-mosaics.npz --model local-dir:runs/lite0-hub
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from semivit.config import Config, apply_overrides
from semivit.engine.multilabel_eval import linear_probe_scores, mean_ap
from semivit.labelcheck.check import find_multilabel_issues, out_of_sample_multilabel_probs, precision_recall
from semivit.labelcheck.sources import labeled_features, labeled_pool

FLIP = 0.1


def run(seed: int, data_path: str, model: str) -> dict:
    from semivit.core.distributed import DistInfo
    from semivit.engine.inputs import backbone_features

    cfg = apply_overrides(Config(), {"data.source": data_path, "data.labels": "10%", "data.val": "0",
                                     "model.resolution": "128", "train.seed": seed, "train.progress": False})
    pool, data = labeled_pool(cfg)
    rows = pool.labeled
    clean = (data.train.labels[torch.from_numpy(rows)] == 1).numpy().astype(np.int8)
    rng = np.random.default_rng(seed)
    wrong = np.sort(rng.choice(len(rows), round(FLIP * len(rows)), replace=False))
    noisy = clean.copy()
    cls = rng.integers(0, clean.shape[1], len(wrong))
    noisy[wrong, cls] = 1 - noisy[wrong, cls]
    start = time.perf_counter()
    x, _ = labeled_features(pool, data, model=model)
    probs = out_of_sample_multilabel_probs(x, noisy, 5, seed)
    issues = find_multilabel_issues([tuple(np.nonzero(r)[0].tolist()) for r in noisy], probs)
    seconds = time.perf_counter() - start
    precision, recall = precision_recall(issues.indices, wrong)
    # a reviewer who looks at as many sets as were flipped, most likely wrong first
    top, _ = precision_recall(issues.indices[:len(wrong)], wrong)
    reviewed = noisy.copy()
    reviewed[issues.indices] = clean[issues.indices]  # a reviewer fixes the flagged sets that are wrong
    _, feats = backbone_features(apply_overrides(cfg, {"model.name": model}), data, DistInfo(), torch.device("cpu"),
                                 views=0)
    test_x, test_y = feats.test.float(), data.test.labels  # type: ignore[union-attr]
    train_x = torch.from_numpy(x).float()
    out = {"seed": seed, "labels": len(rows), "flipped": len(wrong), "flagged": len(issues),
           "precision": precision, "recall": recall, "precision_at_flipped": top, "seconds": seconds}
    for name, y in (("noisy", noisy), ("reviewed", reviewed), ("clean", clean)):
        out[f"map_{name}"] = mean_ap(linear_probe_scores(train_x, torch.from_numpy(y), test_x), test_y)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", default="runs/multilabel/cifar10-mosaics.npz")
    p.add_argument("--model", default="local-dir:runs/lite0-hub")
    args = p.parse_args()
    rows = [run(s, args.data, args.model) for s in args.seeds]
    for r in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    for key in ("flagged", "precision", "recall", "precision_at_flipped", "map_noisy", "map_reviewed", "map_clean"):
        v = np.array([r[key] for r in rows], dtype=float)
        print(f"{key}: {v.mean():.3f} ± {v.std():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
