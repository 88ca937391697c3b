"""What the training loop does around each step, as small typed objects (not string-named hooks).

:meth:`~semivit.engine.trainer.Trainer.fit` runs :meth:`~semivit.engine.trainer.Trainer.step` and then each
callback's :meth:`Callback.on_step_end` in order; a callback reads and writes the loop's shared state through
:class:`FitContext`. None of them syncs the host with the device at steps where it has nothing to do (a GPU
run reads the loss only at log steps).

Examples:
    >>> class PrintLoss(Callback):
    ...     def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
    ...         if ctx.at_log:
    ...             print(ctx.step, float(result.outputs[-1].loss))
    >>> # Trainer(cfg, callbacks=[PrintLoss()]).fit()
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from semivit.core.distributed import barrier
from semivit.engine.ema import ModelEMA
from semivit.engine.interrupt import GracefulInterrupt, TrainingInterrupted
from semivit.engine.logger import RunLogger
from semivit.errors import NonFiniteLossError

if TYPE_CHECKING:
    from semivit.methods.base import StepOutput

log = logging.getLogger("semivit")


@dataclass
class StepResult:
    """One optimizer step: each micro-batch's output, the images it consumed, and its learning rate."""

    outputs: list[StepOutput]
    images: int
    lr: float


@dataclass
class FitContext:
    """The loop's state, shared by the callbacks. ``progress`` (step, best validation score, images and
    training seconds so far, earlier runs of a resumed job included) is saved in every checkpoint;
    ``window_start`` is when the current timing window began (validation is not counted as training time);
    a callback sets ``stop`` to end training after this step."""

    total: int
    progress: dict[str, Any]
    logger: RunLogger
    window_start: float = field(default_factory=time.perf_counter)
    at_log: bool = False
    stop: bool = False

    @property
    def step(self) -> int:
        return int(self.progress["step"])

    def training_seconds(self) -> float:
        return float(self.progress["seconds"]) + time.perf_counter() - self.window_start


class Callback:
    """Base class; override what you need. ``per_step_cost``: the callback does work every step, so the
    ``--budget`` planner times it together with the step."""

    per_step_cost: ClassVar[bool] = False

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        """After the optimizer step; ``ctx.step`` already counts it."""

    def on_fit_end(self, ctx: FitContext) -> None:
        """After the last step, before the final evaluation."""


class EMAUpdate(Callback):
    """The evaluation EMA (``train.ema``): θ' ← m·θ' + (1−m)·θ of the exported model after every step."""

    per_step_cost = True

    def __init__(self, ema: ModelEMA, source: Any) -> None:
        self.ema, self.source = ema, source

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        self.ema.update(self.source())


class MethodValidation(Callback):
    """Every ``every`` steps, hand the method its model's validation logits (SSMAE's gate)."""

    def __init__(self, every: int, run: Any) -> None:
        self.every, self.run = every, run

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        if self.every and ctx.step % self.every == 0:
            self.run(ctx.step, ctx.logger)


class NaNGuard(Callback):
    """Stop with :class:`~semivit.errors.NonFiniteLossError` once a loss is NaN or infinite. The flag is
    accumulated on the device every step and read on the host only at log and checkpoint steps (every step
    on a CPU, where reading it costs nothing), so the last good checkpoint is never overwritten by a bad one."""

    per_step_cost = True

    def __init__(self, device: torch.device, ckpt_every: int, last: Path) -> None:
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.every_step = device.type == "cpu"
        self.ckpt_every, self.last = ckpt_every, last

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        for out in result.outputs:
            self.bad |= ~torch.isfinite(out.loss.detach())
        if (self.every_step or ctx.at_log or ctx.step % self.ckpt_every == 0) and bool(self.bad):
            raise NonFiniteLossError(
                f"the loss became NaN or infinite by step {ctx.step}; the last good checkpoint is kept "
                f"({self.last if self.last.exists() else 'none yet'}): lower optim.lr or set optim.clip_grad")


class MetricLog(Callback):
    """Means of the loss and the method's metrics over each ``log_every`` window, with the learning rate
    and images/s, to metrics.csv, TensorBoard and the progress bar."""

    SHOWN = ("loss", "acc", "mask", "pseudo_acc", "images_per_sec")

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = self.images = 0

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        for out in result.outputs:
            for k, v in {"loss": out.loss, **out.metrics}.items():
                self.sums[k] = self.sums.get(k, 0) + v.detach().float()
            self.count += 1
        self.images += result.images
        ctx.logger.progress(1)
        if not ctx.at_log:
            return
        elapsed = time.perf_counter() - ctx.window_start
        row = {k: float(v) / self.count for k, v in self.sums.items()}
        row.update(lr=result.lr, images_per_sec=self.images / max(elapsed, 1e-9))
        ctx.progress["images"] += self.images
        ctx.progress["seconds"] += elapsed
        ctx.logger.log(ctx.step, row)
        ctx.logger.progress(0, {k: v for k, v in row.items() if k in self.SHOWN})
        self.sums, self.count, self.images = {}, 0, 0
        ctx.window_start = time.perf_counter()


class Validation(Callback):
    """Validation top-1 every ``every`` steps (keeps the best weights); its time is not training time."""

    def __init__(self, every: int, run: Any) -> None:
        self.every, self.run = every, run

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        if self.every and ctx.step % self.every == 0 and ctx.step < ctx.total:
            self.run(ctx.step, ctx.progress, ctx.logger)
            ctx.window_start = time.perf_counter()


class Checkpoint(Callback):
    """``last.pt`` every ``every`` steps, written atomically by rank 0."""

    def __init__(self, every: int, save: Any, is_main: bool) -> None:
        self.every, self.save, self.is_main = every, save, is_main

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        if ctx.step % self.every == 0 and self.is_main:
            self.save(ctx.progress)


class Interrupt(Callback):
    """Ctrl-C, SIGTERM (and SLURM's USR1/USR2): finish the step, checkpoint, stop with
    :class:`~semivit.engine.interrupt.TrainingInterrupted`. One process acts every step; DDP ranks (each gets
    the signal at a slightly different moment, or only some get it) agree at log steps, so no rank leaves a
    collective alone; all then stop on the highest signal number any rank received."""

    def __init__(self, stop: GracefulInterrupt, distributed: bool, device: torch.device, save: Any,
                 is_main: bool, last: Path) -> None:
        self.stop, self.distributed, self.device = stop, distributed, device
        self.save, self.is_main, self.last = save, is_main, last

    def requested(self, at_log: bool) -> int:
        if not self.distributed:
            return self.stop.signum if self.stop.requested else 0
        if not at_log:
            return 0
        flag = torch.tensor(float(self.stop.signum if self.stop.requested else 0), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag)

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        signum = self.requested(ctx.at_log)
        if not signum:
            return
        if self.is_main:
            self.save(ctx.progress)
        barrier()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"interrupted ({name}) at step {ctx.step} of {ctx.total}; saved {self.last}: "
                                  f"continue with the same command and --resume", signum)


class TimeLimit(Callback):
    """Stop after ``limit`` training seconds (earlier runs of a resumed job included). One process checks
    every step; DDP ranks decide together at log steps on rank 0's clock, so no process stops alone."""

    def __init__(self, limit: float, distributed: bool, device: torch.device, is_main: bool) -> None:
        self.limit, self.distributed, self.device, self.is_main = limit, distributed, device, is_main

    def on_step_end(self, ctx: FitContext, result: StepResult) -> None:
        if self.distributed and not ctx.at_log:
            return
        past = ctx.training_seconds() > self.limit
        if self.distributed:
            flag = torch.tensor(float(past), device=self.device)
            torch.distributed.broadcast(flag, 0)
            past = bool(flag)
        if past:
            if self.is_main:
                log.info("time limit of %.0f s reached at step %d of %d", self.limit, ctx.step, ctx.total)
            ctx.stop = True
