"""``semivit video``: sprites | pretrain | finetune | probe (see docs/video.md).

Settings come from dataclass defaults (:class:`~semivit.video.train.VideoTrainConfig`), then a recipe's
section (``--recipe cvrl`` reads ``video/recipes/cvrl.yaml``: its ``pretrain:`` or ``finetune:`` keys), then the
flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from semivit.errors import SemivitError

log = logging.getLogger("semivit")

# flag → VideoTrainConfig field (flags default to None: only the ones given override the recipe)
_TRAIN_FLAGS = {"arch": str, "width": int, "frames": int, "stride": int, "size": int, "steps": int,
                "batch_size": int, "lr": float, "weight_decay": float, "temperature": float, "power": float,
                "eval_clips": int, "seed": int, "ckpt_every": int, "log_every": int, "time_limit": float}
_SEMI_FLAGS = {"semi": str, "threshold": float, "mu": int, "lambda_u": float, "ema": float}
_FIELD = {"frames": "num_frames"}


def _recipe(name: str | None, section: str) -> dict[str, Any]:
    if not name:
        return {}
    from semivit.config import load_yaml

    path = Path(name)
    if not path.is_file():
        # video recipes live beside this module: their pretrain/finetune sections are not image-stage recipes
        path = Path(__file__).resolve().parent / "recipes" / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise SemivitError(f"recipe '{name}' not found: pass a YAML file or a name in semivit/video/recipes (cvrl)")
    values = load_yaml(path).get(section) or {}
    if not isinstance(values, dict):
        raise SemivitError(f"recipe '{path}': '{section}' must be a mapping of settings")
    return values


def _config(args: argparse.Namespace, section: str) -> Any:
    from semivit.config import build_dataclass
    from semivit.video.train import VideoTrainConfig

    values = _recipe(args.recipe, section)
    for flag in (*_TRAIN_FLAGS, *_SEMI_FLAGS):
        if getattr(args, flag, None) is not None:
            values[_FIELD.get(flag, flag)] = getattr(args, flag)
    for flag in ("no_flip", "no_blur"):
        if getattr(args, flag, False):
            values[flag[3:]] = False
    if getattr(args, "per_frame_aug", False):
        values["per_frame_aug"] = True
    values.update(resume=args.resume, progress=not args.quiet)
    return build_dataclass(VideoTrainConfig, values, f"video {section}")


def _data(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any, Any]:
    from semivit.video.data import group_holdout, load_videos

    data = load_videos(args.data, channels=args.channels, frame_width=args.frame_width,
                       **({"group_pattern": args.group_pattern} if args.group_pattern else {}))
    train, test = group_holdout(data, args.holdout, cfg.seed)
    log.info("%d videos (%d classes): %d train, %d test, %d groups", len(data), len(data.classes), len(train),
             len(test), len(set(data.groups)))
    return data, train, test


def _print(metrics: dict[str, Any]) -> None:
    print(json.dumps(metrics, indent=2))


def cmd_sprites(args: argparse.Namespace) -> int:
    from semivit.video.sprites import write_sprite_videos

    path = write_sprite_videos(args.out, num_train=args.train, num_test=args.test, frames=args.frames,
                               canvas=args.size, sprite=args.sprite_size, source=args.sprites, pool=args.pool,
                               seed=args.seed)
    print(f"wrote {args.train} + {args.test} videos of {args.frames} frames to {path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from semivit.video.train import pretrain

    cfg = _config(args, "pretrain")
    data, train, _ = _data(args, cfg)
    _print(pretrain(data, train, cfg, args.out))  # labels are never read: the test side stays unseen
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from semivit.video.data import labeled_subset
    from semivit.video.train import finetune

    cfg = _config(args, "finetune")
    data, train, test = _data(args, cfg)
    labeled = labeled_subset(data, train, args.labels, cfg.seed)
    init = None if args.init in (None, "none", "scratch") else args.init
    unlabeled = train[~torch.isin(train, labeled)]  # the training side's other videos (labels unused)
    _print(finetune(data, labeled, test, cfg, args.out, init, unlabeled))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from semivit.video.data import group_holdout, labeled_subset, load_videos
    from semivit.video.models import load_video_model
    from semivit.video.train import probe

    model = load_video_model(args.run)
    data = load_videos(args.data, channels=args.channels, frame_width=args.frame_width,
                       **({"group_pattern": args.group_pattern} if args.group_pattern else {}))
    train, test = group_holdout(data, args.holdout, args.seed or 0)
    labeled = labeled_subset(data, train, args.labels, args.seed or 0)
    metrics = {"run": args.run, "labeled": len(labeled), "test": len(test),
               **probe(model, data, labeled, test, args.eval_clips or 4)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    _print(metrics)
    return 0


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ROOT/<class>/<clip> (video files, frame folders, strips), a zip "
                   "of strips, or a .npz from `semivit video sprites`")
    p.add_argument("--holdout", default="auto", help="test side: auto (the file's split, else 20%% of the groups), "
                   "a fraction of the groups, or groups:A,B (e.g. groups:actor0 leaves one performer out)")
    p.add_argument("--channels", type=int, default=None, help="convert every clip to 1 or 3 channels")
    p.add_argument("--frame-width", type=int, default=None, help="frame width of strip images (default: height)")
    p.add_argument("--group-pattern", default=None, help="regex whose first group names a clip's group "
                   "(default: the clip name without _orig/_mirror)")
    p.add_argument("--seed", type=int, default=None)


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.csv, model.safetensors)")
    p.add_argument("--recipe", default=None, help="recipe name or YAML (e.g. cvrl)")
    for flag, kind in _TRAIN_FLAGS.items():
        if flag != "seed":
            p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (motion that a flip changes)")
    p.add_argument("--no-blur", action="store_true", help="no Gaussian blur (tiny frames)")
    p.add_argument("--per-frame-aug", action="store_true", help="ablation: augment every frame independently")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``semivit video …`` to the main parser."""
    video = sub.add_parser("video", help="video: CVRL contrastive pre-training, fine-tuning, probe, sprite videos")
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

    p = vsub.add_parser("pretrain", help="CVRL pre-training on the training side's videos (labels unused)")
    _data_flags(p)
    _train_flags(p)
    p.set_defaults(func=cmd_pretrain)

    p = vsub.add_parser("finetune", help="fine-tune on few labels from a CVRL run (--init RUN) or from scratch")
    _data_flags(p)
    _train_flags(p)
    p.add_argument("--init", default=None, help="a `video pretrain` run folder; none = from scratch")
    p.add_argument("--labels", default="all", help="all, N-per-class or P%% of the training side")
    p.add_argument("--semi", default=None, help="none, fixmatch or ema_teacher: also learn from the unlabeled "
                   "videos of the training side with clip-level weak/strong views")
    for flag, kind in _SEMI_FLAGS.items():
        if flag != "semi":
            p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None)
    p.set_defaults(func=cmd_finetune)

    p = vsub.add_parser("probe", help="linear probe and k-NN on frozen clip features of a video run")
    _data_flags(p)
    p.add_argument("--run", required=True, help="a `video pretrain` or `video finetune` run folder")
    p.add_argument("--labels", default="all", help="all, N-per-class or P%% of the training side")
    p.add_argument("--eval-clips", type=int, default=None, help="clips averaged per video (default 4)")
    p.add_argument("--json", default=None, help="also write the metrics here")
    p.set_defaults(func=cmd_probe)
