"""What a stage is built from, before its first step: the model (with its pretrained weights, input size,
normalisation and classifier start), the number of steps, and the batches the method asked for.

The :class:`~semivit.engine.trainer.Trainer` calls these once in its set-up; ``semivit probe`` and the planner
build models through them too, so every path sees one model for one configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from semivit.config import Config
from semivit.core.distributed import DistInfo, barrier
from semivit.data import PreparedData, channel_stats
from semivit.data.loaders import BatchMaker
from semivit.data.splits import steps_for_epochs
from semivit.data.views import VIEW_NAMES
from semivit.engine.checkpoint import read_export_meta, read_spec
from semivit.engine.evaluate import _batched
from semivit.engine.logger import check_tracker
from semivit.errors import SemivitError
from semivit.methods.base import DataRequest, Method
from semivit.models.factory import ImageClassifier, create_model
from semivit.models.heads import imprint_classifier
from semivit.models.hub import choose_resolution, describe_config, normalization
from semivit.models.pretrained import bare_file_defaults, load_pretrained, pretrained_source

log = logging.getLogger("semivit")


def run_name(cfg: Config) -> str:
    source = Path(cfg.data.source).stem if ("/" in cfg.data.source or "." in cfg.data.source) \
        else cfg.data.source
    return cfg.train.name or f"{cfg.train.method}-{source}-{cfg.data.labels}".replace("%", "pct")


def check_train_settings(cfg: Config) -> None:
    """Counts that must be positive, checked before anything loads (``--batch-size 0`` used to end in
    ``KeyError: 'weak'`` deep in the data stream)."""
    t = cfg.train
    for name, value, low in (("train.batch_size", t.batch_size, 1), ("train.accum_steps", t.accum_steps, 1),
                             ("train.log_every", t.log_every, 1), ("train.ckpt_every", t.ckpt_every, 1),
                             ("train.eval_every", t.eval_every, 0)):
        if value < low:
            raise SemivitError(f"{name} must be ≥ {low}, got {value}")
    f = cfg.features
    if f.train_blocks < 0 or f.tail_lr <= 0:
        raise SemivitError(f"features.train_blocks must be ≥ 0 and features.tail_lr > 0, got {f.train_blocks} and "
                           f"{f.tail_lr}")
    if f.train_blocks and not f.frozen:
        raise SemivitError("features.train_blocks trains the last blocks on the cached output of a frozen backbone's "
                           "earlier ones: set features.frozen=true (--frozen) too, or leave it 0 to train the whole "
                           "network")
    check_tracker(t.tracker)


def build_model(cfg: Config, data: PreparedData, dist: DistInfo, device: torch.device) -> ImageClassifier:
    """The stage's network: ``cfg.model`` at the data's size and channels, its pretrained weights loaded
    (hub, a local file or folder), its input size and normalisation those the weights were trained with,
    and its classifier random or imprinted (``model.head_init``)."""
    train, m = data.train, cfg.model
    size = train.image_size
    if size[0] != size[1]:
        raise SemivitError(f"images are {size[0]}×{size[1]}; ViTs here need square images: set data.image_size")
    hub_weights, local = pretrained_source(m.name, m.pretrained)
    head_layers, head_hidden = m.head_layers or 0, None
    if m.head_layers is None and local:  # keep the projection-head layers the weights came with
        kwargs = (read_spec(local) or {}).get("kwargs", {})
        head_layers, head_hidden = kwargs.get("head_layers", 0), kwargs.get("head_hidden")
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank and every resume
    if hub_weights and dist.enabled and not dist.is_main:
        barrier()  # rank 0 downloads into the shared cache first; the others then read it
    bare = bare_file_defaults(m.name, local)  # a weights file without a config: timm's default config
    if bare is not None and dist.is_main:
        log.info("%s: '%s' carries no pretrained config, so timm's default for the architecture applies: %s; %s",
                 m.name, local, describe_config(bare), choose_resolution(bare, size[0], m.resolution)[1])
    mean, std = normalization(bare, train.channels) if bare is not None else (None, None)
    model = create_model(m.name, train.num_classes, train.channels, size[0], patch_size=m.patch_size,
                         embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, drop_path=m.drop_path,
                         classes=train.classes, head_layers=head_layers, head_hidden=head_hidden,
                         pretrained=hub_weights, cache_dir=m.cache_dir, resolution=m.resolution, hub=bare,
                         mean=mean, std=std)
    if hub_weights and dist.enabled and dist.is_main:
        barrier()
    if str(m.resolution).strip().lower() != "auto" and "backbone_size" not in model.spec.kwargs:
        raise SemivitError(f"model.resolution={m.resolution} applies to pretrained backbones (hub names, "
                           f"--pretrained files of a timm architecture); '{m.name}' trains from scratch at the "
                           f"data's size: set data.image_size instead")
    model.spec.multilabel = train.multilabel  # sigmoid outputs: what predict, export and evaluation read
    if not hub_weights and bare is None:  # pretrained backbones keep the mean/std they were trained with
        model.set_normalization(*channel_stats(train, seed=cfg.train.seed))
    if local:
        load_pretrained(model, local, verbose=dist.is_main)
    if m.head_init == "imprint" and train.multilabel:
        raise SemivitError("model.head_init=imprint averages each class's images, which needs one class per image: "
                           "use the default random head with multi-label data")
    if m.head_init == "imprint":
        imprint(model, local, data, device, dist.is_main)
    return model


def imprint(model: ImageClassifier, local: str | None, data: PreparedData, device: torch.device,
            verbose: bool) -> None:
    """Imprint the classifier from the labeled images' features (model.head_init=imprint); every rank
    computes the same rows from the same images, so DDP starts from one model. A classifier that arrived
    trained (weights exported by a stage that trained it, e.g. `--set model.head_init=imprint` over a whole
    recipe reaching its EMA-Teacher stage) is kept. ``local``: the weights file the model was loaded from."""
    meta = (read_export_meta(local) if local else None) or {}
    if meta.get("classifier_trained"):
        if verbose:
            log.info("model.head_init=imprint: kept the classifier the weights came with (trained by %s)",
                     meta.get("method", "an earlier stage"))
        return
    labeled = torch.as_tensor(data.split.labeled, dtype=torch.long)
    if len(labeled) == 0:
        raise SemivitError("model.head_init=imprint needs labeled images: use --labels")
    classifier = model.classifier()
    model.to(device)
    feats = torch.cat(_batched(lambda x: model.classifier_input(x).float(), model, data.train, labeled, device, 256))
    n = imprint_classifier(classifier, feats, data.train.labels[labeled].to(feats.device))
    if verbose:
        log.info("model.head_init=imprint: the classifier starts as the nearest class mean of %d labeled "
                 "images (%d of %d classes)", len(labeled), n, classifier.out_features)


def student_start(cfg: Config, method_cls: type[Method], params: object, total: int, verbose: bool) -> str | None:
    """Where a distillation student starts: its teacher's weights (the teacher's file, returned as the
    stage's ``model.pretrained``, so config.yaml records it) when ``model.pretrained: teacher`` says so, or
    when the stage is shorter than ``method.teacher_init_below`` steps and the student would otherwise start
    from random weights: a short stage cannot train a student from scratch up to its teacher. None: the
    config's own start stands."""
    m = cfg.model
    teacher, below = method_cls.teacher_start(params)
    if m.pretrained.strip().lower() == "teacher":
        if not teacher:
            raise SemivitError("model.pretrained=teacher starts a student from its teacher's weights: it needs "
                               "a method with a teacher (distill, noisy_student) and method.teacher set")
        return str(teacher)
    if not below or total >= below or pretrained_source(m.name, m.pretrained) != (False, None):
        return None
    if verbose:
        log.info("the student starts from its teacher's weights: %d steps are fewer than "
                 "method.teacher_init_below=%d (set it to 0 to train the student from scratch)", total, below)
    return str(teacher)


def total_steps(cfg: Config, method_cls: type[Method], params: object, data: PreparedData, verbose: bool) -> int:
    """``train.steps``, or ``train.epochs`` over the pool the method learns most from
    (:meth:`~semivit.methods.base.Method.epoch_pool`) in steps."""
    t = cfg.train
    if t.steps is not None and t.epochs is not None:
        raise SemivitError("give train.steps or train.epochs, not both")
    if t.steps is not None:
        if t.steps <= 0:
            raise SemivitError(f"train.steps must be positive, got {t.steps}")
        return t.steps
    epochs = 100.0 if t.epochs is None else t.epochs
    if epochs <= 0:
        raise SemivitError(f"train.epochs must be positive, got {epochs}")
    what, per_image = method_cls.epoch_pool(params)
    pool = data.split.labeled if what == "labeled" else data.split.unlabeled
    batch = max(1, round(t.batch_size * t.accum_steps * per_image))
    steps = steps_for_epochs(epochs, len(pool), batch)
    if verbose:
        log.info("train.epochs %g over %d %s images, %d a step: %d steps", epochs, len(pool), what, batch, steps)
    return steps


def per_rank_batches(cfg: Config, request: DataRequest, data: PreparedData, world: int) -> tuple[int, int]:
    """Labeled and unlabeled images per rank and step for ``request``."""
    t = cfg.train
    if t.batch_size % world:
        raise SemivitError(f"train.batch_size {t.batch_size} must be divisible by the {world} processes")
    per_rank = t.batch_size // world
    if request.labeled_views and len(data.split.labeled) == 0:
        raise SemivitError("no labeled images in the split: use --labels with at least 1 per class")
    if request.labeled_views and not request.support:
        return per_rank, round(per_rank * request.mu)
    # pre-training (and PAWS, whose labeled batch is its support): the batch is unlabeled images
    return per_rank, per_rank


def strong_magnitude(cfg: Config, data: PreparedData) -> float:
    if cfg.data.strong_magnitude is not None:
        return cfg.data.strong_magnitude
    # On 8×8 digits magnitude 5 gave 0.923 validation top-1 against 0.915 at 10 (EMA-Teacher, 2000 steps)
    return 5.0 if max(data.train.image_size) <= 16 else 10.0


def image_batches(cfg: Config, request: DataRequest, data: PreparedData, device: torch.device,
                  dist: DistInfo) -> BatchMaker:
    """The image batches ``request`` asks for, each rank its own share."""
    d = cfg.data
    unknown = [v for v in request.views if v not in VIEW_NAMES]
    if unknown:  # CVRL's clip pairs: made by video batches only
        raise SemivitError(f"method '{cfg.train.method}' asks for {', '.join(unknown)} views, which images cannot "
                           f"give: it trains on clips (semivit video train --method {cfg.train.method})")
    labeled, unlabeled = per_rank_batches(cfg, request, data, dist.world)
    strong = {"num_ops": d.strong_ops, "magnitude": strong_magnitude(cfg, data), "erase": d.strong_erase}
    return BatchMaker(data.train, data.split.labeled, data.split.unlabeled, labeled_views=request.labeled_views,
                      unlabeled_views=request.unlabeled_views, batch_size=labeled, unlabeled_batch_size=unlabeled,
                      device=device, seed=cfg.train.seed, flip=data.flip, rank=dist.rank, world=dist.world,
                      workers=d.workers, support=request.support, shuffle_buffer=d.shuffle_buffer,
                      view_options={"strong": strong, **request.view_options})
