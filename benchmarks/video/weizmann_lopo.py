"""Weizmann actions (4 classes, 9 performers) with leave-one-performer-out: per fold, CVRL pre-training on
the 8 training performers' clips (labels unused), then a linear probe and k-NN on frozen clip features
fitted on those clips' labels, tested on the held-out performer's 8 clips (4 actions × orig + mirror).
The baseline is the same encoder at its initial weights (same seed). A check that the video path works on
real clips, not a benchmark: 8 test clips per fold.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video/weizmann_lopo.py --out runs/video-weizmann
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from semivit.video.data import leave_one_group_out, load_videos
from semivit.video.inputs import build_video_model, prepare_video
from semivit.video.models import load_video_model
from semivit.video.train import probe, train_video, video_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/weizmann_actions4.zip")
    ap.add_argument("--out", default="runs/video-weizmann")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=0, help="run only the first N folds (0: all 9)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_videos(args.data)
    out = Path(args.out)
    rows = []
    folds = leave_one_group_out(data)
    for group, train, test in folds[:args.folds or None]:
        # the cvrl recipe's pre-training settings; every training clip labeled for the probes (labels unused
        # by CVRL itself)
        cfg = video_config({"data.source": args.data, "video.holdout": f"groups:{group}", "video.blur": False,
                            "train.method": "cvrl", "train.steps": args.steps, "train.seed": args.seed,
                            "train.progress": False, "train.log_every": 20, "train.ckpt_every": 1000,
                            "train.out": str(out), "train.name": f"{group}-cvrl"})
        fold = prepare_video(cfg)
        row: dict = {"performer": group, "train": len(train), "test": len(test)}
        run = out / f"{group}-cvrl"
        if not (run / "results.json").is_file():
            train_video(cfg, fold)
        for name, model in (("cvrl", load_video_model(str(run))), ("random", build_video_model(cfg, fold))):
            for k, v in probe(model, fold).items():
                row[f"{name}_{k}"] = v
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k.endswith("top1")]
    summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    summary.update(folds=len(rows), steps=args.steps, seed=args.seed)
    (out / "summary.json").write_text(json.dumps({"folds": rows, "mean": summary}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
