"""The arguments every training command shares (``train``, ``run``, ``bench``, ``continual``, ``video``),
each a shortcut for a ``--set`` key, and the config they resolve to. Below the commands, so each command
module can use them without importing the CLI."""

from __future__ import annotations

import argparse
from typing import Any

from semivit.config import Config, apply_overrides, load_yaml, parse_set_args


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and run (each is a shortcut for a --set key)")
    g.add_argument("--data", help="digits (default), cifar10, ..., an image folder, .zip, .csv or .npz")
    g.add_argument("--test", help="a separate test part (when --data has no test/ folder)")
    g.add_argument("--unlabeled", help="an extra pool of unlabeled images (folder or CSV)")
    g.add_argument("--labels", help="all | N-per-class | N | P%%  (e.g. 4-per-class, 250, 10%%)")
    g.add_argument("--split", help="a split.json from an earlier run, or a list file of labeled images")
    g.add_argument("--model", help="vit_nano, vit_tiny, vit_small, vit_base, resnet18, semiformer_tiny, ..., "
                                   "a timm name (with a pretrained tag: vit_small_patch14_dinov2.lvd142m), "
                                   "hf-hub:ORG/NAME or local-dir:FOLDER (default auto: vit_tiny, or the "
                                   "dual-stream semiformer_tiny/_small for --method semiformer)")
    g.add_argument("--pretrained", nargs="?", const="hub", metavar="hub|none|PATH",
                   help="starting weights: hub (timm / Hugging Face hub, cached; the default for a tagged name "
                        "or hf-hub:/local-dir:), none, or a local .safetensors/.pth file")
    g.add_argument("--frozen", action="store_true",
                   help="keep the pretrained backbone frozen: embed the images once (cached), then train a head "
                        "on the features with the method (supervised = linear probe, fixmatch, ema_teacher)")
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="epochs over the labeled images (instead of --steps)")
    g.add_argument("--budget", help="wall-clock time for the whole run, e.g. 15m or 1h: every stage is timed and "
                                    "its steps (and schedules) planned to fit, keeping the recipe's proportions")
    g.add_argument("--batch-size", type=int, help="labeled images per step (over all processes)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu | cuda | auto")
    g.add_argument("--out", help="folder for runs (default: runs)")
    g.add_argument("--name", help="run name (folder under --out)")
    g.add_argument("--resume", action="store_true", help="continue the run in its folder where it stopped")
    g.add_argument("--overwrite", action="store_true", help="replace a run of the same --name (else: refused)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set optim.lr=1e-3 --set method.threshold=0.7")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


_SHORTCUTS = {"data": "data.source", "test": "data.test", "unlabeled": "data.unlabeled",
              "labels": "data.labels", "split": "data.split", "model": "model.name",
              "pretrained": "model.pretrained", "steps": "train.steps",
              "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
              "device": "train.device", "out": "train.out", "name": "train.name"}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {key: getattr(args, attr) for attr, key in _SHORTCUTS.items()
                           if getattr(args, attr, None) is not None}
    if getattr(args, "resume", False):
        out["train.resume"] = True
    if getattr(args, "overwrite", False):
        out["train.overwrite"] = True
    if getattr(args, "frozen", False):
        out["features.frozen"] = True
    if getattr(args, "quiet", False):
        out["train.progress"] = False
    if getattr(args, "method", None):
        out["train.method"] = args.method
    out.update(parse_set_args(args.set))
    return out


def build_config(args: argparse.Namespace) -> Config:
    base: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    return apply_overrides(apply_overrides(Config(), base), overrides_from_args(args))
