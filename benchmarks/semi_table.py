"""Semi-ViT's claims at small scale: one table of rows on the same split, seed and step budget.

    python benchmarks/semi_table.py --data digits --labels 4-per-class --out /tmp/semi-digits

Rows (the shipped recipes, trimmed or varied; every fine-tuning row gets stages 2+3's steps):
  supervised-only              the semivit recipe's supervised stage, for stage 2 + 3 steps, labels only
  fixmatch                     supervised → fixmatch at its paper's settings (τ 0.95, λ_u 1, μ 7, no label
                               smoothing; same init and steps as the ema_teacher row), scored on an evaluation
                               EMA with the EMA-Teacher's momentum, as the ema_teacher rows score their teacher
  ema_teacher                  supervised → ema_teacher without pseudo mixup (no MAE)
  ema_teacher + pseudo mixup   supervised → ema_teacher with pseudo mixup (no MAE)
  semivit pipeline             mae → supervised → ema_teacher + pseudo mixup (the full recipe)
Prints a markdown table (test top-1 of the final model, best validation top-1, wall seconds, images/s of
the last stage, and the final pseudo-label accuracy and mask ratio) and writes it to OUT/table.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

from semivit.config import Config, load_yaml
from semivit.data import prepare_data
from semivit.pipeline import find_recipe, run_stages, stage_configs


def _last_diagnostics(run_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key in ("train/pseudo_acc", "train/mask"):
                if row.get(key):
                    out[key.split("/")[1]] = float(row[key])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="semivit", help="a three-stage mae → supervised → semi recipe "
                   "(semivit for CPU, semivit-cifar for 32-px images on a GPU)")
    p.add_argument("--data", default="digits")
    p.add_argument("--labels", default="4-per-class")
    p.add_argument("--split", help="a split/list file (e.g. ../shared/data/cifar10_labels250_seed0.txt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/semi-table")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every stage")
    p.add_argument("--rows", default="all", help="comma-separated row numbers (1-5) to run")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (CPU budgets)")
    args = p.parse_args()
    from semivit.config import parse_set_args

    overrides = {"data.source": args.data, "data.labels": args.labels, "train.seed": args.seed,
                 "train.progress": False, "train.tensorboard": False, **parse_set_args(args.set)}
    if args.split:
        overrides["data.split"] = args.split
    out = Path(args.out)
    _, semivit = stage_configs(load_yaml(find_recipe(args.recipe)), overrides)
    data = prepare_data(semivit[0].data, args.seed)
    for cfg in semivit:
        cfg.train.steps = max(1, round((cfg.train.steps or 0) * args.steps_scale))
    mae, sup, ema = semivit

    def variant(cfg: Config, **method: Any) -> Config:
        import copy

        new = copy.deepcopy(cfg)
        new.method = {**new.method, **method}
        return new

    baseline = variant(sup)
    baseline.train.steps = (sup.train.steps or 0) + (ema.train.steps or 0)
    fixmatch = variant(ema)
    fixmatch.train.method = "fixmatch"
    fixmatch.method = {"threshold": 0.95, "lambda_u": 1.0, "mu": 7, "label_smoothing": 0.0}  # Sohn et al. 2020
    # evaluated on an EMA of its weights with the teacher's momentum (declared for the same stage length)
    fixmatch.train.ema = ema.method.get("ema", 0.99)
    fixmatch.train.ema_ref_steps = ema.method.get("ema_ref_steps")
    rows = [("supervised-only", [baseline]),
            ("fixmatch", [variant(sup), fixmatch]),
            ("ema_teacher", [variant(sup), variant(ema, pseudo_mixup="off")]),
            ("ema_teacher + pseudo mixup", [variant(sup), variant(ema)]),
            ("semivit pipeline (mae → sup → ema_teacher + mixup)", [variant(mae), variant(sup), variant(ema)])]
    chosen = range(1, 6) if args.rows == "all" else [int(r) for r in args.rows.split(",")]
    labels = args.split or args.labels
    lines = [f"recipe {args.recipe}, model {sup.model.name}, data {args.data}, "
             f"labels {len(data.split.labeled)} ({labels}), "
             f"val {len(data.split.val)}, seed {args.seed}, stage steps "
             f"{'/'.join(str(c.train.steps) for c in semivit)} (mae/supervised/semi)", "",
             "| method | test top-1 | best val top-1 | seconds | images/s (last stage) | pseudo-label acc | mask |",
             "|---|---|---|---|---|---|---|"]
    for i in chosen:
        name, stages = rows[i - 1]
        start = time.perf_counter()
        result = run_stages(stages, out / f"row{i}", data)
        metrics, last_dir = result.metrics, result.run_dir
        seconds = time.perf_counter() - start
        diag = _last_diagnostics(last_dir)
        line = (f"| {name} | {metrics.get('test_top1', float('nan')):.4f} | {metrics.get('best_val_top1') or 0:.4f} "
                f"| {seconds:.0f} | {metrics['images_per_sec']:.0f} | "
                f"{diag.get('pseudo_acc', float('nan')):.3f} | {diag.get('mask', float('nan')):.3f} |")
        lines.append(line)
        print(line, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
