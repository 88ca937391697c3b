"""Issue 28, "Mistakes in the labels": flip 10% of a labeled set's labels at a fixed seed, run ``semivit
labelcheck``, and report the precision and recall of the flagged images, and a recipe's test accuracy on the
labels before (noisy) and after the corrections are accepted — every suggestion taken unseen (``all``), or a
reviewer's (``reviewed``: the flagged labels that are wrong corrected to the true class, the others kept) —
and on the clean labels (the ceiling).

Two sets, each over ``--seeds`` (the flips' seed; on Fashion-MNIST also the split's):

- ``fmnist``: Fashion-MNIST, 10 labels per class (100, no validation labels: ``data.val 0``). The noisy labeled
  set is written as an ``.npz``; ``semivit labelcheck`` (the CLI, 5-fold logistic regression on raw pixels)
  flags, ``--accept`` merges each review of the CSV, and ``semivit train`` runs the supervised-only row of the
  ``fmnist-10`` suite (``vit_nano``, 600 steps, no validation) on the noisy, corrected and clean labels.
- ``cifar10``: CIFAR-10's 250-label split (``cifar10_labels250_seed0.txt``, 25 per class, no validation
  labels), features of EfficientNet-Lite0 at 96 px from the feature cache. Changed labels change the data's
  fingerprint and so the cache key: embedding 60,000 images again per flip would cost ~10 minutes each, so
  here the flags come from the functions the command runs (``labeled_features`` → ``out_of_sample_probs`` →
  ``find_issues``) on the flipped labels in memory, and the recipe is the linear probe on the cached features
  (``semivit probe``'s: logistic regression, scikit-learn defaults) on the noisy, corrected or clean labels,
  and on the noisy labels with the flagged ones dropped (``pruned``).

    OMP_NUM_THREADS=1 nice python benchmarks/labelcheck/flip_labels.py fmnist --seeds 0 1 2 --out runs/labelcheck
    OMP_NUM_THREADS=1 nice python benchmarks/labelcheck/flip_labels.py fmnist-probe --seeds 0 1 2 --out runs/labelcheck
    OMP_NUM_THREADS=1 nice python benchmarks/labelcheck/flip_labels.py cifar10 --seeds 0 1 2 --out runs/labelcheck \\
        --model local-dir:runs/lite0-hub --resolution 96
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from semivit.config import Config, apply_overrides
from semivit.labelcheck import find_issues, out_of_sample_probs, precision_recall
from semivit.labelcheck.sources import labeled_features, labeled_pool

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FLIP = 0.1
SUPERVISED = ["--method", "supervised", "--model", "vit_nano", "--batch-size", "32", "--steps", "600", "--set",
              "optim.lr=1e-2", "--set", "optim.layer_decay=0.75", "--set", "optim.warmup=0.1", "--set",
              "data.val=0", "--set", "train.eval_every=0", "--set", "train.tensorboard=false", "-q"]


def flip(labels: np.ndarray, seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with round(10%) of them, chosen at ``seed``, changed to another class uniformly at random."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), round(FLIP * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, classes, len(rows))) % classes
    return noisy, rows


def semivit(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "semivit.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"semivit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def fmnist(seed: int, out: Path) -> dict:
    cfg = apply_overrides(Config(), {"data.source": "fashion-mnist", "data.labels": "10-per-class", "data.val": "0",
                                     "train.seed": seed})
    pool, data = labeled_pool(cfg)
    train, test = data.train, data.test
    rows = pool.labeled
    clean = train.labels[torch.from_numpy(rows)].numpy()
    noisy, wrong = flip(clean, seed, train.num_classes)
    folder = out / f"fmnist-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, labels in (("noisy", noisy), ("clean", clean)):
        y = np.full(len(train), -1, dtype=np.int64)
        y[rows] = labels
        sets[name] = folder / f"{name}.npz"
        np.savez(sets[name], x=train.images[:, 0].numpy(), y=y, classes=np.array(train.classes),
                 x_test=test.images[:, 0].numpy(), y_test=test.labels.numpy())
    start = time.perf_counter()
    spec = ["--data", str(sets["noisy"]), "--labels", "all", "--set", "data.val=0", "--seed", str(seed)]
    semivit("labelcheck", *spec, "-o", str(folder / "issues.csv"))
    seconds = time.perf_counter() - start
    with open(folder / "issues.csv", newline="") as f:
        flagged_rows = list(csv.DictReader(f))
    flagged = np.array([int(r["index"]) for r in flagged_rows], dtype=np.int64)
    truth = {i: train.classes[c] for i, c in zip(rows.tolist(), clean.tolist())}  # class names, as the CSV
    # two reviews of the same CSV, merged by --accept: every suggestion taken unseen, and a reviewer who
    # looks at each flagged image and corrects the label only where it is wrong (to the true class)
    reviews = {"all": [{**r, "keep": "yes"} for r in flagged_rows],
               "reviewed": [{**r, "keep": "yes" if truth[int(r["index"])] != r["given"] else "no",
                             "label": truth[int(r["index"])]} for r in flagged_rows]}
    fixed = {}
    for name, reviewed in reviews.items():
        path = folder / f"issues-{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flagged_rows[0]) if flagged_rows else ["path", "label"])
            writer.writeheader()
            writer.writerows(reviewed)
        sets[name] = folder / f"{name}.npz"
        if any(r["keep"] == "yes" for r in reviewed):
            semivit("labelcheck", *spec, "--accept", str(path), "-o", str(sets[name]))
            fixed[name] = np.load(sets[name])["y"][rows]
        else:  # nothing to correct: the noisy labels stand
            sets[name], fixed[name] = sets["noisy"], noisy
    result = _detection(flagged, rows[wrong], clean, noisy, fixed, seconds)
    for name in ("noisy", "all", "reviewed", "clean"):
        semivit("train", "--data", str(sets[name]), "--labels", "all", "--seed", str(seed), "--out", str(folder),
                "--name", name, "--overwrite", *SUPERVISED)
        metrics = json.loads((folder / name / "results.json").read_text())
        result[f"top1_{name}"] = metrics["test_top1"]
        result["labels_total"] = metrics["labels_total"]
    return result


def cifar10(seed: int, out: Path, model: str, resolution: int) -> dict:
    from semivit.core.distributed import DistInfo
    from semivit.engine.evaluate import linear_probe_top1
    from semivit.engine.inputs import backbone_features

    cfg = apply_overrides(Config(), {"data.source": str(SHARED / "cifar10_jpeg.zip"), "data.val": "0",
                                     "data.split": str(SHARED / "cifar10_labels250_seed0.txt"),
                                     "model.resolution": str(resolution), "train.progress": False})
    pool, data = labeled_pool(cfg)
    rows = pool.labeled
    clean = data.train.labels[torch.from_numpy(rows)].numpy()
    noisy, wrong = flip(clean, seed, data.train.num_classes)
    start = time.perf_counter()
    x, _ = labeled_features(pool, data, model=model)
    probs = out_of_sample_probs(x, noisy, 5, seed, data.train.num_classes)
    issues = find_issues(noisy, probs)
    seconds = time.perf_counter() - start
    everything = noisy.copy()
    everything[issues.indices] = issues.suggested  # every flagged label replaced by the suggestion, unseen
    reviewed = noisy.copy()  # a reviewer corrects the flagged labels that are wrong, to the true class
    reviewed[issues.indices] = clean[issues.indices]
    fixed = {"all": everything, "reviewed": reviewed}
    result = _detection(rows[issues.indices], rows[wrong], clean, noisy, fixed, seconds)
    both = find_issues(noisy, probs, filter_by="both")  # Cleanlab's stricter rule, for comparison
    result["precision_both"], result["recall_both"] = precision_recall(both.indices, wrong)
    _, feats = backbone_features(apply_overrides(cfg, {"model.name": model}), data, DistInfo(),
                                 torch.device("cpu"), views=0)
    test_x, test_y = feats.test.float(), data.test.labels  # type: ignore[union-attr]
    train_x = torch.from_numpy(x).float()
    for name, labels in (("noisy", noisy), ("all", everything), ("reviewed", reviewed), ("clean", clean)):
        result[f"top1_{name}"] = linear_probe_top1(train_x, torch.from_numpy(labels), test_x, test_y)
    keep = np.setdiff1d(np.arange(len(rows)), issues.indices)  # Cleanlab's other use: drop the flagged labels
    result["top1_pruned"] = linear_probe_top1(train_x[keep], torch.from_numpy(noisy[keep]), test_x, test_y)
    result["labels_total"] = len(rows)
    return result


def fmnist_probe(seed: int, out: Path) -> dict:
    """A second, cheaper recipe on the labels ``fmnist`` wrote for ``seed`` (noisy, all, reviewed, clean .npz):
    the linear probe on raw pixels (logistic regression, scikit-learn defaults, as ``semivit probe``'s) — it
    has no training-run noise, which at 100 labels is as large as the labels' effect on a ViT from scratch."""
    from semivit.engine.evaluate import linear_probe_top1

    folder = out / f"fmnist-seed{seed}"
    result = {}
    for name in ("noisy", "all", "reviewed", "clean"):
        path = folder / f"{name}.npz"
        z = np.load(path if path.is_file() else folder / "noisy.npz")  # no correction accepted: the noisy labels
        rows = np.nonzero(z["y"] >= 0)[0]
        x = torch.from_numpy(z["x"][rows].reshape(len(rows), -1)).float()
        test_x = torch.from_numpy(z["x_test"].reshape(len(z["x_test"]), -1)).float()
        result[f"probe_{name}"] = linear_probe_top1(x, torch.from_numpy(z["y"][rows]), test_x,
                                                    torch.from_numpy(z["y_test"]))
    return result


def _detection(flagged: np.ndarray, wrong: np.ndarray, clean: np.ndarray, noisy: np.ndarray,
               fixed: dict[str, np.ndarray], seconds: float) -> dict:
    """Precision and recall of the flags (all of them, and the first as many as were flipped: the ranking),
    and the wrong labels left after each review."""
    precision, recall = precision_recall(flagged, wrong)
    return {"flipped": len(wrong), "flagged": len(flagged), "precision": precision, "recall": recall,
            "precision_top_n": precision_recall(flagged[:len(wrong)], wrong)[0],
            "wrong_before": int((noisy != clean).sum()),
            **{f"wrong_after_{name}": int((labels != clean).sum()) for name, labels in fixed.items()},
            "labelcheck_seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", choices=["fmnist", "fmnist-probe", "cifar10"],
                   help="fmnist-probe: the linear probe on the labels an fmnist run wrote to --out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/labelcheck")
    p.add_argument("--model", default="local-dir:runs/lite0-hub", help="cifar10: the backbone")
    p.add_argument("--resolution", type=int, default=96, help="cifar10: the backbone's input size")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        if args.set == "cifar10":
            r = cifar10(seed, out, args.model, args.resolution)
        else:
            r = fmnist(seed, out) if args.set == "fmnist" else fmnist_probe(seed, out)
        r["seed"] = seed
        results.append(r)
        print(json.dumps(r), flush=True)
    (out / f"{args.set}.json").write_text(json.dumps(results, indent=2))
    keys = [k for k in results[0] if k != "seed"]
    print("| | " + " | ".join(keys) + " |")
    for stat in (np.mean, np.std):
        print(f"| {stat.__name__} | " + " | ".join(f"{stat([r[k] for r in results]):.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
