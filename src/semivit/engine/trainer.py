"""The one training loop every method runs in.

The Trainer owns: devices and DDP, the optimizer and per-step schedule, AMP, gradient accumulation and
clipping, the evaluation EMA, validation, checkpoints (atomic, exact resume), NaN guards and logging.
A method only says how to turn a :class:`~semivit.data.loaders.Batch` into a loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semivit.config import Config, save_config
from semivit.core.device import amp_dtype, resolve_device
from semivit.core.distributed import DistInfo, barrier, broadcast_buffers, init_distributed
from semivit.core.runlock import RunLock
from semivit.data import ImageSet, PreparedData, channel_stats, prepare_data
from semivit.data.loaders import BatchMaker
from semivit.data.splits import save_split, steps_for_epochs
from semivit.engine.checkpoint import (
    capture_rng,
    export_weights,
    load_checkpoint,
    read_export_meta,
    read_spec,
    restore_rng,
    save_checkpoint,
)
from semivit.engine.ema import ModelEMA, effective_config, scaled_momentum
from semivit.engine.evaluate import (
    _batched,
    classification_report,
    extract_features,
    knn_top1,
    linear_probe_top1,
    predict_logits,
    predict_stream_logits,
    snn_top1,
    top1,
)
from semivit.engine.interrupt import GracefulInterrupt, TrainingInterrupted
from semivit.engine.logger import RunLogger
from semivit.engine.optim import build_optimizer, lr_at, set_lr
from semivit.errors import NonFiniteLossError, SemivitError
from semivit.methods import method_class, method_params
from semivit.methods.base import schedule_points
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


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: ImageClassifier


class Trainer:
    """Train ``cfg.train.method`` on ``cfg.data``; see :meth:`fit`."""

    def __init__(self, cfg: Config, data: PreparedData | None = None, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        check_train_settings(cfg)  # before any data loads
        self.params = method_params(cfg.train.method, cfg.method)  # validate before loading data
        torch.manual_seed(cfg.train.seed)
        self.data = data or prepare_data(cfg.data, cfg.train.seed)
        if cfg.model.name == "auto":
            cfg.model.name = method_class(cfg.train.method).default_model(max(self.data.train.image_size))
            if self.dist.is_main:
                log.info("model: %s (the default for %s; --model to choose another)", cfg.model.name,
                         cfg.train.method)
        self.run_dir = Path(run_dir or Path(cfg.train.out) / run_name(cfg))
        self.ckpt_dir = self.run_dir / "checkpoints"

    # ----------------------------------------------------------------------------------------------- set-up
    def _build_model(self) -> ImageClassifier:
        train, m = self.data.train, self.cfg.model
        size = train.image_size
        if size[0] != size[1]:
            raise SemivitError(f"images are {size[0]}×{size[1]}; ViTs here need square images: "
                               f"set data.image_size")
        hub_weights, local = pretrained_source(m.name, m.pretrained)
        head_layers, head_hidden = m.head_layers or 0, None
        if m.head_layers is None and local:  # keep the projection-head layers the weights came with
            kwargs = (read_spec(local) or {}).get("kwargs", {})
            head_layers, head_hidden = kwargs.get("head_layers", 0), kwargs.get("head_hidden")
        torch.manual_seed(self.cfg.train.seed)  # same initial weights on every rank and every resume
        if hub_weights and self.dist.enabled and not self.dist.is_main:
            barrier()  # rank 0 downloads into the shared cache first; the others then read it
        bare = bare_file_defaults(m.name, local)  # a weights file without a config: timm's default config
        if bare is not None and self.dist.is_main:
            log.info("%s: '%s' carries no pretrained config, so timm's default for the architecture applies: %s; "
                     "%s", m.name, local, describe_config(bare), choose_resolution(bare, size[0], m.resolution)[1])
        mean, std = normalization(bare, train.channels) if bare is not None else (None, None)
        model = create_model(m.name, train.num_classes, train.channels, size[0], patch_size=m.patch_size,
                             embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                             drop_path=m.drop_path, classes=train.classes, head_layers=head_layers,
                             head_hidden=head_hidden, pretrained=hub_weights, cache_dir=m.cache_dir,
                             resolution=m.resolution, hub=bare, mean=mean, std=std)
        if hub_weights and self.dist.enabled and self.dist.is_main:
            barrier()
        if str(m.resolution).strip().lower() != "auto" and "backbone_size" not in model.spec.kwargs:
            raise SemivitError(f"model.resolution={m.resolution} applies to pretrained backbones (hub names, "
                               f"--pretrained files of a timm architecture); '{m.name}' trains from scratch at the "
                               f"data's size: set data.image_size instead")
        if not hub_weights and bare is None:  # pretrained backbones keep the mean/std they were trained with
            model.set_normalization(*channel_stats(train, seed=self.cfg.train.seed))
        if local:
            load_pretrained(model, local, verbose=self.dist.is_main)
        if m.head_init == "imprint":
            self._imprint(model, local)
        elif m.head_init != "random":
            raise SemivitError(f"unknown model.head_init '{m.head_init}': use random or imprint")
        return model

    def _export_meta(self) -> dict[str, Any]:
        """What the exported weights say of their training: the method, and whether its classifier was trained
        (a later stage's model.head_init=imprint leaves a trained classifier alone)."""
        return {"method": self.cfg.train.method, "classifier_trained": not self.pretraining}

    def _imprint(self, model: ImageClassifier, local: str | None) -> None:
        """Imprint the classifier from the labeled images' features (model.head_init=imprint); every rank
        computes the same rows from the same images, so DDP starts from one model. A classifier that arrived
        trained (weights exported by a stage that trained it, e.g. `--set model.head_init=imprint` over a whole
        recipe reaching its EMA-Teacher stage) is kept. ``local``: the weights file the model was loaded from."""
        meta = (read_export_meta(local) if local else None) or {}
        if meta.get("classifier_trained"):
            if self.dist.is_main:
                log.info("model.head_init=imprint: kept the classifier the weights came with (trained by %s)",
                         meta.get("method", "an earlier stage"))
            return
        labeled = torch.as_tensor(self.data.split.labeled, dtype=torch.long)
        if len(labeled) == 0:
            raise SemivitError("model.head_init=imprint needs labeled images: use --labels")
        classifier = model.classifier()
        model.to(self.device)
        feats = torch.cat(_batched(lambda x: model.classifier_input(x).float(), model, self.data.train, labeled,
                                   self.device, 256))
        n = imprint_classifier(classifier, feats, self.data.train.labels[labeled].to(feats.device))
        if self.dist.is_main:
            log.info("model.head_init=imprint: the classifier starts as the nearest class mean of %d labeled "
                     "images (%d of %d classes)", len(labeled), n, classifier.out_features)

    def _student_start(self, total: int) -> None:
        """Start a distillation student from its teacher's weights (model.pretrained becomes the teacher's file,
        so config.yaml records it) when ``model.pretrained: teacher`` says so, or when the stage is shorter than
        ``method.teacher_init_below`` steps and the student would otherwise start from random weights: a short
        stage cannot train a student from scratch up to its teacher."""
        m = self.cfg.model
        teacher = getattr(self.params, "teacher", "")
        if m.pretrained.strip().lower() == "teacher":
            if not teacher:
                raise SemivitError("model.pretrained=teacher starts a student from its teacher's weights: it needs "
                                   "a method with a teacher (distill, noisy_student) and method.teacher set")
        else:
            below = getattr(self.params, "teacher_init_below", 0)
            if not below or total >= below or pretrained_source(m.name, m.pretrained) != (False, None):
                return
            if self.dist.is_main:
                log.info("the student starts from its teacher's weights: %d steps are fewer than "
                         "method.teacher_init_below=%d (set it to 0 to train the student from scratch)", total, below)
        m.pretrained = str(teacher)

    def _total_steps(self, method_cls: type) -> int:
        t = self.cfg.train
        if t.steps is not None and t.epochs is not None:
            raise SemivitError("give train.steps or train.epochs, not both")
        if t.steps is not None:
            if t.steps <= 0:
                raise SemivitError(f"train.steps must be positive, got {t.steps}")
            return t.steps
        epochs = 100.0 if t.epochs is None else t.epochs
        if epochs <= 0:
            raise SemivitError(f"train.epochs must be positive, got {epochs}")
        # An epoch is a pass over the images a method learns most from: the labeled set for supervised
        # training, the unlabeled pool for semi-supervised methods (at μ unlabeled images per labeled one: with
        # 40 labels an epoch of labels is ~1 step) and for pre-training.
        split, batch = self.data.split, t.batch_size * t.accum_steps
        if method_cls.labeled_views and method_cls.trains_classifier and not method_cls.unlabeled_views:
            what, pool = "labeled", split.labeled
        else:
            what, pool = "unlabeled", split.unlabeled
            if method_cls.labeled_views and method_cls.unlabeled_views:  # μ unlabeled per labeled image
                batch = max(1, round(batch * getattr(self.params, "mu", 1)))
        steps = steps_for_epochs(epochs, len(pool), batch)
        if self.dist.is_main:
            log.info("train.epochs %g over %d %s images, %d a step: %d steps", epochs, len(pool), what, batch, steps)
        return steps

    def _batch_maker(self, method: Any) -> BatchMaker:
        t, d, world = self.cfg.train, self.cfg.data, self.dist.world
        if t.batch_size % world:
            raise SemivitError(f"train.batch_size {t.batch_size} must be divisible by the {world} processes")
        per_rank = t.batch_size // world
        support = getattr(method, "support", None)  # PAWS: a class-balanced labeled support set
        if method.labeled_views and not support:
            unlabeled = round(per_rank * method.unlabeled_ratio)
        else:  # pre-training (and PAWS, whose labeled batch is its support): the batch is unlabeled images
            unlabeled = per_rank
        if method.labeled_views and len(self.data.split.labeled) == 0:
            raise SemivitError("no labeled images in the split: use --labels with at least 1 per class")
        return BatchMaker(self.data.train, self.data.split.labeled, self.data.split.unlabeled,
                          labeled_views=tuple(method.labeled_views), unlabeled_views=tuple(method.unlabeled_views),
                          batch_size=per_rank, unlabeled_batch_size=unlabeled, device=self.device,
                          seed=t.seed, flip=self.data.flip, rank=self.dist.rank, world=world,
                          workers=self.cfg.data.workers, support=support,
                          shuffle_buffer=self.cfg.data.shuffle_buffer, view_options={"strong": {
                              "num_ops": d.strong_ops, "magnitude": self._strong_magnitude(),
                              "erase": d.strong_erase}, **getattr(method, "view_options", {})})

    def _strong_magnitude(self) -> float:
        if self.cfg.data.strong_magnitude is not None:
            return self.cfg.data.strong_magnitude
        # On 8×8 digits magnitude 5 gave 0.923 validation top-1 against 0.915 at 10 (EMA-Teacher, 2000 steps)
        return 5.0 if max(self.data.train.image_size) <= 16 else 10.0

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
        held = [p for p in (self.run_dir / "results.json", self.ckpt_dir / "last.pt") if p.is_file()]
        if held and not t.resume and not t.overwrite:
            what = "a finished run" if held[0].name == "results.json" else "an interrupted run"
            raise SemivitError(f"'{self.run_dir}' already holds {what}: add --resume to continue it, --overwrite to "
                               f"replace it, or choose another --name")

    def _fit(self) -> TrainResult:
        cfg, t, o = self.cfg, self.cfg.train, self.cfg.optim
        is_main = self.dist.is_main
        method_cls = method_class(t.method)
        if method_cls.trains_classifier and self.data.train.num_classes < 2:
            raise SemivitError(f"the data has {self.data.train.num_classes} class "
                               f"({', '.join(self.data.train.classes) or 'none'}): a classifier needs at least 2; "
                               f"add images of another class (class sub-folders, or a label column)")
        total = self._total_steps(method_cls)
        self._student_start(total)
        model = self._build_model()
        method = method_cls(model, self.params, self.data.train.num_classes, total)
        method.setup(len(self.data.train))
        method.to(self.device)
        self.method = method  # what a caller inspects after fit (buffers such as a pseudo-label memory)
        if t.compile:  # in place: state_dict keys, checkpoints and the EMA copy stay those of the plain module
            method.model.compile()
        self.pretraining = not method.trains_classifier  # judged by k-NN on features, not by its head
        # the settings as this stage's length makes them (EMA momenta): config.yaml and results.json
        if self.dist.is_main:  # what this stage's length made of each schedule point (a share or a momentum)
            log.info("schedule over %d steps: %s", total, ", ".join(
                f"{k} {v:.0f}" for k, v in schedule_points(cfg, total).items()))
        method_settings = method.effective_settings()
        effective = effective_config(cfg, method_settings, total)
        batches = self._batch_maker(method)
        trained: nn.Module = method
        if self.dist.enabled:
            trained = nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=method.find_unused_parameters)
        optimizer = build_optimizer(method, o)
        dtype = amp_dtype(t.amp, self.device)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        # the evaluation EMA's momentum follows the stage's length (engine/ema.py)
        ema = ModelEMA(method.export_model(), scaled_momentum(t.ema, t.ema_ref_steps, total, "train.ema")) \
            if t.ema else None
        base_lr = o.lr * (t.batch_size * t.accum_steps / 256 if o.scale_lr else 1.0)

        state = {"step": 0, "best_val": -1.0, "images": 0, "seconds": 0.0}
        last = self.ckpt_dir / "last.pt"
        if t.resume and last.is_file():
            ckpt = load_checkpoint(last)
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.load_state_dict(ckpt["ema"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            batches.load_state_dict(ckpt["data"])
            restore_rng(ckpt["rng"])
            state.update(ckpt["progress"])
            if is_main:
                log.info("resumed from step %d of %d (%s)", state["step"], total, last)
        elif is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(effective, self.run_dir / "config.yaml")
                save_split(self.data.split, self.data.train, self.run_dir / "split.json",
                           {"source": cfg.data.source, "labels": cfg.data.labels, "val_spec": cfg.data.val,
                            "seed": t.seed})
            except OSError as e:
                raise SemivitError(f"cannot write to the run folder '{self.run_dir}' ({e.strerror or e}): choose a "
                                   f"writable --out") from None
        barrier()

        def eval_net() -> nn.Module:
            return ema.module if ema is not None else method.eval_model()

        def checkpoint(step: int) -> None:
            save_checkpoint({"step": step, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                             "ema": ema.state_dict() if ema is not None else None,
                             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                             "rng": capture_rng(), "data": batches.state_dict(),
                             "progress": dict(state, step=step)}, last)

        logger = RunLogger(self.run_dir, total, state["step"], enabled=is_main, tensorboard=t.tensorboard,
                           progress=t.progress, desc=self.run_dir.name)
        sums: dict[str, torch.Tensor] = {}
        count, window_images, window_start = 0, 0, time.perf_counter()
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        check_every_step = self.device.type == "cpu"  # a host sync per step is free on CPU, not on GPU
        trained.train()
        step = state["step"]
        # Ctrl-C: finish the step, checkpoint, stop (engine/interrupt.py)
        with GracefulInterrupt() as stop:
            try:
                while step < total:
                    lr = lr_at(step, total, base_lr, o.warmup, o.min_lr_ratio)
                    set_lr(optimizer, lr)
                    for micro in range(t.accum_steps):
                        torch.manual_seed(t.seed * 1_000_003 + self.dist.rank * 7919 + step * 131 + micro)
                        batch = batches.next(step * t.accum_steps + micro)
                        sync = micro == t.accum_steps - 1 or not self.dist.enabled
                        ctx = contextlib.nullcontext() if sync else trained.no_sync()  # type: ignore[operator]
                        with ctx:  # DDP's no_sync must cover the backward pass
                            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16,
                                                enabled=dtype is not None):
                                out = trained(batch, step)
                            scaler.scale(out.loss / t.accum_steps).backward()
                        window_images += batch.size
                        bad |= ~torch.isfinite(out.loss.detach())
                        for k, v in {"loss": out.loss, **out.metrics}.items():
                            sums[k] = sums.get(k, 0) + v.detach().float()
                        count += 1
                    if o.clip_grad:
                        if scaler.is_enabled():
                            scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(method.parameters(), o.clip_grad)
                    if scaler.is_enabled():
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    method.on_step_end(step)
                    if ema is not None:
                        ema.update(method.export_model())
                    step += 1
                    if method.validation_every and step % method.validation_every == 0:
                        self._method_validation(method, step, logger)
                    logger.progress(1)
                    at_log = step % t.log_every == 0 or step == total
                    if (check_every_step or at_log or step % t.ckpt_every == 0) and bool(bad):
                        raise NonFiniteLossError(
                            f"the loss became NaN or infinite by step {step}; the last good checkpoint is kept "
                            f"({last if last.exists() else 'none yet'}): lower optim.lr or set optim.clip_grad")
                    if at_log:
                        elapsed = time.perf_counter() - window_start
                        row = {k: float(v) / count for k, v in sums.items()}
                        row.update(lr=lr, images_per_sec=window_images / max(elapsed, 1e-9))
                        state["images"] += window_images
                        state["seconds"] += elapsed
                        logger.log(step, row)
                        shown = ("loss", "acc", "mask", "pseudo_acc", "images_per_sec")
                        logger.progress(0, {k: v for k, v in row.items() if k in shown})
                        sums, count, window_images = {}, 0, 0
                        window_start = time.perf_counter()
                    if t.eval_every and step % t.eval_every == 0 and step < total:
                        self._validate(eval_net(), step, state, logger)
                        window_start = time.perf_counter()
                    if step % t.ckpt_every == 0 and is_main:
                        checkpoint(step)
                    signum = self._interrupt_requested(stop, at_log)
                    if signum:
                        if is_main:
                            checkpoint(step)
                        barrier()
                        name = signal.Signals(signum).name
                        raise TrainingInterrupted(f"interrupted ({name}) at step {step} of {total}; saved {last}: "
                                                  f"continue with the same command and --resume", signum)
                    # one process checks every step; DDP ranks agree at log steps (a broadcast is a host sync)
                    if t.time_limit and (at_log or not self.dist.enabled) \
                            and self._past_time_limit(state, window_start):
                        if is_main:
                            log.info("time limit of %.0f s reached at step %d of %d", t.time_limit, step, total)
                        break
                if self.dist.enabled:
                    broadcast_buffers(method)  # every rank ends with rank 0's model (BatchNorm statistics)
                    if ema is not None:
                        broadcast_buffers(ema)
                metrics = self._finish(eval_net(), step, state, logger,
                                       self._changed_by_length(method_settings, effective))
                if is_main:
                    checkpoint(step)
            finally:
                logger.close()
        barrier()
        final_model = eval_net()
        assert isinstance(final_model, ImageClassifier)
        return TrainResult(self.run_dir, metrics, final_model)

    def _interrupt_requested(self, stop: GracefulInterrupt, at_log: bool) -> int:
        """The stop signal to act on after this step (0: none): one process decides every step; DDP ranks
        (each gets the signal at a slightly different moment, or only some get it) agree at log steps, so no
        rank leaves a collective alone; all then stop on the highest signal number any rank received."""
        if not self.dist.enabled:
            return stop.signum if stop.requested else 0
        if not at_log:
            return 0
        flag = torch.tensor(float(stop.signum if stop.requested else 0), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag)

    def _past_time_limit(self, state: dict, window_start: float) -> bool:
        """Training seconds so far (earlier runs of a resumed job included) past ``train.time_limit``; one
        decision for all ranks (rank 0's clock), so no process stops alone."""
        spent = state["seconds"] + time.perf_counter() - window_start
        if not self.dist.enabled:
            return spent > self.cfg.train.time_limit
        flag = torch.tensor(float(spent > self.cfg.train.time_limit), device=self.device)
        torch.distributed.broadcast(flag, 0)
        return bool(flag)

    # ------------------------------------------------------------------------------------------ evaluation
    def _validate(self, net: nn.Module, step: int, state: dict, logger: RunLogger) -> float | None:
        """Top-1 on the validation split (rank 0); keeps the best weights as best.safetensors.

        Pre-training methods (no labeled stream) are judged by k-NN top-1 of their frozen features, with
        the labeled images as the memory bank: their classifier head is untrained.
        """
        if not self.dist.is_main or len(self.data.split.val) == 0:
            barrier()
            return None
        val = self.data.split.val
        if self.pretraining:
            acc, _ = self._knn(net, self.data.train, val)
            logger.log(step, {"knn_top1": acc}, prefix="val")
        else:
            logits = predict_logits(net, self.data.train, val, device=self.device)
            acc = top1(logits, self.data.train.labels[val])
            logger.log(step, {"top1": acc}, prefix="val")
        if acc > state["best_val"]:
            state["best_val"] = acc
            state["best_step"] = step
            export_weights(net, self.ckpt_dir / "best.safetensors", net.spec.to_dict(), self._export_meta())
        barrier()
        return acc

    def _method_validation(self, method: Any, step: int, logger: RunLogger) -> None:
        """Hand the method its model's logits on the validation split (every rank computes them, so a
        decision such as SSMAE's gate is the same everywhere). The test set is never used here."""
        val = self.data.split.val
        if len(val) == 0:
            raise SemivitError(f"method '{method.name}' decides on a validation split, but it is empty: "
                               f"set data.val (e.g. 5-per-class)")
        logits = predict_logits(method.eval_model(), self.data.train, val, device=self.device)
        values = method.on_validation(step, logits, self.data.train.labels[val])
        if values:
            logger.log(step, values, prefix="gate")

    def _knn(self, net: nn.Module, images: ImageSet, queries: torch.Tensor,
             probe: bool = False) -> tuple[float, dict[str, float]]:
        """k-NN top-1 of ``images[queries]`` with the labeled set as the bank; with ``probe`` also a linear
        probe's and the soft nearest-neighbour classifier's (PAWS's) top-1. All read the embedding the
        method trained (``net.embed``: PAWS's projector output, as the reference's ``snn_eval.py``; the
        pooled features for methods without one)."""
        train, labeled = self.data.train, self.data.split.labeled
        bank = extract_features(net, train, labeled, device=self.device, embedding=True)
        feats = extract_features(net, images, queries, device=self.device, embedding=True)
        bank_y, query_y = train.labels[labeled], images.labels[queries]
        extra = ({"linear_top1": linear_probe_top1(bank, bank_y, feats, query_y),
                  "snn_top1": snn_top1(bank, bank_y, feats, query_y)} if probe else {})
        return knn_top1(bank, bank_y, feats, query_y), extra

    def _changed_by_length(self, method_settings: dict[str, Any], effective: Config) -> dict[str, Any]:
        """The settings this stage's length changed (EMA momenta scaled to it), for results.json: a row of a
        benchmark table then says which momentum its teacher really had."""
        out = {f"method.{k}": v for k, v in method_settings.items()}
        if self.cfg.train.ema:
            out["train.ema"] = effective.train.ema
        return {"effective": out} if out else {}

    def _finish(self, net: nn.Module, step: int, state: dict, logger: RunLogger,
                effective: dict[str, Any]) -> dict[str, Any]:
        val = self._validate(net, step, state, logger)
        metrics: dict[str, Any] = {"method": self.cfg.train.method, "steps": step,
                                   # labels training and validation each used (validation may add labels)
                                   **self.data.split.label_counts(), "val_top1": val,
                                   "best_val_top1": state["best_val"] if state["best_val"] >= 0 else None,
                                   "best_step": state.get("best_step"),
                                   "train_seconds": state["seconds"],
                                   "images_per_sec": state["images"] / max(state["seconds"], 1e-9), **effective}
        if not self.dist.is_main:
            return metrics
        export_weights(net, self.ckpt_dir / "model.safetensors", net.spec.to_dict(), self._export_meta())
        test = self.data.test
        streams = hasattr(net, "stream_logits")  # a dual-stream model (Semiformer): each head alone, and fused
        test_streams: dict[str, torch.Tensor] = {}
        if test is not None and len(test):
            if streams:  # one pass gives the fused logits and each stream's
                test_streams = predict_stream_logits(net, test, device=self.device)
            logits = test_streams["fused"] if streams else predict_logits(net, test, device=self.device)
            report = classification_report(logits, test.labels, test.classes)
            metrics.update(test_top1=report["top1"], test_ece=report["ece"],
                           **{f"test_{k}": report[k] for k in ("top5", "roc_auc") if k in report})
            logger.log(step, {"top1": report["top1"]}, prefix="test")
            if self.pretraining:  # representation quality: k-NN and a linear probe fitted on the labels
                knn, extra = self._knn(net, test, torch.arange(len(test)), probe=True)
                metrics.update(test_knn_top1=knn, **{f"test_{k}": v for k, v in extra.items()})
                logger.log(step, {"knn_top1": knn, **extra}, prefix="test")
        if streams:
            if len(self.data.split.val):
                val_logits = predict_stream_logits(net, self.data.train, self.data.split.val, device=self.device)
                val_labels = self.data.train.labels[self.data.split.val]
                accs = {k: top1(v, val_labels) for k, v in val_logits.items()}
                metrics.update({f"val_top1_{k}": v for k, v in accs.items()})
                logger.log(step, {f"top1_{k}": v for k, v in accs.items()}, prefix="val")
            if test_streams:
                accs = {k: top1(v, test.labels) for k, v in test_streams.items()}
                metrics.update({f"test_top1_{k}": v for k, v in accs.items()})
                logger.log(step, {f"top1_{k}": v for k, v in accs.items()}, prefix="test")
        (self.run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def train(cfg: Config, data: PreparedData | None = None, run_dir: Path | None = None) -> TrainResult:
    """Train one method as configured; returns the run folder, final metrics and the eval model."""
    return Trainer(cfg, data, run_dir).fit()

