"""How much of the sprite videos' motion label one frame gives away: a logistic regression on the raw
pixels of one frame (the middle one) against the same on the pixels of two frames 4 apart (which shows
displacement), all training labels, test split. Checks the design claim that the label needs time.

    .venv/bin/python benchmarks/video/sprites_single_frame.py runs/video-sprites/sprites.npz
"""

from __future__ import annotations

import json
import sys

import torch

from semivit.engine.evaluate import linear_probe_top1
from semivit.video.data import group_holdout, load_videos


def main(path: str) -> None:
    torch.set_num_threads(1)
    data = load_videos(path)
    train, test = group_holdout(data)
    mid = data.videos[0].shape[0] // 2

    def pixels(idx: torch.Tensor, frames: list[int]) -> torch.Tensor:
        return torch.stack([data.videos[int(i)][frames].float().flatten() / 255 for i in idx])

    out = {}
    for name, frames in (("one_frame", [mid]), ("two_frames_4_apart", [mid, mid + 4])):
        out[name] = linear_probe_top1(pixels(train, frames), data.labels[train], pixels(test, frames),
                                      data.labels[test])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/video-sprites/sprites.npz")
