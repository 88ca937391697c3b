"""NNCSL against its baselines over a class-incremental sequence: runs `semivit continual` for each method and
label share, then prints one Markdown table (final accuracy, average incremental accuracy, forgetting).

    OMP_NUM_THREADS=1 python benchmarks/continual/run_table.py --data digits --labels 0.8% 5% 25% \
        --steps 200 --out runs/continual-digits
    python benchmarks/continual/run_table.py --data ../shared/data/cifar10_jpeg.zip --labels 5% \
        --steps 150 --test-per-class 200 --out runs/continual-cifar10

Each cell is one run folder (OUT/METHOD-LABELS); a cell already finished is read, an unfinished one resumed,
so the same command continues a stopped table. Nothing is hard-coded: every number comes from the runs'
results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

METHODS = ["finetune", "replay", "paws", "csl", "nncsl", "joint"]
NN_METHODS = ("paws", "csl", "nncsl", "joint")  # the soft nearest-neighbour family: `--set-nn` reaches only them


def cell(data: str, labels: str, method: str, args: argparse.Namespace) -> dict:
    from semivit.cli import main

    name = f"{method}-{labels.replace('%', 'pct')}"
    results = Path(args.out) / name / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        if done["tasks_done"] == (1 if method == "joint" else args.tasks):
            return done
    argv = ["continual", "--method", method, "--tasks", str(args.tasks), "--labels", labels, "--data", data,
            "--buffer", str(args.buffer), "--steps", str(args.steps), "--out", args.out, "--name", name,
            "--seed", str(args.seed), "--device", "cpu", "--test-per-class", str(args.test_per_class), "-q",
            *[x for s in args.set for x in ("--set", s)],
            *[x for s in (args.set_nn if method in NN_METHODS else []) for x in ("--set", s)]]
    if (Path(args.out) / name / "continual.json").is_file():
        argv.append("--resume")
    rc = main(argv)
    if rc != 0:
        sys.exit(rc)
    return json.loads(results.read_text())


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--labels", nargs="+", default=["0.8%", "5%", "25%"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--buffer", type=int, default=500)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-per-class", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every method")
    ap.add_argument("--set-nn", action="append", default=[], help="KEY=VALUE for paws, csl, nncsl and joint only")
    ap.add_argument("--out", default="runs/continual")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per run
    rows = ["| labels | method | labeled / class / task | final acc. | avg. incremental acc. | forgetting | "
            "train s |", "|---|---|---|---|---|---|---|"]
    for labels in args.labels:
        for method in args.methods:
            r = cell(args.data, labels, method, args)
            per_class = r["label_shares"][0]["labeled_per_class"]
            rows.append(f"| {labels} | {method} | {per_class:g} | {pct(r['final_accuracy'])} | "
                        f"{pct(r['average_incremental_accuracy'])} | {pct(r['forgetting'])} | "
                        f"{r['train_seconds']:.0f} |")
            print("\n".join(rows), flush=True)
    table = "\n".join(rows) + "\n"
    (Path(args.out) / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
