"""``semivit run auto --model BACKBONE --budget 30m``: which way of using a pretrained backbone fits the budget,
at which resolution — measured on this machine and this data before anything trains, then printed.

Three ways of using the unlabeled images, from the most backbone training to the least, and one without them
(the recipes they run):

- ``full-semivit``: every weight fine-tuned on the images, then the EMA-Teacher (no feature cache);
- ``partial-semivit``: the backbone cut before its last block, the activations at the cut cached once, the last
  block and a head trained on them (supervised, then the EMA-Teacher);
- ``frozen-fixmatch``: the pooled features cached once, a head trained on them (supervised, then FixMatch);
- ``full-supervised``: every weight fine-tuned on the labels alone (no cache to build: the whole budget trains).

The choice, from a few timed batches (the first not counted):

1. **the cache's resolution**: every candidate up to the backbone's native size (64, 96, 128, 160 px; ``--set
   model.resolution=R`` fixes it) is timed embedding real training images; the largest whose cache (the images
   as they are plus the recipes' weak and strong views of each training image) takes at most
   :data:`EMBED_SHARE` of the budget is chosen. On CIFAR-10 with EfficientNet-Lite0 the linear probe climbs from
   0.50 at 64 px to 0.63 at 160 px and falls at the native 224 px (benchmarks/RESULTS.md), hence the cap.
2. **the path**: the first of ``full-semivit`` and ``partial-semivit`` whose recipe gets its *whole* nominal
   schedule inside the budget (after its cache, for the partial path), else ``frozen-fixmatch`` when its cache
   fits at the full paths' resolution (the recipes' 96 px, at most the native size) or above, else
   ``full-supervised``. A path whose schedule fits runs its recipe's steps (heads tuned for 4,000 steps are not
   stretched to fill the budget), else the planner shrinks its stages to fit. A truncated semi-supervised
   schedule is not enough: fine-tuning the whole of Lite0 with the EMA-Teacher on 2 CPU cores for 10 or 30
   minutes scored below the frozen head on CIFAR-10 (RESULTS, "Full fine-tuning on a CPU"), and the partial
   path's cut cache alone costs what the frozen cache does. A cache squeezed below the resolution the network
   is fine-tuned at loses more than the unlabeled images give: on CIFAR-10 at 10 minutes the frozen heads at
   64 px read 0.540 and the whole network fine-tuned on the labels alone at 96 px 0.635 (one data set; the rule
   came after that run, so RESULTS reports it as such).

Then the chosen recipe runs with the same ``--budget`` (:mod:`semivit.planning` shares what is left among its
stages). The choice is written to ``path.json`` in the run's folder; ``--resume`` reuses it.

Examples:
    >>> fitting_resolution({64: 2000.0, 96: 600.0, 128: 180.0}, images=260_000, seconds=1800)
    96
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from semivit.config import Config, apply_overrides, load_yaml
from semivit.data import prepare_data
from semivit.errors import SemivitError
from semivit.pipeline import find_recipe, require_resumable, run_stages, stage_configs

log = logging.getLogger("semivit")

#: the paths in order of preference: the first two when their whole schedule fits, then the frozen heads when their
#: cache fits at the full paths' resolution, else fine-tuning on the labels alone
PATHS = ("full-semivit", "partial-semivit", "frozen-fixmatch", "full-supervised")
CACHED = ("partial-semivit", "frozen-fixmatch")  # the paths that embed the images once
RESOLUTIONS = (64, 96, 128, 160)
EMBED_SHARE = 0.75  # the cache may take at most this share of the budget (heads on it train in seconds to minutes)
SAMPLE_BATCHES = 3  # batches of features.batch_size timed per resolution (the first not counted)
TRAIN_STEPS_TIMED = 3


@dataclass
class PathChoice:
    recipe: str
    resolution: int  # the chosen recipe's input size
    embed_images: int  # images and views the frozen and partial caches hold
    embed_rates: dict[int, float]  # images/s embedding, per resolution
    path_seconds: dict[str, float] = field(default_factory=dict)  # each path's whole nominal schedule (estimated)
    budget: float = 0.0
    usable: float = 0.0  # seconds left for the chosen recipe after the timing, less the planner's reserve
    cache_resolution: int = 0  # the largest resolution whose cache fits the budget (0: none does)
    full_resolution: int = 0  # the full paths' input size

    @property
    def fits(self) -> bool:
        """Whether the chosen recipe's whole schedule fits: it then runs its recipe's steps (the frozen heads are
        not stretched to fill the budget); else the planner shrinks its stages to fit."""
        return self.path_seconds[self.recipe] <= self.usable

    def describe(self) -> str:
        lines = [f"path for a budget of {self.budget / 60:.1f} min: {self.recipe} at {self.resolution} px"]
        lines.append("  embedding " + ", ".join(
            f"{r} px {v:.0f} images/s → {self.embed_images / v / 60:.1f} min" for r, v in self.embed_rates.items())
            + f" ({self.embed_images:,} images and views)")
        for name in PATHS:
            if name in self.path_seconds:
                verdict = "chosen" if name == self.recipe else (
                    "fits" if self.path_seconds[name] <= self.usable else "over the budget")
                lines.append(f"  {name:>16}: its whole schedule ~{self.path_seconds[name] / 60:.1f} min ({verdict})")
        if self.recipe in CACHED:
            rate = self.embed_rates[self.resolution]
            lines.append(f"  the cache at {self.resolution} px: ~{self.embed_images / rate / 60:.1f} min; " + (
                "the recipe's own steps" if self.fits else "its stages shrunk to fit (the plan below)"))
        elif self.recipe == "full-supervised":
            why = (f"caches only at {self.cache_resolution} px, below the full paths' {self.full_resolution} px"
                   if self.cache_resolution else "caches at no resolution")
            lines.append(f"  no semi-supervised schedule fits and the budget {why}: the whole network fine-tuned on "
                         f"the labels alone, " + ("its own steps" if self.fits else "its steps shrunk to fit"))
        return "\n".join(lines)


def fitting_resolution(rates: dict[int, float], images: int, seconds: float) -> int | None:
    """The largest resolution whose cache of ``images`` takes at most :data:`EMBED_SHARE` of ``seconds`` (None:
    none does)."""
    return max((r for r, v in rates.items() if images / v <= EMBED_SHARE * seconds), default=None)


def recipe_configs(name: str, overrides: dict[str, Any]) -> list[Config]:
    return stage_configs(load_yaml(find_recipe(name)), overrides)[1]


def _embed_rate(cfg: Config, data: Any, device: torch.device) -> float:
    """Images/s of the backbone's embedding pass (the cache's fast path) on a batch of training images."""
    from semivit.core.distributed import DistInfo
    from semivit.data.augment import to_float
    from semivit.engine.inputs import _pretrained_backbone, fast_embedding

    embed = fast_embedding(_pretrained_backbone(cfg, data, DistInfo(), device), device)
    n = min(len(data.train), cfg.features.batch_size)
    x = to_float(data.train.get(torch.arange(n)).to(device))
    times = []
    with torch.inference_mode():
        for _ in range(SAMPLE_BATCHES):
            start = time.perf_counter()
            embed(x)
            times.append(time.perf_counter() - start)
    return n / min(times[1:])


def _partial_step_seconds(cfg: Config, data: Any, device: torch.device, batches: list[int]) -> list[float]:
    """Seconds of one training step of the last block and head on each of ``batches`` cut activations."""
    from semivit.core.distributed import DistInfo
    from semivit.data.augment import to_float
    from semivit.engine.inputs import _pretrained_backbone, fast_embedding
    from semivit.models.tail import BackboneTail

    backbone = _pretrained_backbone(cfg, data, DistInfo(), device)
    tail = BackboneTail(backbone, 1, cfg.features.tail_lr).to(device).train()
    x = to_float(data.train.get(torch.arange(min(len(data.train), 8))).to(device))
    with torch.inference_mode():
        sample = fast_embedding(backbone, device, 1)(x)
    head = torch.nn.Linear(tail.pooled(sample[:1].clone()).shape[1], data.train.num_classes).to(device)
    opt = torch.optim.AdamW([*tail.parameters(), *head.parameters()], 1e-4)
    out = []
    for batch in batches:
        h = sample[torch.arange(batch) % len(sample)].clone()
        times = []
        for _ in range(TRAIN_STEPS_TIMED):
            start = time.perf_counter()
            head(tail.pooled(h)).logsumexp(1).mean().backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - start)
        out.append(min(times[1:]))
    return out


def _nominal(configs: list[Config], seconds_per_step: list[float]) -> float:
    return sum(int(c.train.steps or 0) * t for c, t in zip(configs, seconds_per_step))


def choose_path(overrides: dict[str, Any], data: Any, budget: float, spent: float = 0.0) -> PathChoice:
    """Time the candidates on ``data`` and choose (see the module docstring); ``overrides``: the command line's
    settings (``model.name`` must name a pretrained backbone)."""
    from semivit.core.device import resolve_device
    from semivit.core.distributed import DistInfo
    from semivit.engine.inputs import _pretrained_backbone
    from semivit.planning import RESERVE, time_stage

    start = time.perf_counter()
    frozen = recipe_configs("frozen-fixmatch", overrides)
    cfg = frozen[0]
    if cfg.model.name == "auto":
        raise SemivitError("semivit run auto chooses how to use a pretrained backbone: name it with --model (a hub "
                           "name, local-dir:FOLDER, or an architecture with --pretrained FILE)")
    device = torch.device(resolve_device(cfg.train.device))
    fixed = "model.resolution" in overrides
    resolutions = [int(overrides["model.resolution"])] if fixed else list(RESOLUTIONS)
    test = len(data.test) if data.test is not None else 0
    images = len(data.train) * (1 + 2 * cfg.features.views) + test
    at_native = _pretrained_backbone(apply_overrides(cfg, {"model.resolution": "native"}), data, DistInfo(), device)
    native = int(at_native.spec.kwargs["backbone_size"])
    rates = {r: _embed_rate(apply_overrides(cfg, {"model.resolution": str(r)}), data, device)
             for r in resolutions if fixed or r <= native}
    left = budget - spent - (time.perf_counter() - start)
    cache = fitting_resolution(rates, images, left)
    # the full paths at their recipe's resolution (the budget buys them no cache), at most the native size
    full_res = int(overrides["model.resolution"]) if fixed else min(
        int(recipe_configs("full-semivit", overrides)[0].model.resolution), native)
    full_settings = {**overrides, "model.resolution": str(full_res)}
    evaluated = test + len(data.split.val)  # the full paths' evaluations run the whole backbone (counted too)
    seconds: dict[str, float] = {}

    full = recipe_configs("full-semivit", full_settings)
    timed = [time_stage(full[0], data, steps=TRAIN_STEPS_TIMED), time_stage(full[1], data, full[0],
                                                                            steps=TRAIN_STEPS_TIMED)]
    seconds["full-semivit"] = _nominal(full, [t.seconds_per_step for t in timed]) + \
        sum(evaluated * t.eval_seconds_per_image for t in timed)
    if cache is not None:
        settings = {**overrides, "model.resolution": str(cache)}
        seconds["frozen-fixmatch"] = images / rates[cache]
        partial = recipe_configs("partial-semivit", settings)
        unlabeled = int(partial[-1].train.batch_size * (1 + 2 * float(partial[-1].method.get("mu", 1))))
        t_partial = _partial_step_seconds(partial[0], data, device, [partial[0].train.batch_size, unlabeled])
        seconds["partial-semivit"] = images / rates[cache] + _nominal(partial, t_partial)
    labels_only = recipe_configs("full-supervised", full_settings)
    # the labels-only recipe is full-semivit's first stage: timed once, unless the two have drifted apart
    t_labels = timed[0] if labels_only[0] == full[0] else time_stage(labels_only[0], data, steps=TRAIN_STEPS_TIMED)
    seconds["full-supervised"] = _nominal(labels_only, [t_labels.seconds_per_step]) + \
        evaluated * t_labels.eval_seconds_per_image

    usable = (budget - spent - (time.perf_counter() - start)) * (1 - RESERVE)
    recipe = next((p for p in PATHS[:2] if p in seconds and seconds[p] <= usable), None)
    if recipe is None:
        recipe = "frozen-fixmatch" if cache is not None and cache >= full_res else "full-supervised"
    resolution = cache if recipe in CACHED else full_res
    return PathChoice(recipe, int(resolution or full_res), images, rates, seconds, budget, usable,
                      cache_resolution=cache or 0, full_resolution=full_res)


def save_choice(choice: PathChoice, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(choice), indent=2))


def load_choice(path: Path) -> PathChoice | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        raw["embed_rates"] = {int(k): float(v) for k, v in raw["embed_rates"].items()}
        return PathChoice(**raw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SemivitError(f"cannot read the saved path choice '{path}' ({type(e).__name__}): delete it to choose "
                           "again") from None


def run_auto(overrides: dict[str, Any], budget: float | None, run_name: str | None = None, data: Any = None) -> Any:
    """``semivit run auto``: choose the path and resolution for ``budget`` seconds (or, with ``train.resume``,
    reuse the run's ``path.json``), print the choice, and run the chosen recipe in the same budget; returns the
    last stage's :class:`~semivit.engine.trainer.TrainResult`. ``data``: already prepared (else loaded from the
    settings)."""
    start = time.perf_counter()
    if not budget:
        raise SemivitError("semivit run auto chooses how to use a pretrained backbone within a time budget: pass "
                           "--budget 30m (budget='30m' in Python), or run a recipe by name (frozen-fixmatch, "
                           "partial-semivit, full-semivit)")
    base = recipe_configs("frozen-fixmatch", overrides)[0]
    root = Path(base.train.out) / (run_name or base.train.name or "auto")
    saved = load_choice(root / "path.json") if base.train.resume else None
    data = data if data is not None else prepare_data(base.data, base.train.seed)
    if saved is not None:
        choice = saved
        log.info("resuming with the path chosen before (%s)", root / "path.json")
    else:
        choice = choose_path(overrides, data, budget, spent=time.perf_counter() - start)
        save_choice(choice, root / "path.json")
    log.info(choice.describe())
    configs = recipe_configs(choice.recipe, {**overrides, "model.resolution": str(choice.resolution)})
    if base.train.resume:
        require_resumable(root, [root / f"stage{k}-{c.train.method}" for k, c in enumerate(configs, 1)])
    return run_stages(configs, root, data=data, budget=None if choice.fits else budget, start=start)
