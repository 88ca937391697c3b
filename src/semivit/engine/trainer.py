"""The one training loop every method runs in.

:class:`Trainer` has three parts. :meth:`Trainer.setup` builds the stage: the model (or the one passed in),
the method, the batches its :class:`~semivit.methods.base.DataRequest` asks for, DDP, the optimizer, AMP and
the evaluation EMA, and restores a checkpoint (atomic, exact resume). :meth:`Trainer.step` is one optimizer
step: gradient accumulation, AMP, clipping, the method's end-of-step update. :meth:`Trainer.fit` runs the
steps and, after each, the typed callbacks of :mod:`semivit.engine.callbacks` (EMA update, validation,
checkpoint, log, NaN guard, time limit, interrupt). A method only says how to turn a
:class:`~semivit.data.loaders.Batch` into a loss; the inputs (:mod:`semivit.engine.inputs`) say whether batches
hold images or a backbone's cached features.

Examples:
    >>> from semivit.config import build_config
    >>> cfg = build_config({"train": {"method": "fixmatch", "steps": 20, "progress": False}})
    >>> result = Trainer(cfg).fit()  # doctest: +SKIP
    >>> result.metrics["test_top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semivit.config import Config, apply_overrides, save_config
from semivit.core.device import amp_dtype
from semivit.core.distributed import barrier, broadcast_buffers, device_and_ranks
from semivit.core.runlock import RunLock
from semivit.data import PreparedData, prepare_data
from semivit.data.splits import save_split
from semivit.engine import callbacks as cb
from semivit.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from semivit.engine.ema import ModelEMA, effective_config, scaled_momentum
from semivit.engine.inputs import BatchSource, ImageInputs, StageInputs, frozen_backbone_inputs
from semivit.engine.interrupt import GracefulInterrupt
from semivit.engine.logger import RunLogger
from semivit.engine.optim import build_optimizer, lr_at, set_lr
from semivit.engine.stage import build_model, check_train_settings, run_name, student_start, total_steps
from semivit.engine.stage_eval import StageEvaluation
from semivit.errors import SemivitError
from semivit.methods import method_class, method_params
from semivit.methods.base import schedule_points
from semivit.methods.multilabel import check_multilabel

log = logging.getLogger("semivit")

__all__ = ["TrainResult", "Trainer", "check_train_settings", "run_name", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: nn.Module


class Trainer:
    """Train ``cfg.train.method`` on ``cfg.data``; see :meth:`fit`.

    ``model``: train this network instead of building ``cfg.model`` (any ``nn.Module`` that maps the inputs
    to logits: an :class:`~semivit.models.factory.ImageClassifier`, a timm model wrapped by
    :func:`~semivit.models.factory.external_classifier`, or a head on cached features). ``inputs``: what the
    batches hold (images by default; :class:`semivit.features.FeatureInputs` for cached features).
    ``callbacks``: more :class:`~semivit.engine.callbacks.Callback` s, run after the built-in ones."""

    def __init__(self, cfg: Config, data: PreparedData | None = None, run_dir: Path | None = None, *,
                 model: nn.Module | None = None, inputs: StageInputs | None = None,
                 callbacks: Sequence[cb.Callback] = ()) -> None:
        self.device, self.dist = device_and_ranks(cfg.train.device)
        check_train_settings(cfg)  # before any data loads
        self.params = method_params(cfg.train.method, cfg.method)  # validate before loading data
        torch.manual_seed(cfg.train.seed)
        self.data = inputs.data if inputs is not None else (data or prepare_data(cfg.data, cfg.train.seed))
        method_cls = method_class(cfg.train.method)
        check_multilabel(cfg.multilabel, self.data.train.multilabel, cfg.train.method, method_cls.supports_multilabel,
                         method_cls.single_label_options(self.params))  # before any backbone embeds the data
        if inputs is None and model is None and cfg.features.frozen:  # a head on the backbone's cached features
            inputs, model = frozen_backbone_inputs(cfg, self.data, self.dist, self.device)
        self.inputs: StageInputs = inputs or ImageInputs(self.data, self.device)
        self.given_model, self.extra_callbacks = model, list(callbacks)
        self.cfg = self._resolve(cfg, model is None)
        self.run_dir = Path(run_dir or Path(self.cfg.train.out) / run_name(self.cfg))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"

    def _resolve(self, cfg: Config, builds_model: bool) -> Config:
        """The stage's config, resolved once into a new object that nothing writes afterwards (the caller's is
        never changed): ``model.name: auto`` becomes the method's default for the data, the stage's length is
        counted, and a distillation student's start (``model.pretrained``) is decided."""
        method_cls, main = method_class(cfg.train.method), self.dist.is_main
        resolved: dict[str, Any] = {}
        if cfg.model.name == "auto" and builds_model:
            resolved["model.name"] = method_cls.default_model(max(self.data.train.image_size))
            if main:
                log.info("model: %s (the default for %s; --model to choose another)", resolved["model.name"],
                         cfg.train.method)
        self.total = total_steps(cfg, method_cls, self.params, self.data, main)
        start = student_start(cfg, method_cls, self.params, self.total, main)
        if start is not None:
            resolved["model.pretrained"] = start
        return apply_overrides(cfg, resolved) if resolved else cfg

    def build_model(self) -> nn.Module:
        """The stage's network: the one passed in, else ``cfg.model`` built by :func:`engine.stage.build_model`."""
        if self.given_model is not None:
            return self.given_model
        return build_model(self.cfg, self.data, self.dist, self.device)

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self, write: bool = True) -> None:
        """Build the stage and restore ``last.pt`` when resuming; ``write``: create the run folder with its
        config.yaml and split.json (the planner sets it False to time steps without a trace)."""
        cfg, t, o = self.cfg, self.cfg.train, self.cfg.optim
        method_cls = method_class(t.method)
        if method_cls.trains_classifier and self.data.train.num_classes < 2:
            raise SemivitError(f"the data has {self.data.train.num_classes} class "
                               f"({', '.join(self.data.train.classes) or 'none'}): a classifier needs at least 2; "
                               f"add images of another class (class sub-folders, or a label column)")
        total = self.total
        method = self.method = method_cls(self.build_model(), self.params, self.data.train.num_classes, total,
                                          multilabel=cfg.multilabel if self.data.train.multilabel else None)
        method.setup(len(self.data.train))
        method.to(self.device)
        if t.compile:  # in place: state_dict keys, checkpoints and the EMA copy stay those of the plain module
            method.model.compile()
        self.pretraining = not method.trains_classifier  # judged by k-NN on features, not by its head
        if self.dist.is_main and write:  # what this stage's length made of each schedule point
            log.info("schedule over %d steps: %s", total, ", ".join(
                f"{k} {v:.0f}" for k, v in schedule_points(cfg, total).items()))
        self.method_settings = method.effective_settings()
        self.effective = effective_config(cfg, self.method_settings, total)
        request = method.data_request()
        self.batches: BatchSource = self.inputs.batches(cfg, request, self.dist)
        self.trained: nn.Module = method
        if self.dist.enabled:
            self.trained = nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=request.find_unused_parameters)
        self.optimizer = build_optimizer(method, o)
        self.amp = amp_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        # the evaluation EMA's momentum follows the stage's length (core/ema.py)
        self.ema = ModelEMA(method.export_model(), scaled_momentum(t.ema, t.ema_ref_steps, total, "train.ema")) \
            if t.ema else None
        self.base_lr = o.lr * (t.batch_size * t.accum_steps / 256 if o.scale_lr else 1.0)
        self.evaluation = StageEvaluation(self.inputs, self.dist, self.ckpt_dir, self.pretraining,
                                          {"method": t.method, "classifier_trained": not self.pretraining},
                                          method.complete_export)
        self.progress: dict[str, Any] = {"step": 0, "best_val": -1.0, "images": 0, "seconds": 0.0}
        if t.resume and self.last.is_file():
            self._restore()
        elif self.dist.is_main and write:
            self._write_run_files()
        barrier()

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.last)
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.batches.load_state_dict(ckpt["data"])
        restore_rng(ckpt["rng"])
        self.progress.update(ckpt["progress"])
        if self.dist.is_main:
            log.info("resumed from step %d of %d (%s)", self.progress["step"], self.total, self.last)

    def _write_run_files(self) -> None:
        cfg = self.cfg
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.effective, self.run_dir / "config.yaml")
            save_split(self.data.split, self.data.train, self.run_dir / "split.json",
                       {"source": cfg.data.source, "labels": cfg.data.labels, "val_spec": cfg.data.val,
                        "seed": cfg.train.seed})
        except OSError as e:
            raise SemivitError(f"cannot write to the run folder '{self.run_dir}' ({e.strerror or e}): choose a "
                               f"writable --out") from None

    def eval_net(self) -> nn.Module:
        """The network validation, the test pass and export read: the evaluation EMA, else the method's."""
        return self.ema.module if self.ema is not None else self.method.eval_model()

    def save_checkpoint(self, progress: dict[str, Any]) -> None:
        save_checkpoint({"step": progress["step"], "method": self.method.state_dict(),
                         "optimizer": self.optimizer.state_dict(),
                         "ema": self.ema.state_dict() if self.ema is not None else None,
                         "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                         "rng": capture_rng(), "data": self.batches.state_dict(), "progress": dict(progress)},
                        self.last)

    # ------------------------------------------------------------------------------------------ one step
    def step(self, step: int) -> cb.StepResult:
        """Optimizer step ``step``: the learning rate of the schedule, ``train.accum_steps`` micro-batches
        under AMP (DDP syncs gradients on the last only), gradient clipping, the optimizer, and the method's
        end-of-step update (an EMA teacher). Batch and augmentation randomness are pure functions of
        (seed, rank, step, micro-batch), so a resumed run takes exactly the steps it would have taken."""
        t, o = self.cfg.train, self.cfg.optim
        lr = lr_at(step, self.total, self.base_lr, o.warmup, o.min_lr_ratio)
        set_lr(self.optimizer, lr)
        outputs, images = [], 0
        for micro in range(t.accum_steps):
            torch.manual_seed(t.seed * 1_000_003 + self.dist.rank * 7919 + step * 131 + micro)
            batch = self.batches.next(step * t.accum_steps + micro)
            sync = micro == t.accum_steps - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.trained.no_sync()  # type: ignore[operator]
            with ctx:  # DDP's no_sync must cover the backward pass
                with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
                    out = self.trained(batch, step)
                self.scaler.scale(out.loss / t.accum_steps).backward()
            outputs.append(out)
            images += batch.size
        if o.clip_grad:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), o.clip_grad)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(step)
        return cb.StepResult(outputs, images, lr)

    def callbacks(self, stop: GracefulInterrupt) -> list[cb.Callback]:
        """The built-in callbacks, in the order they run after each step, then the caller's."""
        t, main, dist = self.cfg.train, self.dist.is_main, self.dist.enabled
        out: list[cb.Callback] = []
        if self.ema is not None:
            out.append(cb.EMAUpdate(self.ema, self.method.export_model))
        out += [cb.MethodValidation(self.method.validation_every,
                                    lambda step, logger: self.evaluation.method_validation(self.method, step, logger)),
                cb.NaNGuard(self.device, t.ckpt_every, self.last), cb.MetricLog(),
                cb.Validation(t.eval_every, lambda step, progress, logger: self.evaluation.validate(
                    self.eval_net(), step, progress, logger)),
                cb.Checkpoint(t.ckpt_every, self.save_checkpoint, main),
                cb.Interrupt(stop, dist, self.device, self.save_checkpoint, main, self.last)]
        if t.time_limit:
            out.append(cb.TimeLimit(t.time_limit, dist, self.device, main))
        return out + self.extra_callbacks

    # -------------------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        """Train the stage; the run folder is locked for the whole run (one run per folder)."""
        if not self.dist.is_main:
            return self._fit()
        with RunLock(self.run_dir):
            self._refuse_to_overwrite()
            return self._fit()

    def _refuse_to_overwrite(self) -> None:
        """A folder that holds a run (finished, or interrupted with a checkpoint) is continued only with
        ``train.resume`` and replaced only with ``train.overwrite``: running again with the same ``--name``
        would otherwise write over its config, split, checkpoints and results without a word."""
        t = self.cfg.train
        held = [p for p in (self.run_dir / "results.json", self.last) if p.is_file()]
        if held and not t.resume and not t.overwrite:
            what = "a finished run" if held[0].name == "results.json" else "an interrupted run"
            raise SemivitError(f"'{self.run_dir}' already holds {what}: add --resume to continue it, --overwrite to "
                               f"replace it, or choose another --name")

    def _fit(self) -> TrainResult:
        self.setup()
        t = self.cfg.train
        logger = RunLogger(self.run_dir, self.total, self.progress["step"], enabled=self.dist.is_main,
                           tensorboard=t.tensorboard, progress=t.progress, desc=self.run_dir.name, tracker=t.tracker,
                           settings=self.effective.to_dict())
        ctx = cb.FitContext(self.total, self.progress, logger)
        self.trained.train()
        with GracefulInterrupt() as stop:  # Ctrl-C, SIGTERM: finish the step, checkpoint, stop
            try:
                callbacks = self.callbacks(stop)
                while ctx.step < self.total and not ctx.stop:
                    result = self.step(ctx.step)
                    self.progress["step"] += 1
                    ctx.at_log = ctx.step % t.log_every == 0 or ctx.step == self.total
                    for callback in callbacks:
                        callback.on_step_end(ctx, result)
                for callback in callbacks:
                    callback.on_fit_end(ctx)
                if self.dist.enabled:
                    broadcast_buffers(self.method)  # every rank ends with rank 0's model (BatchNorm statistics)
                    if self.ema is not None:
                        broadcast_buffers(self.ema)
                metrics = self.evaluation.finish(self.eval_net(), ctx.step, self.progress, logger, t.method,
                                                 self._changed_by_length())
                if self.dist.is_main:
                    metrics.update(self.method.save_outputs(self.inputs, self.run_dir))
                    metrics.update(self._outlier_scores())
                    self.save_checkpoint(self.progress)
            finally:
                logger.close()
        barrier()
        return TrainResult(self.run_dir, metrics, self.evaluation.exported(self.eval_net()))

    def _outlier_scores(self) -> dict[str, Any]:
        """``train.outliers``: the nearest-neighbour outlier scores (engine/outliers.py), beside a method's own
        (``knn_outlier_scores.csv``) or as the run's ``outlier_scores.csv``; their metrics join results.json."""
        mode = self.cfg.train.outliers
        if mode == "off" or self.pretraining or self.data.train.multilabel or not len(self.data.split.labeled) or \
                (mode == "auto" and not self.cfg.features.frozen):
            return {}
        from semivit.engine.outliers import write_knn_outlier_scores

        name = "knn_outlier_scores.csv" if self.method.scores_outliers else "outlier_scores.csv"
        return write_knn_outlier_scores(self.inputs, self.eval_net(), self.run_dir, name)

    def _changed_by_length(self) -> dict[str, Any]:
        """The settings this stage's length changed (EMA momenta scaled to it), for results.json: a row of a
        benchmark table then says which momentum its teacher really had."""
        out = {f"method.{k}": v for k, v in self.method_settings.items()}
        if self.cfg.train.ema:
            out["train.ema"] = self.effective.train.ema
        return {"effective": out} if out else {}


def train(cfg: Config, data: PreparedData | None = None, run_dir: Path | None = None) -> TrainResult:
    """Train one method as configured; returns the run folder, final metrics and the eval model."""
    return Trainer(cfg, data, run_dir).fit()


