"""Video runs on the one :class:`~semivit.engine.trainer.Trainer`: a video source, a 3D ResNet and the
clip batches of :mod:`semivit.video.inputs`. The methods are the registered ones (CVRL for pre-training;
supervised, FixMatch, the EMA-Teacher and UDA on clips), so a video run has the image runs' loop: AMP,
accumulation, validation, the evaluation EMA, atomic checkpoints and exact resume, SIGTERM handling, DDP
under torchrun, trackers, and recipes with stages (``video/recipes/``: ``cvrl`` pre-trains, then fine-tunes
from its encoder).

Examples:
    >>> cfg = video_config({"data.source": "data/sprites.npz", "train.method": "cvrl", "train.steps": 400})
    >>> result = train_video(cfg)  # doctest: +SKIP
    >>> result.metrics["test_knn_top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semivit.config import Config, apply_overrides, load_yaml
from semivit.core.distributed import device_and_ranks
from semivit.engine.callbacks import Callback
from semivit.engine.evaluate import knn_top1, linear_probe_top1
from semivit.engine.trainer import Trainer, TrainResult
from semivit.errors import SemivitError
from semivit.methods import method_class
from semivit.pipeline import require_resumable, run_stages, stage_configs
from semivit.video.inputs import (
    PreparedVideo,
    VideoInputs,
    build_video_model,
    check_video_method,
    prepare_video,
)
from semivit.video.models import VideoClassifier, load_video_model

log = logging.getLogger("semivit")
RECIPES = Path(__file__).resolve().parent / "recipes"

#: what a video run changes from the image defaults (the one place they live): the settings of the CVRL
#: runs in benchmarks/RESULTS.md — AdamW at 2e-3 not scaled by the batch, weight decay 1e-4, batches of 32
#: clips, no validation split (data.val 0: validation labels would come on top of --labels) and no TensorBoard
VIDEO_DEFAULTS: dict[str, Any] = {
    "model.name": "r3d_18", "data.val": "0", "optim.lr": 2e-3, "optim.scale_lr": False,
    "optim.weight_decay": 1e-4, "train.batch_size": 32, "train.steps": 300, "train.eval_every": 0,
    "train.log_every": 10, "train.ckpt_every": 100, "train.tensorboard": False,
}


def video_config(overrides: dict[str, Any] | None = None) -> Config:
    """The config of a video run: the defaults, :data:`VIDEO_DEFAULTS`, then ``overrides`` (dotted keys)."""
    return apply_overrides(apply_overrides(Config(), VIDEO_DEFAULTS), overrides or {})


def video_trainer(cfg: Config, data: PreparedVideo | None = None, run_dir: Path | None = None,
                  callbacks: Sequence[Callback] = ()) -> Trainer:
    """A Trainer of ``cfg.train.method`` on clips of ``cfg.data.source`` (``data``: already prepared)."""
    check_video_method(method_class(cfg.train.method).name)  # before any data loads (and a known name)
    if data is None:
        data = prepare_video(cfg)
    device, _ = device_and_ranks(cfg.train.device)
    model = build_video_model(cfg, data)
    return Trainer(cfg, run_dir=run_dir, model=model, inputs=VideoInputs(data, device, cfg.video.eval_clips),
                   callbacks=callbacks)


def train_video(cfg: Config, data: PreparedVideo | None = None, run_dir: Path | None = None) -> TrainResult:
    """Train one method on videos; returns the run folder, its metrics and the model."""
    if cfg.train.resume:
        from semivit.engine.stage import run_name

        folder = Path(run_dir or Path(cfg.train.out) / run_name(cfg))
        require_resumable(folder, [folder])
    return video_trainer(cfg, data, run_dir).fit()


def find_video_recipe(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / f"{name.removesuffix('.yaml')}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise SemivitError(f"video recipe '{name}' not found: pass a YAML file or one of {', '.join(names)}")
    return shipped


def run_video_recipe(recipe: str | dict[str, Any], overrides: dict[str, Any] | None = None,
                     run_name: str | None = None) -> TrainResult:
    """Every stage of a video recipe (``video/recipes/NAME.yaml``, a YAML file or its dict), each started from
    the previous stage's export, in ``OUT/NAME/stageK-METHOD``: the image pipeline's stages on clips."""
    values = recipe if isinstance(recipe, dict) else load_yaml(find_video_recipe(recipe))
    # the video defaults sit below the recipe's own sections, as Config's defaults do for image recipes
    name, configs = stage_configs(values, overrides or {}, base=video_config())
    first = configs[0]
    root = Path(first.train.out) / (run_name or first.train.name or name)
    if first.train.resume:
        require_resumable(root, [root / f"stage{k}-{c.train.method}" for k, c in enumerate(configs, 1)])
    return run_stages(configs, root, prepare_video(first), trainer=lambda c, d, r: video_trainer(c, d, r),
                      load=lambda p: load_video_model(str(p)))


def probe(model: VideoClassifier, data: PreparedVideo, num_clips: int = 4) -> dict[str, float]:
    """Frozen clip features (averaged over ``num_clips`` clips): a logistic-regression linear probe and 20-NN,
    fitted on the labeled training videos alone, top-1 on the test side."""
    inputs = VideoInputs(data, next(model.parameters()).device, num_clips)
    bank, queries = inputs.embeddings(model, "labeled"), inputs.embeddings(model, "test")
    by, qy = inputs.labels("labeled"), inputs.labels("test")
    return {"linear_top1": linear_probe_top1(bank, by, queries, qy),
            "knn_top1": knn_top1(bank, by, queries, qy, k=min(20, len(by)))}
