"""Heads on a frozen pretrained backbone's cached features (issue 25): CIFAR-10's 250 labels on a 2-core CPU.

Rows, all on one cache of the backbone's features (embedded once; every row reads it):
- k-NN and the linear probe (scikit-learn) on the labels alone; label spreading and self-training (scikit-learn)
  as the classic semi-supervised baselines on the same features;
- the heads the training loop trains (semivit's recipes): ``supervised`` (the labels alone), ``frozen-fixmatch``
  and ``frozen-semivit`` (EMA-Teacher with pseudo mixup in feature space), each stage 2 from stage 1's head;
- partial fine-tuning (``partial-fixmatch``: the backbone's last block trained on the cached activation before
  it): ``partial-supervised`` (its stage 1, the labels alone) and ``partial-fixmatch``. Their cache is of the
  cut's activation maps, another cache than the pooled features'.

Settings are chosen on a validation split held out of the 250 labels (``data.val=20%-of-labels``: 200 train, 50
validate); the final rows train on all 250 with those settings and no validation split, so every row consumes
exactly the 250 labels. Seeds vary the head's initialisation, its batches and which cached view each image gets;
the cached views (features.seed) and the split (the fixed file) are the same for every seed.

    python benchmarks/pretrained/efficientnet_lite_hub.py /tmp/lite0-hub
    OMP_NUM_THREADS=2 python benchmarks/pretrained/frozen_heads.py --model local-dir:/tmp/lite0-hub \\
        --data ../shared/data/cifar10_jpeg.zip --split ../shared/data/cifar10_labels250_seed0.txt \\
        --resolution 96 --out runs/frozen-heads --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from semivit.config import Config, apply_overrides, load_yaml
from semivit.core.device import resolve_device
from semivit.core.distributed import DistInfo
from semivit.data import prepare_data
from semivit.engine.evaluate import knn_top1, label_spreading_top1, linear_probe_top1, self_training_top1
from semivit.engine.inputs import frozen_backbone_inputs
from semivit.pipeline import find_recipe, run_stages, stage_configs

log = logging.getLogger("semivit")

#: the grid searched on the validation split, per row (each value is an override of the recipe's settings)
GRID: dict[str, dict[str, list[Any]]] = {
    "supervised": {"optim.lr": [1e-3, 3e-3]},
    "frozen-fixmatch": {"optim.lr": [1e-3, 3e-3], "method.threshold": [0.7, 0.95]},
    "frozen-semivit": {"optim.lr": [1e-3, 3e-3], "method.threshold": [0.7, 0.9]},
    # partial fine-tuning (the last block trained on the cached activation before it): the labels alone, and
    # FixMatch from it
    "partial-supervised": {"features.tail_lr": [0.1, 1.0]},
    "partial-fixmatch": {"method.threshold": [0.7, 0.95]},
    "partial-semivit": {"method.threshold": [0.7, 0.9]},
}
#: a row's recipe and how many of its stages it runs (the labels-only rows are their recipe's first stage)
RECIPES = {"supervised": ("frozen-fixmatch", 1), "partial-supervised": ("partial-fixmatch", 1)}


def base_overrides(args: argparse.Namespace, val: str, seed: int) -> dict[str, Any]:
    return {"model.name": args.model, "model.resolution": str(args.resolution), "data.source": args.data,
            "data.split": args.split, "data.val": val, "features.views": args.views, "features.frozen": True,
            "train.seed": seed, "train.out": args.out, "train.progress": False, "train.tensorboard": False,
            "train.overwrite": True, "train.eval_every": 0}


def run_row(row: str, overrides: dict[str, Any], data: Any, root: Path) -> tuple[dict[str, Any], float]:
    """One row's final stage metrics and its wall time (stages after the cache is built)."""
    start = time.perf_counter()
    name, stages = RECIPES.get(row, (row, None))
    recipe = load_yaml(find_recipe(name))
    recipe["stages"] = recipe["stages"][:stages]
    method_keys = {k: v for k, v in overrides.items() if k.startswith("method.")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("method.")}
    _, configs = stage_configs(recipe, rest)
    configs[-1].method.update({k.split(".", 1)[1]: v for k, v in method_keys.items()})  # the semi-supervised stage
    result = run_stages(configs, root, data=data)
    return result.metrics, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--out", default="runs/frozen-heads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(GRID))
    parser.add_argument("--no-tune", action="store_true", help="use the recipes' settings as shipped")
    parser.add_argument("--no-baselines", action="store_true", help="skip k-NN, the probe, label spreading and "
                        "self-training (rows of a later call on the same cache)")
    parser.add_argument("--baseline-views", type=int, default=None,
                        help="views in the pooled-feature cache the baselines read (default --views; 0 when only "
                             "partial rows run: the baselines need the images' own features alone)")
    args = parser.parse_args()
    if args.baseline_views is None:
        args.baseline_views = 0 if all(r.startswith("partial") for r in args.rows) else args.views
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": vars(args), "rows": {}, "chosen": {}}

    # the cache (embedded once, or read), and the baselines on the images' own (pooled) features
    cfg = apply_overrides(Config(), {**base_overrides(args, "0", 0), "features.views": args.baseline_views})
    start = time.perf_counter()
    data = prepare_data(cfg.data, 0)
    report["data_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    inputs, _ = frozen_backbone_inputs(cfg, data, DistInfo(), resolve_device("cpu"))
    report["cache_seconds"], report["cache_computed_images"] = time.perf_counter() - start, inputs.feats.computed
    report["cache_folder"] = str(inputs.feats.folder)
    train_feats, test_feats = inputs.feats.train["none"].float(), inputs.feats.test.float()
    lab, y, test_y = data.split.labeled, data.train.labels, data.test.labels
    pool_y = torch.full_like(y, -1)
    pool_y[lab] = y[lab]
    baselines = {"k-NN": lambda: knn_top1(train_feats[lab], y[lab], test_feats, test_y),
                 "linear probe (sklearn)": lambda: linear_probe_top1(train_feats[lab], y[lab], test_feats, test_y),
                 "label spreading (sklearn)": lambda: label_spreading_top1(train_feats, pool_y, test_feats, test_y),
                 "self-training (sklearn)": lambda: self_training_top1(train_feats, pool_y, test_feats, test_y)}
    for name, fn in ({} if args.no_baselines else baselines).items():
        start = time.perf_counter()
        report["rows"][name] = {"test_top1": [fn()], "seconds": [time.perf_counter() - start]}
        log.info("%s: %.4f (%.0f s)", name, report["rows"][name]["test_top1"][0], report["rows"][name]["seconds"][0])

    tune_data = prepare_data(apply_overrides(Config(), base_overrides(args, "20%-of-labels", 0)).data, 0)
    for row in args.rows:
        grid = {} if args.no_tune else GRID[row]
        stage1 = report["chosen"].get("partial-supervised") if row.startswith("partial-") else None
        if stage1 and row != "partial-supervised":  # its stage 1 is that row: its choice carries over
            grid = {**{k: [v] for k, v in stage1["settings"].items()}, **grid}
        best, best_val = {}, -1.0
        for values in itertools.product(*grid.values()):
            choice = dict(zip(grid, values))
            metrics, _ = run_row(row, {**base_overrides(args, "20%-of-labels", 0), **choice}, tune_data,
                                 out / "tune" / f"{row}-{'-'.join(map(str, values))}")
            log.info("tune %s %s: val %.4f", row, choice, metrics["val_top1"])
            if metrics["val_top1"] > best_val:
                best, best_val = choice, metrics["val_top1"]
        report["chosen"][row] = {"settings": best, "val_top1": best_val if grid else None}
        tops, secs, labels = [], [], None
        for seed in args.seeds:
            overrides = {**base_overrides(args, "0", seed), **best}
            metrics, seconds = run_row(row, overrides, data, out / f"{row}-seed{seed}")
            tops.append(metrics["test_top1"])
            secs.append(seconds)
            labels = metrics["labels_total"]
            log.info("%s seed %d: test %.4f (%.0f s)", row, seed, metrics["test_top1"], seconds)
        report["rows"][row] = {"test_top1": tops, "seconds": secs, "labels_total": labels}
        (out / "frozen_heads.json").write_text(json.dumps(report, indent=2))

    probe = statistics.mean(report["rows"].get("linear probe (sklearn)", {"test_top1": [float("nan")]})["test_top1"])
    lines = ["| row | test top-1 | vs linear probe (points) | seconds (after the cache) |", "|---|---|---|---|"]
    for name, r in report["rows"].items():
        t = r["test_top1"]
        spread = f" ± {statistics.stdev(t):.3f}" if len(t) > 1 else ""
        lines.append(f"| {name} | {statistics.mean(t):.3f}{spread} | {100 * (statistics.mean(t) - probe):+.1f} | "
                     f"{statistics.mean(r['seconds']):.0f} |")
    table = "\n".join(lines)
    (out / "frozen_heads.md").write_text(table + "\n")
    (out / "frozen_heads.json").write_text(json.dumps(report, indent=2))
    print(table)
    print(f"cache: {report['cache_computed_images']} images embedded in {report['cache_seconds']:.0f} s; "
          f"data loaded in {report['data_seconds']:.0f} s")


if __name__ == "__main__":
    main()
