"""`semivit run semivit --budget 15m` against supervised-only given the same wall-clock budget (issue 19).

Each cell is one data set and seed, trained as a user would type it, 10 labels per class:

    semivit run semivit --data D --labels 10-per-class --budget 15m --seed S
    semivit train --method supervised --model vit_nano --steps 1000 --batch-size 32 --data D --labels 10-per-class \
        --budget 15m --seed S --set method.label_smoothing=0.1 --set optim.lr=1e-2 --set optim.layer_decay=0.75 \
        --set optim.warmup=0.1

The baseline is the recipe's own supervised stage (same model, augmentation, settings and validation split;
nothing tuned for either; `--steps 1000` is only the length the budget rescales), planned by the same
`--budget` code for the whole time. The two runs of a cell are started side by side, each with ``--threads``
threads, so they see the same machine load: on a 2-core machine with ``--threads 1`` each has one core for
the whole budget. Both use the default validation split (``data.val auto``: extra labels, counted in the table).

    python benchmarks/budget/budget_vs_supervised.py --data digits fashion-mnist cifar10 --seeds 0
    python benchmarks/budget/budget_vs_supervised.py --table     # markdown of every finished cell

Results go to ``runs/budget/results.jsonl`` (one line per cell; finished cells are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path("runs/budget")
SOURCES = {"digits": "digits", "fashion-mnist": "fashion-mnist", "cifar10": "../shared/data/cifar10_jpeg.zip"}
SUPERVISED = ["--method", "supervised", "--model", "vit_nano", "--steps", "1000", "--batch-size", "32",
              "--set", "method.label_smoothing=0.1", "--set", "optim.lr=1e-2", "--set", "optim.layer_decay=0.75",
              "--set", "optim.warmup=0.1"]


def commands(data: str, seed: int, budget: str, out: Path) -> dict[str, list[str]]:
    common = ["--data", SOURCES[data], "--labels", "10-per-class", "--budget", budget, "--seed", str(seed),
              "--out", str(out), "--set", "train.progress=false"]
    return {"semivit": ["semivit", "run", "semivit", *common, "--name", "semivit"],
            "supervised": ["semivit", "train", *SUPERVISED, *common, "--name", "supervised"]}


def final_results(run: Path) -> dict[str, Any]:
    """results.json of a train run, or of a recipe run's last stage."""
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text())
    stages = sorted(p for p in run.glob("stage*") if (p / "results.json").is_file())
    if not stages:
        raise RuntimeError(f"{run} has no results.json: see {run}.log")
    return json.loads((stages[-1] / "results.json").read_text())


def planned_steps(run: Path) -> list[int]:
    plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else {}
    return [int(s["steps"]) for s in plan.get("stages", [])]


def run_cell(data: str, seed: int, budget: str, threads: int, out: Path) -> dict[str, Any]:
    folder = out / data / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    exe = str(Path(sys.executable).with_name("semivit"))
    procs, start = {}, time.time()
    for name, cmd in commands(data, seed, budget, folder).items():
        log = open(folder / f"{name}.log", "w")
        procs[name] = subprocess.Popen([exe, *cmd[1:]], stdout=log, stderr=subprocess.STDOUT, env=env)
    codes = {name: p.wait() for name, p in procs.items()}
    if any(codes.values()):
        raise RuntimeError(f"{data} seed {seed}: exit codes {codes}; logs in {folder}")
    row: dict[str, Any] = {"cell": f"{data}/seed{seed}", "data": data, "seed": seed, "budget": budget,
                           "threads": threads, "wall_s": round(time.time() - start, 1)}
    for name in procs:
        res = final_results(folder / name)
        row[name] = res["test_top1"]
        row[f"{name}_labels"] = res.get("labels_total")
        row[f"{name}_steps"] = planned_steps(folder / name)
    return row


def _mean_std(rows: list[dict[str, Any]], key: str) -> str:
    v = [r[key] for r in rows]
    return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")


def table(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    lines = ["| data | seeds | supervised-only | `semivit` recipe | gain (points) | labels (train + val) "
             "| steps planned (semivit: mae, sup, ema vs supervised) |", "|---|---|---|---|---|---|---|"]
    for data in SOURCES:
        mine = [r for r in rows if r["data"] == data]
        if not mine:
            continue
        gains = [100 * (r["semivit"] - r["supervised"]) for r in mine]
        gain = f"{statistics.mean(gains):+.1f}" + (f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else "")
        steps = "; ".join(f"{r['semivit_steps']} vs {r['supervised_steps']}" for r in mine)
        lines.append(f"| {data} | {', '.join(str(r['seed']) for r in mine)} | {_mean_std(mine, 'supervised')} "
                     f"| {_mean_std(mine, 'semivit')} "
                     f"| {gain} | {mine[0]['semivit_labels']} | {steps} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--threads", type=int, default=1, help="threads per run (the two runs of a cell run together)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"] for line in results.read_text().splitlines()} if results.is_file() else set()
    for data in args.data:
        for seed in args.seeds:
            if f"{data}/seed{seed}" in done:
                continue
            row = run_cell(data, seed, args.budget, args.threads, args.out)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
