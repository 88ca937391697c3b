"""Print the markdown tables of the CVRL section of benchmarks/RESULTS.md from the run folders the scripts wrote.

    .venv/bin/python benchmarks/video/collect.py runs/video-sprites runs/video-weizmann
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def sprites(out: Path) -> None:
    print("| encoder | pre-training steps | linear probe, 10/class | k-NN, 10/class | linear probe, all 2000 | "
          "k-NN, all |")
    print("|---|---|---|---|---|---|")
    for run, what in (("random", "random init (no pre-training)"), ("cvrl", "CVRL"),
                      ("cvrl-uniform-gap", "CVRL, uniform gap (`method.power=0`)"),
                      ("cvrl-per-frame-aug", "CVRL, per-frame augmentation (`method.per_frame_aug=true`)")):
        few, full = _read(out / f"probe-{run}-10-per-class.json"), _read(out / f"probe-{run}-all.json")
        res = _read(out / run / "results.json") or {}
        if few is None and full is None:
            continue
        cells = [f"{d[k]:.3f}" if d else "—" for d in (few, full) for k in ("linear_top1", "knn_top1")]
        print(f"| {what} | {res.get('steps', '—')} | " + " | ".join(cells) + " |")
    print()
    print("| fine-tuning, 10 labels/class | init | steps | test top-1 |")
    print("|---|---|---|---|")
    for run in ("finetune-none-10pc", "finetune-cvrl-10pc", "ema_teacher-cvrl-10pc", "fixmatch-cvrl-10pc"):
        res = _read(out / run / "results.json")
        if res:
            init = "scratch" if "-none-" in run else "CVRL"
            print(f"| {res['method']} | {init} | {res['steps']} | {res['test_top1']:.3f} |")


def weizmann(out: Path) -> None:
    summary = _read(out / "summary.json")
    if not summary:
        return
    print("| held-out performer | CVRL linear | CVRL k-NN | random-init linear | random-init k-NN |")
    print("|---|---|---|---|---|")
    for row in [*summary["folds"], {"performer": "**mean**", **summary["mean"]}]:
        print(f"| {row['performer']} | " + " | ".join(f"{row[k]:.3f}" for k in (
            "cvrl_linear_top1", "cvrl_knn_top1", "random_linear_top1", "random_knn_top1")) + " |")


if __name__ == "__main__":
    sprites(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/video-sprites"))
    print()
    weizmann(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/video-weizmann"))
