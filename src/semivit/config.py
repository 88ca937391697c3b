"""Every setting of a run as validated dataclasses; YAML recipes and dotted CLI overrides.

A run's config is ``Config(data, model, optim, train, method)``. ``method`` holds the settings of the
chosen method, checked against that method's own dataclass (see :mod:`semivit.methods`). An unknown key or a
badly typed value raises :class:`SemivitError` naming the key and the nearest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from semivit.errors import SemivitError


@dataclass
class DataConfig:
    source: str = "digits"  # built-in name (digits, cifar10, ...), a folder, .zip, .csv or .npz
    test: str | None = None  # separate test part when the source has none
    unlabeled: str | None = None  # extra unlabeled pool (folder or CSV)
    labels: str = "all"  # "all", "4-per-class", "250", "10%"
    # labeled validation split (model selection, gates). "auto" (10% of the labeled images *beyond* --labels,
    # 1–50 per class), "5-per-class", "50", "10%": extra labels, so the run consumes more than --labels (kept
    # as the default so existing splits reproduce; every run reports the count). "20%-of-labels",
    # "1-per-class-of-labels", "fold-1-of-5": held out of --labels, the rest train. "0": none.
    val: str = "auto"
    split: str | None = None  # a saved split.json, or a list file of labeled image names
    root: str | None = None  # where torchvision sets live (default ~/.cache/semivit/datasets)
    download: bool = False  # let torchvision download a built-in set
    image_size: int | None = None  # resize folder images to this size (default: first image's size)
    on_corrupt: Literal["skip", "fail"] = "skip"  # count and go on, or stop at the first
    workers: int = 2  # DataLoader workers for streamed (large) folders
    # folders, zips, CSVs and shards of more images than this are streamed from disk instead of decoded into
    # memory (200,000 32-px RGB images hold ~600 MB; at 224 px 30 GB). 0 streams everything.
    stream_threshold: int = 200_000
    # encoded samples each shard-reading worker mixes before a batch (more: better mixing across shards, more
    # memory: ~100 kB per ImageNet JPEG; fewer than a shard's samples keeps neighbours of a shard together)
    shuffle_buffer: int = 1000
    flip: bool | None = None  # horizontal flips in augmentation (None = the source's default)
    strong_ops: int = 2  # RandAugment ops per image in the strong view
    strong_magnitude: float | None = None  # RandAugment magnitude 0–10 (10 = FixMatch's); None = 5 for images
    #                                        of ≤ 16 px (8×8 digits lose too much at 10), else 10
    strong_erase: bool = True  # Cutout after RandAugment in the strong view


@dataclass
class ModelConfig:
    # a semivit name (vit_nano, vit_tiny, vit_small, resnet18, ...) or any timm name; "auto" = the method's
    # default for the image size (vit_nano up to 32 px, vit_tiny up to 96, vit_small above; Semiformer's
    # dual-stream model for semiformer)
    name: str = "auto"
    patch_size: int | None = None  # None = chosen from the image size
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1
    # where the starting weights come from: "auto" = the hub's when model.name carries them (a tagged timm
    # name, hf-hub:ORG/NAME, local-dir:FOLDER), else none; "hub" = timm's/the hub's weights for model.name;
    # "none" = random initialisation; or a local file (.safetensors, or .pth read with weights_only=True).
    # A plain string, not Optional: an Optional field would read the word "none" as null, i.e. "auto".
    pretrained: str = "auto"
    cache_dir: str | None = None  # hub cache for downloaded weights (default HF_HUB_CACHE, i.e. HF_HOME/hub)
    resolution: str = "auto"  # pretrained backbones: auto | native | data | a size in px (models/hub.py)
    head_layers: int | None = None  # projection-head layers before the classifier; None = as in `pretrained`
    # the classifier's starting weights: "random", or "imprint" = each class's normalised mean feature over the
    # labeled images (weight imprinting; from pre-trained weights the head starts as a nearest-class-mean
    # classifier instead of at chance: the `paws` recipe's fine-tuning, models/heads.py imprint_classifier);
    # weights whose classifier a previous stage trained keep it
    head_init: Literal["random", "imprint"] = "random"


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # base learning rate for a batch of 256 (scaled by batch/256 unless scale_lr=false)
    scale_lr: bool = True
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    layer_decay: float = 1.0  # layer-wise LR decay for ViTs (0.75 in the MAE/Semi-ViT recipes); 1 = off
    warmup: float = 0.05  # warm-up length: a fraction of the steps (< 1) or a number of steps (>= 1)
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr * min_lr_ratio
    clip_grad: float | None = 1.0  # max gradient norm; None = no clipping


@dataclass
class TrainConfig:
    method: str = "supervised"
    # optimizer steps; or epochs: passes over the labeled set (supervised) or the unlabeled pool (semi-supervised
    # methods, at μ unlabeled images a step, and pre-training)
    steps: int | None = None
    epochs: float | None = None
    # wall-clock limit in seconds (0 = none): training stops at the first step past it, then evaluates and
    # exports as at the end (the schedule is cut, not compressed: for "accuracy at a time budget")
    time_limit: float = 0.0
    batch_size: int = 64  # labeled images per step, summed over all processes
    accum_steps: int = 1  # gradient accumulation
    seed: int = 0
    device: str = "auto"  # cpu | cuda | auto
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA when supported
    ema: float | None = None  # EMA momentum of the weights used for evaluation; None = off
    # the stage length `ema` was chosen for: the run uses ema^(ema_ref_steps / its steps), so the average
    # moves as far in a shortened stage (core/ema.py); None = `ema` is a per-step momentum, used as given
    ema_ref_steps: int | None = None
    eval_every: int = 200  # steps between validation passes (0 = only at the end)
    log_every: int = 20
    ckpt_every: int = 500
    out: str = "runs"
    name: str | None = None  # run folder name under out (default: method-data-labels)
    resume: bool = False
    overwrite: bool = False  # replace a finished or interrupted run in the same folder (else: refuse)
    tensorboard: bool = True
    # an experiment tracker that also gets every logged row and the run's settings: none | mlflow | wandb
    # (optional extras: pip install 'semivit[mlflow]' or 'semivit[wandb]'; their own environment variables, e.g.
    # MLFLOW_TRACKING_URI or WANDB_PROJECT / WANDB_MODE=offline, say where to)
    tracker: Literal["none", "mlflow", "wandb"] = "none"
    progress: bool = True
    compile: bool = False  # torch.compile the network the method trains (GPU runs: minutes to compile on a CPU)
    # each unlabeled and test image's outlier score by its nearest labeled images' features (engine/outliers.py),
    # written to outlier_scores.csv for the labeling loop: auto = on cached features (seconds), knn = also on
    # images (a pass over the pool), off = never
    outliers: Literal["auto", "knn", "off"] = "auto"


@dataclass
class FeaturesConfig:
    # train a linear head on the pretrained backbone's cached features instead of the whole network: the
    # backbone embeds each image once (and `views` weak and strong views of each training image), and the
    # method (supervised = the linear probe, fixmatch, ema_teacher, …) trains the head on those features in
    # the same loop; the exported model is the backbone with the head as its classifier (data/features.py)
    frozen: bool = False
    views: int = 2  # augmented views of each kind (weak, strong) embedded per training image; 0 = none
    cache: str = "auto"  # the cache folder; auto = $SEMIVIT_CACHE/features or ~/.cache/semivit/features
    # images per embedding batch: 32 was the fastest on a 2-core CPU (benchmarks/pretrained/embed_speed.py: 550
    # images/s against 285 at 128 and 226 at 512, channels_last, EfficientNet-Lite0 at 96 px)
    batch_size: int = 32
    # the seed of the cached views' augmentation; not train.seed, so runs of every seed share one cache (their
    # seeds still draw their own heads, batches and which cached view each image gets at each step)
    seed: int = 0
    # partial fine-tuning: 0 = a linear head on the pooled features; N > 0 = the backbone's last N blocks (and the
    # layers after them) train with the head, on the cached output of the blocks before them (models/tail.py)
    train_blocks: int = 0
    # the trained blocks' learning rate as a share of optim.lr (the head's): pretrained blocks take smaller steps
    tail_lr: float = 0.1


@dataclass
class VideoConfig:
    """Clips for video runs (``semivit video train|run``; the data is a video source, the model a 3D ResNet
    named by ``model.name``: r3d_18 or r2plus1d_18)."""

    width: int = 16  # the 3D ResNet's stage widths (w, 2w, 4w, 8w); torchvision's is 64
    num_frames: int = 8  # frames per clip
    stride: int = 2  # frames between a clip's frames
    size: int = 32  # frames are cropped and resized to size × size
    flip: bool = True  # horizontal flips (off for motion that a flip changes)
    blur: bool = True  # Gaussian blur in CVRL's views (off on tiny frames: it erases them)
    eval_clips: int = 4  # evenly spaced clips whose predictions (or features) are averaged per video
    # the test side: auto (the file's split, else 20% of the groups), a fraction of the groups, or groups:A,B
    holdout: str = "auto"
    channels: int | None = None  # convert every clip to 1 or 3 channels
    frame_width: int | None = None  # frame width of strip images (default: their height)
    group_pattern: str | None = None  # regex whose first group names a clip's group (default: name w/o _mirror)


@dataclass
class MultiLabelConfig:
    """Data with several labels per image (an npz ``y`` of N×C 0/1, a CSV ``labels`` column of ``a|b``, a Hugging
    Face ``Sequence(ClassLabel)``): each class is its own yes/no question, with a sigmoid output. supervised,
    fixmatch and ema_teacher train on it (:mod:`semivit.methods.multilabel`); these settings are refused on
    data with one label per image, where they would do nothing."""

    loss: Literal["bce", "asl"] = "bce"  # asl: the asymmetric loss (Ridnik et al., ICCV 2021)
    gamma_neg: float = 4.0  # asl: focusing of the negatives γ−
    gamma_pos: float = 0.0  # asl: focusing of the positives γ+
    clip: float = 0.05  # asl: the probability margin m shifted off the negatives
    # pseudo-labels, per class (UPS, Rizve et al., ICLR 2021): positive where the teacher's p ≥ method.threshold,
    # negative where p ≤ negative_threshold, no loss in between
    negative_threshold: float = 0.05
    # fixed: those two thresholds for every class; cap: per-class thresholds that make the pseudo-labels' class
    # frequencies those of the labeled images (CAP, Xie et al., NeurIPS 2023), from running quantiles of the
    # teacher's predictions over about cap_window batches; cap_keep < 1 labels only the most confident share
    thresholds: Literal["fixed", "cap"] = "fixed"
    cap_window: int = 64
    cap_keep: float = 1.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    multilabel: MultiLabelConfig = field(default_factory=MultiLabelConfig)
    method: dict[str, Any] = field(default_factory=dict)  # checked against the method's own settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "features": FeaturesConfig, "video": VideoConfig, "multilabel": MultiLabelConfig}


def _nearest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's type, or raise a clear error."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**typing.__dict__, "Any": Any})  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Literal:  # a choice setting: checked when it is parsed, naming the choices
        choice = _coerce(value, str, where) if all(isinstance(a, str) for a in args) else value
        if choice not in args:
            raise SemivitError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return choice
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SemivitError as e:
                errors.append(str(e))
        raise SemivitError(errors[0] if errors else f"bad value {value!r} for {where}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SemivitError(f"{where} needs {len(args)} values like '0.9,0.999', got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise SemivitError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise SemivitError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SemivitError(f"{where} must be a number, got {value!r}") from None
        if annotation is int:
            if number != int(number):
                raise SemivitError(f"{where} must be a whole number, got {value!r}")
            return int(number)
        return number
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a boolean
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise SemivitError(f"{where} must be a string, got {value!r}")
        return str(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise SemivitError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def check_keys(found: typing.Iterable[str], allowed: typing.Iterable[str], where: str) -> None:
    """The one schema check of every settings file (a config section, a recipe's stage, a benchmark suite's
    parts): an unknown key is one line naming it, where it sits, the nearest valid key and all valid keys."""
    allowed = list(allowed)
    unknown = [k for k in found if k not in allowed]
    if unknown:
        raise SemivitError(f"unknown keys {sorted(unknown)} in {where}{_nearest(unknown[0], allowed)}; valid keys: "
                           f"{', '.join(allowed)}")


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and bad values."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:  # one setting named in full: '{where}.{key}'
            raise SemivitError(f"unknown setting '{where}.{key}'{_nearest(key, fields)}; "
                               f"valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)  # annotations resolved in their module (a Literal alias, e.g. DistAlign)
    return cls(**{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()})


def update_dataclass(obj: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of dataclass ``obj`` with ``values`` applied (validated like :func:`build_dataclass`)."""
    merged = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    checked = build_dataclass(type(obj), values, where)
    for key in values:
        merged[key] = getattr(checked, key)
    return type(obj)(**merged)


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Apply nested or dotted overrides (``{"optim.lr": 1e-3}`` or ``{"optim": {"lr": 1e-3}}``)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if rest:
            nested.setdefault(section, {})[rest] = value
        elif isinstance(value, dict):
            nested.setdefault(section, {}).update(value)
        else:
            raise SemivitError(f"setting '{key}' needs a section, like 'optim.{key}' "
                               f"(sections: {', '.join([*SECTIONS, 'method'])})")
    out = copy.deepcopy(cfg)  # sections must not be shared: pipeline stages change them one by one
    for section, values in nested.items():
        if section == "method":
            out.method = {**cfg.method, **values}
        elif section in SECTIONS:
            setattr(out, section, update_dataclass(getattr(cfg, section), values, section))
        else:
            raise SemivitError(f"unknown section '{section}'{_nearest(section, [*SECTIONS, 'method'])}; "
                               f"sections: {', '.join([*SECTIONS, 'method'])}")
    return out


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "train.ema=0.999"]`` → dict; values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SemivitError(f"--set expects KEY=VALUE like optim.lr=1e-3, got '{item}'")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SemivitError(f"recipe '{path}' not found: pass a YAML file or a shipped recipe name")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SemivitError(f"recipe '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SemivitError(f"recipe '{path}' must be a mapping of sections (data, model, optim, train, ...)")
    return data


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
