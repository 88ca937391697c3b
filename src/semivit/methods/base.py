"""The one interface every method implements, and the registry that maps names to methods (USB-style).

A method is a small class: it declares which views of labeled and unlabeled images it needs, computes
its loss in :meth:`Method.training_step`, and updates any extra state (an EMA teacher, a memory) in
:meth:`Method.on_step_end`. The :class:`~semivit.engine.trainer.Trainer` owns everything else.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from semivit.config import Config, MultiLabelConfig, build_dataclass
from semivit.core.ema import half_life, scaled_momentum
from semivit.core.schedule import stage_steps
from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.models.factory import ImageClassifier

log = logging.getLogger("semivit")


@dataclass
class StepOutput:
    """A step's loss and detached scalar metrics (read on the host only at log time: no syncs per step)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class NoParams:
    pass


@dataclass(frozen=True)
class DataRequest:
    """What a method needs from the data, declared by the method (:meth:`Method.data_request`) and read by
    the Trainer, which builds the batches from it: nothing about a method is guessed from its attributes.

    ``labeled_views`` / ``unlabeled_views``: the view names (:mod:`semivit.data.augment`) made for each
    labeled / unlabeled image, () for no stream; ``mu``: unlabeled images per labeled image (0 when the batch
    is all unlabeled, as in pre-training); ``support``: (classes per batch, images per class) for a
    class-balanced labeled stream (PAWS), else None; ``view_options``: keyword arguments per view kind;
    ``find_unused_parameters``: whether DDP must look for parameters without a gradient every step."""

    labeled_views: tuple[str, ...] = ("weak",)
    unlabeled_views: tuple[str, ...] = ()
    mu: float = 0.0
    support: tuple[int | None, int] | None = None
    view_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    find_unused_parameters: bool = False

    @property
    def views(self) -> tuple[str, ...]:
        """Every view kind asked for (``contrastive:2`` counts as ``contrastive``)."""
        return tuple(dict.fromkeys(v.split(":", 1)[0] for v in (*self.labeled_views, *self.unlabeled_views)))


class Method(nn.Module):
    """Base class: subclasses set ``name`` and ``Params`` and implement :meth:`training_step`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: view names (see :mod:`semivit.data.augment`) made for each labeled / unlabeled image; () = no stream
    labeled_views: tuple[str, ...] = ("weak",)
    unlabeled_views: tuple[str, ...] = ()
    #: unlabeled images per labeled image in a step (μ); pre-training methods set their own batch
    unlabeled_ratio: float = 0.0
    #: False for pre-training methods whose classifier head stays untrained: they are validated by k-NN
    trains_classifier: bool = True
    #: True when some of the method's parameters get no gradient in a step (a pre-training method's unused
    #: classifier head): DDP must then look for them every step, or it stops at step 2 waiting for their
    #: gradients. tests/test_ddp.py trains every registered method under 2 ranks to keep this honest.
    find_unused_parameters: ClassVar[bool] = False
    #: a recipe stage of this method takes the previous stage as its teacher (``method.teacher``) and trains a
    #: new student, instead of starting from the previous stage's weights (distillation, Noisy Student)
    previous_stage_is_teacher: ClassVar[bool] = False

    @classmethod
    def default_model(cls, image_size: int) -> str:
        """The model ``model.name: auto`` means for this method at images of ``image_size`` pixels: width
        grows with the image. Up to 32 px (digits, MNIST-like sets, CIFAR) ``vit_nano``, the width every
        small-image recipe is measured with on a CPU (benchmarks/RESULTS.md); up to 96 px ``vit_tiny``;
        larger images ``vit_small`` (the Semi-ViT paper's smallest ViT). The patch size follows the image
        size too (``models.factory.default_patch_size``)."""
        if image_size <= 32:
            return "vit_nano"
        return "vit_tiny" if image_size <= 96 else "vit_small"

    #: whether the method trains on multi-label data (labels N×C; :mod:`semivit.methods.multilabel`)
    supports_multilabel: ClassVar[bool] = False

    def __init__(self, model: ImageClassifier, params: Any, num_classes: int, total_steps: int, *,
                 multilabel: MultiLabelConfig | None = None) -> None:
        """``multilabel``: the data has several labels per image, trained as these settings say (None: one class
        per image)."""
        super().__init__()
        check_choices(params)
        self.model, self.params = model, params
        self.num_classes, self.total_steps = num_classes, total_steps
        self.multilabel = multilabel

    @classmethod
    def single_label_options(cls, params: Any) -> dict[str, Any]:
        """Settings that only mean something with one class per image (refused with multi-label data unless
        off): e.g. distribution alignment of a softmax."""
        return {}

    def data_request(self) -> DataRequest:
        """The views, μ and sampler this method needs (see :class:`DataRequest`); methods whose views depend on
        their settings set the view attributes in ``__init__``, PAWS adds its support sampler."""
        return DataRequest(tuple(self.labeled_views), tuple(self.unlabeled_views), float(self.unlabeled_ratio),
                           find_unused_parameters=self.find_unused_parameters)

    @classmethod
    def epoch_pool(cls, params: Any) -> tuple[str, float]:
        """What ``train.epochs`` counts passes over, before the method is built: ``("labeled", 1)`` for
        supervised training, ``("unlabeled", μ)`` for semi-supervised methods (μ unlabeled images per labeled
        one: with 40 labels an epoch of labels is ~1 step), ``("unlabeled", 1)`` for pre-training."""
        if cls.labeled_views and cls.trains_classifier and not cls.unlabeled_views:
            return "labeled", 1.0
        if cls.labeled_views and cls.unlabeled_views:
            return "unlabeled", float(params.mu)
        return "unlabeled", 1.0

    @classmethod
    def teacher_start(cls, params: Any) -> tuple[str, int]:
        """A distillation method's teacher file, and the stage length below which its student starts from
        the teacher's weights (0: never); ("", 0) for methods without a teacher."""
        return "", 0

    def forward(self, batch: Batch, step: int) -> StepOutput:  # DDP calls forward; keep one entry point
        return self.training_step(batch, step)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    #: steps between calls of :meth:`on_validation` (0 = never): methods that decide on validation results
    validation_every: int = 0

    @classmethod
    def schedule(cls, params: Any, total_steps: int) -> dict[str, float]:
        """The method's schedule points in a stage of ``total_steps`` steps, in steps: when a loss switches on,
        how often a gate is checked, an EMA's half-life. Each must move with the stage's length (a share of
        the stage, or a momentum scaled to it), so a run shortened by ``--budget`` or ``bench`` keeps the
        proportions it was tuned at; tests/test_schedules.py halves and doubles every shipped recipe's stages
        and checks that they do. The method's own code computes them through the same functions."""
        return {}

    def setup(self, num_train: int) -> None:
        """Called once after construction, before a checkpoint is restored: size per-image state (a
        pseudo-label memory) for the ``num_train`` training images, so it is saved and resumed with the
        method's buffers."""

    def on_step_end(self, step: int) -> None:
        """Called after each optimizer step (e.g. to update an EMA teacher)."""

    def on_validation(self, step: int, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Called every :attr:`validation_every` steps with the model's logits on the *validation* split
        (never the test set) and its labels, on every rank; returns values to log (e.g. a gate's state)."""
        return {}

    def save_outputs(self, inputs: Any, run_dir: Path) -> dict[str, Any]:
        """Called once on rank 0 at the end of the stage, after the test pass, with the stage's inputs
        (:mod:`semivit.engine.inputs`: ``inputs.logits(net, part)`` over ``unlabeled``, ``test``, ...): write
        per-image outputs into the run folder (OpenMatch's outlier scores); returns metrics to add to the
        stage's results (default: nothing)."""
        return {}

    def effective_settings(self) -> dict[str, Any]:
        """Method settings as this run really uses them, written into the run's ``config.yaml`` in place of
        the declared ones: e.g. an EMA momentum scaled to the stage's length (:mod:`semivit.core.ema`),
        with that length as its reference, so the file still describes a stage of any length."""
        return {}

    def eval_model(self) -> nn.Module:
        """The network that evaluation and prediction use."""
        return self.model

    def export_model(self) -> nn.Module:
        """The classifier the next pipeline stage starts from (an :class:`ImageClassifier` for image runs; the
        head for a run on cached features, which the Trainer puts back on its backbone at export)."""
        return self.eval_model()

    #: the method writes its own outlier_scores.csv (OpenMatch): the nearest-neighbour scores then go beside it
    scores_outliers = False

    def complete_export(self, model: nn.Module) -> nn.Module:
        """The exported classifier with what the method trained beside it (OpenMatch: its outlier head); ``model``
        may be the live network, so a method that adds to it returns a copy (default: ``model`` as it is)."""
        return model


def check_choices(params: Any) -> None:
    """Every choice setting (a ``Literal`` field) of a method's Params holds one of its choices: the config
    checks them when it parses them, and this checks Params built directly in Python, with one line naming the
    choices."""
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
        value = getattr(params, f.name)
        if choices and value not in choices:
            raise SemivitError(f"method.{f.name} must be {', '.join(map(str, choices[:-1]))} or {choices[-1]}, "
                               f"got '{value}'")


def load_teacher(path: str, method: str, hint: str, num_classes: int | None = None) -> nn.Module:
    """A frozen teacher network for ``method`` (distillation, Noisy Student, feature distillation) from a
    semivit model file or run folder; ``num_classes``: the classes it must predict (None: any)."""
    from semivit.models.io import load_model

    if not path:
        raise SemivitError(f"{method} needs a teacher: --set method.teacher=runs/NAME (a run folder or its "
                           f"model.safetensors){hint}")
    teacher, _ = load_model(path)
    if num_classes is not None and teacher.spec.num_classes != num_classes:
        raise SemivitError(f"the teacher predicts {teacher.spec.num_classes} classes, the data has "
                           f"{num_classes}: use a teacher trained on this data")
    return teacher.requires_grad_(False)


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        near = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SemivitError(f"unknown method '{name}'{hint}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_params(name: str, values: dict[str, Any]) -> Any:
    """The validated settings of method ``name`` (unknown keys are errors that suggest the nearest).

    A momentum given without the stage length it was chosen for (``method.ema`` without
    ``method.ema_ref_steps``; the pairs are the Params' ``MOMENTUM_REFERENCES``) is a per-step value: the
    default reference length belongs to the default momentum, and the paper's 0.9999 scaled from it would
    leave a long run's teacher almost frozen."""
    params = build_dataclass(method_class(name).Params, values, "method")
    for momentum, reference in getattr(params, "MOMENTUM_REFERENCES", {}).items():
        if momentum in values and reference not in values and getattr(params, reference) is not None:
            setattr(params, reference, None)
            log.info("method.%s=%s is used per step as given (set method.%s to declare the stage length it "
                     "was chosen for, and scale it to this stage)", momentum, values[momentum], reference)
    return params


def schedule_points(cfg: Config, steps: int) -> dict[str, float]:
    """Every schedule point of a stage of ``steps`` steps, in steps: the LR warm-up, the evaluation EMA's
    half-life, and the method's own (:meth:`~semivit.methods.base.Method.schedule`: a loss's start, a gate's
    interval, a teacher's half-life). Each moves with the stage's length, so scaling a stage by s scales them
    all by s: what tests/test_schedules.py checks for every shipped recipe."""
    points = {"optim.warmup": float(stage_steps(cfg.optim.warmup, steps))}
    if cfg.train.ema:
        points["train.ema_half_life"] = half_life(scaled_momentum(cfg.train.ema, cfg.train.ema_ref_steps, steps))
    params = method_params(cfg.train.method, cfg.method)
    points.update({f"method.{k}": float(v) for k, v in method_class(cfg.train.method).schedule(params, steps).items()})
    return points
