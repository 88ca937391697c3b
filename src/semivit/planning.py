"""``--budget 20m``: a wall-clock budget for a whole recipe, planned before training instead of cut short.

A recipe's step counts are tuned for one machine and one data set; the same recipe on a slower machine or
larger images would either overrun or, with ``train.time_limit``, stop in the middle of its schedules (the
learning rate never anneals, the EMA teacher never catches up). Instead, before the first stage:

1. every stage is timed on the data it will train on: a few optimizer steps of its method, model and batch on
   a throw-away copy (the first step is not counted: it pays for allocation and caching);
2. one factor s scales every stage's nominal steps, n_k → round(s·n_k), so that Σ s·n_k·t_k fits the budget
   left after loading the data and timing, less each stage's evaluation (its model over the validation images
   every ``train.eval_every`` steps and at the end, and over the test images once: timed per image on a sample)
   and a reserve for export and what timing misses (without the evaluation term, a 10-minute full fine-tuning
   of EfficientNet-Lite0 on CIFAR-10 ran 14.7 minutes on a shared 2-core machine, its two passes over 10,000
   test images uncounted; with it, 11.6 on the same machine, the rest from other jobs slowing its steps):
   the recipe keeps its proportions between stages, and each stage's warm-up and cosine schedule (and the
   EMA momenta, declared for their stage length: :mod:`semivit.core.ema`) are planned for the steps it
   will really get;
3. the plan is printed (steps per stage, images per step, seconds per step, expected minutes) and written to
   ``plan.json``; ``--resume`` reuses it, so a resumed run trains exactly the planned steps. Each stage also
   gets a hard ``train.time_limit`` of 1.5× its share, a guard against a machine that slows down later (or, where a
   capped plan leaves budget unused, its share of that too).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from semivit.config import Config, apply_overrides
from semivit.errors import SemivitError

log = logging.getLogger("semivit")

#: share of the budget kept for validation passes, the final test evaluation and exports
RESERVE = 0.1
MIN_STEPS = 20  # below this a stage's schedule is meaningless: the budget is too small for the recipe
TIME_LIMIT_GUARD = 1.5
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``"15m"``, ``"1h30m"``, ``"90s"``, ``"2.5h"`` or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh]?)", value)
        if not value or "".join(n + u for n, u in parts) != value:
            raise SemivitError(f"cannot read the budget '{text}': use e.g. 15m, 1h30m, 90s or a number of seconds")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise SemivitError(f"the budget must be positive, got '{text}'")
    return seconds


@dataclass
class StagePlan:
    method: str
    nominal_steps: int
    steps: int
    images_per_step: int
    seconds_per_step: float
    eval_seconds: float = 0.0  # the stage's validations and closing test pass (estimated)
    time_limit: float = 0.0  # the stage's hard limit (0: TIME_LIMIT_GUARD × its seconds, as older plans had)

    @property
    def seconds(self) -> float:
        return self.steps * self.seconds_per_step


class StageTiming(NamedTuple):
    seconds_per_step: float
    images_per_step: int
    eval_seconds_per_image: float = 0.0


#: images of the training part run through the stage's model to time its evaluation (image stages)
EVAL_SAMPLE = 256


def _evaluation_seconds_per_image(trainer: Any) -> float:
    """Seconds one validation or test image costs the stage's evaluation: its exported model in eval mode over a
    sample of the images (image stages), or over the part it evaluates (cached features, clips: cheap)."""
    from semivit.engine.evaluate import predict_logits
    from semivit.engine.inputs import ImageInputs

    data = trainer.data
    net = trainer.method.export_model()
    was = net.training
    start = time.perf_counter()
    if isinstance(trainer.inputs, ImageInputs):
        n = min(EVAL_SAMPLE, len(data.train))
        predict_logits(net, data.train, torch.arange(n), device=trainer.device)
    else:
        part = "val" if len(data.split.val) else "test" if data.test is not None else None
        if part is None:
            return 0.0
        n = len(data.split.val) if part == "val" else len(data.test)
        trainer.inputs.logits(net, part)
    net.train(was)
    return (time.perf_counter() - start) / max(n, 1)


def time_stage(cfg: Config, data: Any, previous: Config | None = None, steps: int = 4) -> StageTiming:
    """Seconds per optimizer step of ``cfg``'s stage on ``data``, images per step, and seconds per evaluated
    image (:func:`_evaluation_seconds_per_image`): the Trainer's own
    :meth:`~semivit.engine.trainer.Trainer.step` (the batch with its views, AMP, accumulation, clipping, the
    method's end-of-step update) and the callbacks that work every step (the evaluation EMA, the NaN guard),
    on a throw-away model.

    Nothing is written: a stage that needs earlier stages' weights (a fine-tune, a teacher) is timed on a
    fresh network of the same shape (``previous``: the stage before, whose model stands in as the teacher)."""
    from semivit.engine.callbacks import FitContext
    from semivit.engine.checkpoint import export_weights
    from semivit.engine.interrupt import GracefulInterrupt
    from semivit.engine.logger import RunLogger
    from semivit.engine.trainer import Trainer
    from semivit.methods import method_class

    cfg = copy.deepcopy(cfg)
    cfg.train.steps, cfg.train.epochs, cfg.train.resume = max(steps, 1) + 1, None, False
    # an earlier stage's file is not written yet, and weights need not be read: the shape is what counts, except
    # where the weights' own config sets the input size (a pretrained backbone with model.resolution: the shape
    # of the pretrained network at that size) or for a head on cached features, which needs the real backbone:
    # the first timing embeds the data (its time is spent before the plan and counted as such), later stages and
    # the run read the cache
    from semivit.models.pretrained import pretrained_source

    hub, local = pretrained_source(cfg.model.name, cfg.model.pretrained)
    sized = str(cfg.model.resolution).strip().lower() != "auto" and (hub or (local and Path(local).is_file()))
    if not cfg.features.frozen and not sized:
        cfg.model.pretrained = "none"
    with tempfile.TemporaryDirectory() as tmp:
        if method_class(cfg.train.method).previous_stage_is_teacher and previous is not None:
            stand_in = copy.deepcopy(previous)
            stand_in.model.pretrained = "none"
            stand_in.train.method = "supervised"
            net = Trainer(stand_in, data).build_model()
            export_weights(net, Path(tmp) / "teacher.safetensors", net.spec.to_dict())
            cfg.method = {**cfg.method, "teacher": str(Path(tmp) / "teacher.safetensors")}
        trainer = Trainer(cfg, data, run_dir=Path(tmp) / "probe")
        trainer.setup(write=False)
        trainer.trained.train()
        ctx = FitContext(trainer.total, trainer.progress, RunLogger(Path(tmp), 0, 0, enabled=False))
        with GracefulInterrupt() as stop:
            per_step = [c for c in trainer.callbacks(stop) if c.per_step_cost]
            times, images = [], 0
            for i in range(steps + 1):
                start = time.perf_counter()
                result = trainer.step(i)
                trainer.progress["step"] = i + 1
                for callback in per_step:
                    callback.on_step_end(ctx, result)
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first step pays for allocations and caches
                    times.append(time.perf_counter() - start)
                images = result.images
        per_image = _evaluation_seconds_per_image(trainer)
    return StageTiming(sorted(times)[len(times) // 2], images, per_image)


def _evaluation_images(cfg: Config, data: Any) -> tuple[int, float]:
    """Images a stage evaluates: once at its end (the test images and the last validation), and per step (the
    validation images every ``train.eval_every`` steps)."""
    n_val = len(data.split.val) if hasattr(data, "split") else 0
    n_test = len(data.test) if getattr(data, "test", None) is not None else 0
    every = cfg.train.eval_every or 0
    return n_test + n_val, n_val / every if every > 0 else 0.0


def plan_budget(configs: list[Config], data: Any, budget: float, spent: float = 0.0,
                stretch: bool = True) -> list[StagePlan]:
    """The steps of every stage that make the recipe fit ``budget`` seconds, ``spent`` of which are gone already
    (data loading): the plan, which :func:`apply_plan` turns into new stage configs. See the module docstring.
    ``stretch=False``: the budget is a cap: a recipe that fits keeps its own steps instead of growing to fill it
    (heads tuned for thousands of steps are not run for a hundred times more)."""
    if any(c.train.steps is None for c in configs):
        raise SemivitError("--budget plans from each stage's train.steps: give the recipe's stages steps, not epochs")
    start = time.perf_counter()
    timings = []
    for k, cfg in enumerate(configs):
        timings.append(time_stage(cfg, data, configs[k - 1] if k else None))
    timing = time.perf_counter() - start
    if any(c.features.frozen for c in configs):
        log.info("timed the stages in %.0f s, embedding the data once for the frozen backbone's cache (the stages "
                 "then read it): that time is spent, the plan shares out what is left", timing)
    nominal = [int(c.train.steps) for c in configs]  # type: ignore[arg-type]
    # evaluation: a fixed part (test, last validation) and a part that grows with the steps (validations)
    evaluated = [_evaluation_images(c, data) for c in configs]
    fixed = sum(once * t.eval_seconds_per_image for (once, _), t in zip(evaluated, timings))
    per_step = [t.seconds_per_step + each * t.eval_seconds_per_image for (_, each), t in zip(evaluated, timings)]
    left = (budget - spent - timing - fixed) * (1 - RESERVE)
    cost = sum(n * t for n, t in zip(nominal, per_step))
    scale = left / cost if cost > 0 else 1.0
    if not stretch:
        scale = min(scale, 1.0)
    plans = []
    for c, n, t, (once, each) in zip(configs, nominal, timings, evaluated):
        steps = max(1, round(n * scale))
        plans.append(StagePlan(c.train.method, n, steps, t.images_per_step, t.seconds_per_step,
                               (once + each * steps) * t.eval_seconds_per_image))
    # the hard limit guards against a machine that slows down later; where the plan leaves budget unused (a capped
    # recipe that fits), each stage may use its share of it, so a stage of a few seconds is not cut short by noise
    planned = sum(p.seconds for p in plans)
    spare = max(left - planned, 0.0)
    for p in plans:
        p.time_limit = max(p.seconds * TIME_LIMIT_GUARD, p.seconds + spare * p.seconds / planned if planned else 0.0)
    short = [p for p in plans if p.steps < MIN_STEPS]
    if left <= 0 or short:
        need = sum(MIN_STEPS * t for t in per_step) / (1 - RESERVE) + spent + fixed + (time.perf_counter() - start)
        raise SemivitError(f"a budget of {budget / 60:.1f} min leaves {short[0].method if short else 'no stage'} "
                           f"fewer than {MIN_STEPS} steps on this machine: give at least {need / 60:.1f} min, "
                           f"or a smaller model / batch")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank timed its own steps; all must train the same number: rank 0's plan for everyone
        steps = torch.tensor([p.steps for p in plans], dtype=torch.float64)
        torch.distributed.broadcast(steps, 0)
        for p, n in zip(plans, steps.tolist()):
            p.steps = int(n)
    return plans


def plan_run(configs: list[Config], data: Any, budget: float, root: Path, spent: float = 0.0,
             stretch: bool = True) -> list[Config]:
    """Plan ``configs`` for ``budget`` (or, with ``train.resume``, reuse ``root/plan.json``), log and save the
    plan, and return the planned stage configs (new objects: the given ones are not written)."""
    path = root / "plan.json"
    saved = load_plan(path) if configs[0].train.resume else None
    if saved is not None:
        log.info("resuming with the plan saved in %s", path)
        plans = saved
    else:
        plans = plan_budget(configs, data, budget, spent, stretch)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
                torch.distributed.get_rank() == 0:
            save_plan(plans, budget, path)
    log.info(describe_plan(plans, budget))
    return apply_plan(configs, plans)


def plan_one_stage(cfg: Config, data: Any, budget: float, start: float) -> tuple[Config, Any]:
    """``train --budget`` (or ``semivit.fit(budget=...)``): one stage planned like a recipe's, its data loaded
    here when not given (``start``: when the command began, so loading counts as spent); returns the planned
    config and the data."""
    from semivit.data import prepare_data
    from semivit.engine.trainer import run_name

    data = data if data is not None else prepare_data(cfg.data, cfg.train.seed)
    planned = plan_run([cfg], data, budget, Path(cfg.train.out) / run_name(cfg), spent=time.perf_counter() - start)
    return planned[0], data


def apply_plan(configs: list[Config], plans: list[StagePlan]) -> list[Config]:
    """New stage configs with the plan's steps and time limits (the given ones are left as they are)."""
    if len(plans) != len(configs):
        raise SemivitError(f"the saved plan has {len(plans)} stages but the recipe {len(configs)}: start a new run "
                           f"(another --name) instead of --resume")
    return [apply_overrides(cfg, {"train.steps": p.steps, "train.epochs": None,
                                  "train.time_limit": p.time_limit or p.seconds * TIME_LIMIT_GUARD})
            for cfg, p in zip(configs, plans)]


def describe_plan(plans: list[StagePlan], budget: float) -> str:
    lines = [f"plan for a budget of {budget / 60:.1f} min (steps scaled from the recipe's, same proportions):"]
    for k, p in enumerate(plans, 1):
        lines.append(f"  stage {k} {p.method:>14}: {p.steps:>6} steps (recipe {p.nominal_steps}), "
                     f"{p.images_per_step} images/step, {p.seconds_per_step:.3f} s/step → {p.seconds / 60:.1f} min"
                     + (f", evaluation {p.eval_seconds / 60:.1f} min" if p.eval_seconds >= 1 else ""))
    total = sum(p.seconds for p in plans)
    evaluation = sum(p.eval_seconds for p in plans)
    lines.append(f"  training {total / 60:.1f} min, evaluation {evaluation / 60:.1f} min; the rest is for data "
                 "loading, timing and export")
    return "\n".join(lines)


def save_plan(plans: list[StagePlan], budget: float, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"budget_seconds": budget, "stages": [asdict(p) for p in plans]}, indent=2))


def load_plan(path: Path) -> list[StagePlan] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return [StagePlan(**s) for s in raw["stages"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SemivitError(f"cannot read the saved plan '{path}' ({type(e).__name__}): delete it to plan again") \
            from None
