"""``semivit continual``: NNCSL and its baselines over a class-incremental task sequence.

    semivit continual --method nncsl --tasks 5 --labels 5% --data digits --buffer 500 --steps 300 --out runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semivit.arguments import add_common_arguments, overrides_from_args
from semivit.continual import METHODS, TABLE
from semivit.errors import SemivitError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``continual`` sub-command to the main parser's sub-parsers."""
    p = sub.add_parser("continual", help="continual semi-supervised learning (NNCSL) over class-incremental tasks",
                       description="Train over a sequence of class-incremental tasks with a few labels each and "
                                   "a replay buffer; evaluate on every seen class after each task; write the "
                                   "accuracy matrix, average incremental accuracy and forgetting.")
    p.add_argument("--method", default="nncsl", choices=list(METHODS),
                   help="nncsl (CSL + NND + buffer), csl (no NND), paws (per task, no distillation), finetune "
                        "(sequential, the lower bound), replay (finetune + buffer), joint (all tasks at once, the "
                        "upper bound)")
    p.add_argument("--tasks", type=int, default=5, help="number of tasks; classes split in order (default 5)")
    p.add_argument("--buffer", type=int, default=500,
                   help="replay buffer size in labeled images (default 500, the paper's; 0 = none)")
    p.add_argument("--test-per-class", type=int, default=0, metavar="N",
                   help="evaluate on N test images per class (seeded; default 0 = the whole test part)")
    add_common_arguments(p)  # --data, --labels, --model, --steps (per task), --out, --name, --resume, --set, ...
    p.set_defaults(func=cmd_continual)


def cmd_continual(args: argparse.Namespace) -> int:
    if args.budget or args.epochs is not None:
        raise SemivitError("continual runs take --steps per task (not --budget or --epochs)")
    from semivit.continual.loop import run_continual  # torch and the Trainer: only when the command runs

    overrides = overrides_from_args(args)
    overrides.pop("train.method", None)  # --method names the continual method, not a Trainer method
    overrides.pop("train.resume", None)  # the loop resumes tasks itself
    results = run_continual(args.method, args.tasks, args.buffer, overrides, resume=args.resume,
                            test_per_class=args.test_per_class)
    root = Path(results["run_dir"])
    print((root / TABLE).read_text(), end="")
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()
             if k in ("final_accuracy", "average_incremental_accuracy", "forgetting", "tasks_done")}
    print(json.dumps(shown))
    print(f"run folder: {root}")
    return 0
