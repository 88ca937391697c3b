"""FixMatch with distribution alignment and class thresholds on CIFAR-10-LT (issue 28), on the frozen ImageNet
backbone's cached features: every row is ``semivit run frozen-fixmatch`` from the command line, with the
method settings of its row.

    python benchmarks/imbalanced/make_lt.py --ratio 10 --out runs/imbalanced/cifar10-lt10.npz
    python benchmarks/imbalanced/make_lt.py --ratio 100 --out runs/imbalanced/cifar10-lt100.npz
    OMP_NUM_THREADS=1 python benchmarks/imbalanced/lt_align.py --model local-dir:runs/lite0-hub \\
        --ratios 10 100 --seeds 0 1 2 --out runs/imbalanced/lt
    python benchmarks/imbalanced/lt_align.py --out runs/imbalanced/lt --table   # the table of what finished

Labels: ``--labels 5%`` of each class of the long-tailed training part (stratified, so the labels follow the
same profile as the pool), of which ``data.val=20%-of-labels`` validate: every row consumes the same labels,
validation included. ``supervised`` is stage 1 of the ``fixmatch`` row (the head on the labels alone).
Validation decides between rows; the test part (balanced, 10,000 images) is read for the report only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROWS: dict[str, list[str]] = {
    "fixmatch": [],
    "fixmatch-da-labeled": ["method.dist_align=labeled"],
    "fixmatch-da-pool": ["method.dist_align=pool"],
    "fixmatch-da-uniform": ["method.dist_align=uniform"],
    "fixmatch-freematch": ["method.class_thresholds=freematch"],
    "fixmatch-flexmatch": ["method.class_thresholds=flexmatch"],
    "fixmatch-da-labeled-flexmatch": ["method.dist_align=labeled", "method.class_thresholds=flexmatch"],
    "fixmatch-da-uniform-flexmatch": ["method.dist_align=uniform", "method.class_thresholds=flexmatch"],
}


def run_row(args: argparse.Namespace, ratio: str, seed: int, row: str) -> None:
    folder = Path(args.out) / f"lt{ratio}" / f"{row}-s{seed}"
    if (folder / "stage2-fixmatch" / "results.json").is_file():
        return
    cmd = [sys.executable, "-m", "semivit.cli", "run", "frozen-fixmatch", "-q", "--model", args.model,
           "--data", f"runs/imbalanced/cifar10-lt{ratio}.npz", "--labels", args.labels,
           "--set", "data.val=20%-of-labels", "--set", f"features.cache={args.cache}",
           "--out", str(folder.parent), "--name", folder.name, "--seed", str(seed), "--overwrite"]
    for setting in ROWS[row]:
        cmd += ["--set", setting]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def val_balanced_accuracy(stage: Path, npz: Path) -> float:
    """The balanced accuracy of the stage's exported model on its validation split (held out of the labels,
    so skewed as they are): the criterion that matches a balanced test part. Cached in ``val_balanced.json``."""
    cached = stage / "val_balanced.json"
    if cached.is_file():
        return json.loads(cached.read_text())["val_balanced_accuracy"]
    import numpy as np
    import torch

    import semivit
    from semivit.engine.evaluate import balanced_accuracy

    ids = [int(i) for i in json.loads((stage / "split.json").read_text())["val"]]
    with np.load(npz) as data:
        x, y = data["x_train"][ids], torch.from_numpy(data["y_train"][ids])
    probs = semivit.predict(semivit.load(stage / "checkpoints" / "model.safetensors"), x)
    value = balanced_accuracy(probs.argmax(1), y)
    cached.write_text(json.dumps({"val_balanced_accuracy": value}))
    return value


def stage_numbers(stage: Path, npz: Path) -> dict[str, float] | None:
    results, report = stage / "results.json", stage / "test_report.json"
    if not (results.is_file() and report.is_file()):
        return None
    r, t = json.loads(results.read_text()), json.loads(report.read_text())
    return {"top1": t["top1"], "balanced": t["balanced_accuracy"], "f1": t["macro_f1"],
            "val": r.get("val_top1"), "val_bal": val_balanced_accuracy(stage, npz), "labels": r.get("labels_total"),
            "tail": min(t["per_class"].values())}


def table(out: Path) -> str:
    lines = []
    for ratio_dir in sorted(out.glob("lt*")):
        cells: dict[str, list[dict]] = {}
        for folder in sorted(ratio_dir.iterdir()):
            row, _, seed = folder.name.rpartition("-s")
            for name, stage in (("supervised", "stage1-supervised"), (row, "stage2-fixmatch")):
                if name == "supervised" and row != "fixmatch":
                    continue
                numbers = stage_numbers(folder / stage, Path(f"runs/imbalanced/cifar10-{ratio_dir.name}.npz"))
                if numbers:
                    cells.setdefault(name, []).append({**numbers, "seed": int(seed)})
        lines += [f"\n{ratio_dir.name}\n", "| row | seeds | test top-1 | balanced acc | macro-F1 | worst class "
                  "| val top-1 | val balanced acc | labels |", "|---|---|---|---|---|---|---|---|---|"]
        for name, rows in cells.items():
            rows.sort(key=lambda r: r["seed"])

            def ms(key: str, rows: list[dict] = rows) -> str:
                vals = [r[key] for r in rows if r[key] is not None]
                if not vals:
                    return "—"
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                return f"{statistics.mean(vals):.3f} ± {sd:.3f}"
            lines.append(f"| {name} | {','.join(str(r['seed']) for r in rows)} | {ms('top1')} | {ms('balanced')} | "
                         f"{ms('f1')} | {ms('tail')} | {ms('val')} | {ms('val_bal')} | {rows[0]['labels']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="local-dir:runs/lite0-hub")
    p.add_argument("--ratios", nargs="+", default=["10", "100"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--labels", default="5%")
    p.add_argument("--cache", default="runs/imbalanced/cache")
    p.add_argument("--out", default="runs/imbalanced/lt")
    p.add_argument("--table", action="store_true", help="print the table of the finished runs and stop")
    args = p.parse_args()
    if not args.table:
        for seed in args.seeds:
            for ratio in args.ratios:
                for row in args.rows:
                    run_row(args, ratio, seed, row)
    print(table(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
