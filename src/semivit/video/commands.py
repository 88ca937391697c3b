"""``semivit video``: sprites | train | run | probe (see docs/video.md).

``train`` and ``run`` are the image commands on clips: the same arguments (``--data``, ``--labels``,
``--model``, ``--pretrained``, ``--steps``, ``--out``/``--name``, ``--resume``, ``--overwrite``, ``--set``,
``-q``), the one Trainer, and recipes with stages (``video/recipes/``). Settings resolve as
:data:`~semivit.video.train.VIDEO_DEFAULTS` < a recipe < ``--config`` < the flags and ``--set``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("semivit")

# video flags, each a shortcut for a --set key
_VIDEO_FLAGS = {"holdout": ("video.holdout", str, "test side: auto (the file's split, else 20%% of the groups), a "
                            "fraction of the groups, or groups:A,B (groups:actor0 leaves one performer out)"),
                "channels": ("video.channels", int, "convert every clip to 1 or 3 channels"),
                "frame_width": ("video.frame_width", int, "frame width of strip images (default: their height)"),
                "group_pattern": ("video.group_pattern", str, "regex whose first group names a clip's group "
                                  "(default: the clip name without _orig/_mirror)"),
                "frames": ("video.num_frames", int, "frames per clip"),
                "size": ("video.size", int, "frames are cropped and resized to SIZE×SIZE"),
                "width": ("video.width", int, "the 3D ResNet's stage widths (w, 2w, 4w, 8w)")}


def _video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video (each is a shortcut for a --set video.KEY)")
    for flag, (_, kind, text) in _VIDEO_FLAGS.items():
        g.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None, help=text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from semivit.arguments import overrides_from_args

    out = {key: getattr(args, flag) for flag, (key, _, _) in _VIDEO_FLAGS.items() if getattr(args, flag, None)
           is not None}
    return {**out, **overrides_from_args(args)}


def _print(metrics: dict[str, Any], run_dir: Path) -> None:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    print(json.dumps(shown))
    print(f"run folder: {run_dir}")


def cmd_sprites(args: argparse.Namespace) -> int:
    from semivit.video.sprites import write_sprite_videos

    path = write_sprite_videos(args.out, num_train=args.train, num_test=args.test, frames=args.frames,
                               canvas=args.size, sprite=args.sprite_size, source=args.sprites, pool=args.pool,
                               seed=args.seed)
    print(f"wrote {args.train} + {args.test} videos of {args.frames} frames to {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from semivit.config import apply_overrides, load_yaml
    from semivit.video.train import train_video, video_config

    base = apply_overrides(video_config(), load_yaml(args.config)) if args.config else video_config()
    result = train_video(apply_overrides(base, _overrides(args)))
    _print(result.metrics, result.run_dir)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from semivit.pipeline import stage_table
    from semivit.video.train import run_video_recipe

    result = run_video_recipe(args.recipe, _overrides(args))
    print(stage_table(result.run_dir.parent))
    _print(result.metrics, result.run_dir)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from semivit.core.io import atomic_write_json
    from semivit.errors import SemivitError
    from semivit.video.inputs import build_video_model, prepare_video
    from semivit.video.models import load_video_model
    from semivit.video.train import probe, video_config

    if bool(args.run) == args.random_init:
        raise SemivitError("give --run RUN (a video run's encoder) or --random-init (the untrained encoder)")
    cfg = video_config(_overrides(args))
    data = prepare_video(cfg)
    # the untrained encoder: the weights a run of this seed and these video settings starts from
    model = load_video_model(args.run) if args.run else build_video_model(cfg, data)
    metrics = {"run": args.run or f"random-init (seed {cfg.train.seed})", "labeled": len(data.split.labeled),
               "test": len(data.test),
               **probe(model, data, cfg.video.eval_clips)}
    if args.json:
        atomic_write_json(Path(args.json), metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``semivit video …`` to the main parser."""
    from semivit.arguments import add_common_arguments

    video = sub.add_parser("video", help="video: CVRL pre-training, fine-tuning and semi-supervised training on "
                           "clips, probes, sprite videos")
    vsub = video.add_subparsers(dest="video_command", required=True)

    p = vsub.add_parser("sprites", help="generate moving-sprite videos labelled by motion pattern (.npz)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="canvas side in px")
    p.add_argument("--sprite-size", type=int, default=14, help="sprite side in px at scale 1")
    p.add_argument("--sprites", default="fashion-mnist", help="fashion-mnist, digits or an IDX folder")
    p.add_argument("--pool", type=int, default=0, help="training sprites drawn from this many images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sprites)

    p = vsub.add_parser("train", help="train one method on clips: cvrl (pre-training, labels unused), supervised, "
                        "fixmatch, ema_teacher, uda; --pretrained RUN starts from a run's encoder")
    p.add_argument("--method", help="cvrl, supervised (default), fixmatch, ema_teacher or uda")
    p.add_argument("--config", help="a YAML file with data/model/optim/train/video/method sections")
    add_common_arguments(p)
    _video_arguments(p)
    p.set_defaults(func=cmd_train)

    p = vsub.add_parser("run", help="a video recipe's stages (cvrl: CVRL pre-training, then fine-tuning from it)")
    p.add_argument("recipe", help="a recipe YAML or a name in semivit/video/recipes (cvrl, cvrl-fixmatch)")
    add_common_arguments(p)
    _video_arguments(p)
    p.set_defaults(func=cmd_run)

    p = vsub.add_parser("probe", help="linear probe and k-NN on frozen clip features of a video run")
    p.add_argument("--data", required=True, help="the video source (as for train)")
    p.add_argument("--run", help="a video run folder or its model.safetensors")
    p.add_argument("--random-init", action="store_true", help="probe the untrained encoder instead (the weights a "
                   "run of this --seed and these video settings starts from): the baseline of pre-training")
    p.add_argument("--labels", default="all", help="all, N-per-class, N or P%% of the training side")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set video.eval_clips=8")
    p.add_argument("--json", default=None, help="also write the metrics here")
    _video_arguments(p)
    p.set_defaults(func=cmd_probe)
