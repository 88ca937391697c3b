"""Weizmann actions (4 classes, 9 performers) with leave-one-performer-out: per fold, CVRL pre-training on
the 8 training performers' clips (labels unused), then a linear probe and k-NN on frozen clip features
fitted on those clips' labels, tested on the held-out performer's 8 clips (4 actions × orig + mirror).
The baseline is the same encoder at its initial weights (same seed). A check that the video path works on
real clips, not a benchmark: 8 test clips per fold.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video/weizmann_lopo.py --out runs/video-weizmann
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from semivit.video.data import leave_one_group_out, load_videos
from semivit.video.models import load_video_model
from semivit.video.train import VideoTrainConfig, pretrain, probe


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
    cfg = VideoTrainConfig(width=16, num_frames=8, stride=2, size=32, steps=args.steps, batch_size=32,
                           lr=2e-3, blur=False, seed=args.seed, progress=False, log_every=20, ckpt_every=1000)
    out = Path(args.out)
    rows = []
    folds = leave_one_group_out(data)
    for group, train, test in folds[:args.folds or None]:
        row: dict = {"performer": group, "train": len(train), "test": len(test)}
        for name, steps in (("cvrl", args.steps), ("random", 0)):
            run = out / f"{group}-{name}"
            run_cfg = dataclasses.replace(cfg, steps=steps, resume=True)
            if not (run / "model.safetensors").is_file():
                pretrain(data, train, run_cfg, run)
            for k, v in probe(load_video_model(str(run)), data, train, test).items():
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
