"""Training and evaluation on video: CVRL pre-training, few-label fine-tuning, linear probe on clip features.

The image :class:`~semivit.engine.trainer.Trainer` is built around ImageSets and image classifiers (its
batches, k-NN validation, exports), so video runs use the small loop here, made of the same pieces: the
optimizer and cosine schedule of :mod:`semivit.engine.optim`, atomic checkpoints read without unpickling
(:mod:`semivit.engine.checkpoint`), Ctrl-C handling (:mod:`semivit.engine.interrupt`) and the run logger.

Resuming is exact: every step's randomness (which videos, which clips, which augmentation) comes from a
generator seeded by (seed, step), so a checkpoint needs only the step, the weights and the optimizer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semivit.config import OptimConfig
from semivit.engine.checkpoint import load_checkpoint, save_checkpoint
from semivit.engine.ema import ModelEMA
from semivit.engine.evaluate import knn_top1, linear_probe_top1
from semivit.engine.interrupt import GracefulInterrupt, TrainingInterrupted
from semivit.engine.logger import RunLogger
from semivit.engine.optim import build_optimizer, lr_at, set_lr
from semivit.errors import NonFiniteLossError, SemivitError
from semivit.video.augment import ClipAugment, augment_clips, cvrl_views, finetune_view
from semivit.video.cvrl import CVRL
from semivit.video.data import VideoSet
from semivit.video.models import VideoClassifier, VideoSpec, channel_stats, export_video_model, load_video_model
from semivit.video.sampling import random_clip, sample_clip_pair, spaced_clips

log = logging.getLogger("semivit")


@dataclass
class VideoTrainConfig:
    """Settings of one video run (pre-training or fine-tuning); the CLI's flags map onto these fields."""

    arch: str = "r3d_18"
    width: int = 16
    num_frames: int = 8
    stride: int = 2
    size: int = 32  # frames are cropped/resized to size×size
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    temperature: float = 0.1  # CVRL's τ
    power: float = 1.0  # temporal interval sampling: P(t) ∝ 1 − (t/M)^power (1: the paper's linear decrease)
    flip: bool = True
    blur: bool = True
    per_frame_aug: bool = False  # ablation: independent augmentation per frame instead of per clip
    proj_dim: int = 128
    proj_layers: int = 3
    eval_clips: int = 4
    # semi-supervised fine-tuning on clip-level views: none | fixmatch | ema_teacher
    semi: str = "none"
    threshold: float = 0.95  # confidence τ of a pseudo-label (FixMatch: 0.95)
    mu: int = 2  # unlabeled videos per labeled video in a step
    lambda_u: float = 1.0
    ema: float = 0.99  # the EMA teacher's per-step momentum
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    time_limit: float = 0.0  # seconds; 0 = none
    progress: bool = True
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def to_clips(data: VideoSet, videos: torch.Tensor, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float B×T×C×H×W clips in [0, 1]: video ``videos[b]`` at frame indices ``frames[b]``."""
    clips = torch.stack([data.videos[int(v)][f] for v, f in zip(videos, frames, strict=True)])
    return clips.to(device, non_blocking=True).float().div_(255)


def batch_indices(pool: torch.Tensor, batch: int, step: int, seed: int) -> torch.Tensor:
    """The ``step``-th batch of a stream of seeded epoch permutations of ``pool`` (a pure function of the
    step, so a resumed run draws the same batches)."""
    n = len(pool)
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return pool[torch.tensor(out)]


def _checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


def run_loop(run_dir: Path, net: nn.Module, step_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict]],
             cfg: VideoTrainConfig, desc: str, after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Optimise ``net`` for ``cfg.steps`` steps of ``step_fn(step, generator) -> (loss, metrics)``: AdamW,
    warm-up + cosine LR, gradient clipping, NaN guard, metrics.csv, atomic checkpoints every
    ``ckpt_every`` steps and at the end, exact ``resume``, Ctrl-C → checkpoint and stop."""
    optim_cfg = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup)
    optimizer = build_optimizer(net, optim_cfg)
    last = _checkpoint_path(run_dir)
    step, seconds = 0, 0.0
    if cfg.resume and last.is_file():
        ckpt = load_checkpoint(last)
        net.load_state_dict(ckpt["net"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, seconds = int(ckpt["step"]), float(ckpt.get("seconds", 0.0))
        log.info("resumed %s at step %d", last, step)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def checkpoint() -> None:
        save_checkpoint({"step": step, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "seconds": seconds}, last)

    logger = RunLogger(run_dir, cfg.steps, step, tensorboard=False, progress=cfg.progress, desc=desc)
    sums: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    net.train()
    try:
        with GracefulInterrupt() as stop:
            while step < cfg.steps:
                lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup, optim_cfg.min_lr_ratio)
                set_lr(optimizer, lr)
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                torch.manual_seed(cfg.seed * 1_000_003 + step)
                loss, metrics = step_fn(step, g)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"the loss became {float(loss)} at step {step}; the last checkpoint "
                                             f"is kept: lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), optim_cfg.clip_grad or 1.0)
                optimizer.step()
                if after_step is not None:  # e.g. the EMA teacher's update
                    after_step()
                step += 1
                for k, v in {"loss": loss, **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + float(torch.as_tensor(v).detach())
                count += 1
                logger.progress(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    elapsed = time.perf_counter() - t0
                    seconds += elapsed
                    row = {k: v / count for k, v in sums.items()}
                    row.update(lr=lr, clips_per_sec=count * cfg.batch_size / max(elapsed, 1e-9))
                    logger.log(step, row)
                    logger.progress(0, {k: row[k] for k in ("loss",) if k in row})
                    sums, count, t0 = {}, 0, time.perf_counter()
                if step % cfg.ckpt_every == 0 and step < cfg.steps:
                    checkpoint()
                if stop.requested:
                    checkpoint()
                    raise TrainingInterrupted(f"interrupted ({stop.signal_name}) at step {step} of {cfg.steps}; saved "
                                              f"{last}: continue with the same command and --resume", stop.signum)
                if cfg.time_limit and seconds + time.perf_counter() - t0 > cfg.time_limit:
                    log.info("time limit of %.0f s reached at step %d", cfg.time_limit, step)
                    break
            seconds += time.perf_counter() - t0
            checkpoint()
    finally:
        logger.close()
    return {"steps": step, "train_seconds": seconds}


def build_model(data: VideoSet, train_idx: torch.Tensor, cfg: VideoTrainConfig, num_classes: int) -> VideoClassifier:
    torch.manual_seed(cfg.seed)  # the same initial weights for every run of this seed (CVRL or scratch)
    spec = VideoSpec(cfg.arch, cfg.width, data.channels, num_classes, cfg.num_frames, cfg.stride, cfg.size,
                     data.classes)
    model = VideoClassifier(spec)
    model.set_normalization(*channel_stats([data.videos[int(i)] for i in train_idx]))
    return model


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pretrain(data: VideoSet, train_idx: torch.Tensor, cfg: VideoTrainConfig, run_dir: str | Path) -> dict[str, Any]:
    """CVRL pre-training on the (unlabeled) videos ``train_idx``; exports ``model.safetensors`` (the encoder
    with no classifier) and returns the run's metrics."""
    run_dir, device = Path(run_dir), _device()
    if len(train_idx) < 2:
        raise SemivitError("CVRL needs at least 2 training videos (the other videos are the negatives)")
    model = build_model(data, train_idx, cfg, num_classes=0)
    net = CVRL(model, cfg.proj_dim, None, cfg.proj_layers, cfg.temperature).to(device)
    view1, view2 = cvrl_views(cfg.flip, cfg.blur, cfg.per_frame_aug)
    lengths = data.lengths
    batch = min(cfg.batch_size, len(train_idx))

    def step_fn(step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        vids = batch_indices(train_idx, batch, step, cfg.seed)
        f1, f2 = sample_clip_pair(lengths[vids], cfg.num_frames, cfg.stride, g, cfg.power)
        c1 = augment_clips(to_clips(data, vids, f1, device), g, view1, cfg.size)
        c2 = augment_clips(to_clips(data, vids, f2, device), g, view2, cfg.size)
        return net.loss(c1, c2)

    metrics = run_loop(run_dir, net, step_fn, cfg, "cvrl")
    export_video_model(model.eval(), str(run_dir / "model.safetensors"))
    metrics.update(method="cvrl", videos=len(train_idx))
    (run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def video_outputs(model: VideoClassifier, data: VideoSet, indices: torch.Tensor, num_clips: int = 4,
                  features: bool = True, batch: int = 64) -> torch.Tensor:
    """Per-video features (``features``) or logits, averaged over ``num_clips`` evenly spaced clips of the
    whole frame resized to the model's size (CVRL's multi-clip evaluation, one centre view)."""
    spec, device = model.spec, next(model.parameters()).device
    model.eval()
    outs = []
    for start in range(0, len(indices), batch):
        vids = indices[start:start + batch]
        frames = torch.stack([spaced_clips(len(data.videos[int(v)]), spec.num_frames, spec.stride, num_clips)
                              for v in vids])  # B×K×n
        b, k, n = frames.shape
        clips = to_clips(data, vids.repeat_interleave(k), frames.view(b * k, n), device)
        if clips.shape[-1] != spec.frame_size:
            clips = F.interpolate(clips.flatten(0, 1), size=(spec.frame_size,) * 2, mode="bilinear",
                                  antialias=True, align_corners=False).view(b * k, n, clips.shape[2],
                                                                            spec.frame_size, spec.frame_size)
        out = model.features(clips) if features else model(clips)
        outs.append(out.float().view(b, k, -1).mean(1).cpu())
    return torch.cat(outs)


def probe(model: VideoClassifier, data: VideoSet, labeled: torch.Tensor, test: torch.Tensor,
          num_clips: int = 4) -> dict[str, float]:
    """Frozen clip features (averaged over clips): logistic-regression linear probe and k-NN top-1 on
    ``test``, fitted on ``labeled`` alone."""
    bank = video_outputs(model, data, labeled, num_clips)
    queries = video_outputs(model, data, test, num_clips)
    by, qy = data.labels[labeled], data.labels[test]
    return {"linear_top1": linear_probe_top1(bank, by, queries, qy),
            "knn_top1": knn_top1(bank, by, queries, qy, k=min(20, len(labeled)))}


def finetune(data: VideoSet, labeled: torch.Tensor, test: torch.Tensor, cfg: VideoTrainConfig,
             run_dir: str | Path, init: str | None = None, unlabeled: torch.Tensor | None = None) -> dict[str, Any]:
    """Supervised training of encoder + linear classifier on the labeled videos (one random clip per video
    per step, crop + flip applied per clip), from a CVRL run's encoder (``init``) or from scratch (None);
    reports test top-1 with predictions averaged over evenly spaced clips.

    ``cfg.semi`` adds the unlabeled videos with clip-level views: a weak view (crop + flip) gives the
    pseudo-label, a strong view of the same clip (CVRL's second view: crop, flip, colour jitter, grayscale,
    solarization — one draw per clip) learns it where the confidence exceeds ``threshold``:
    L = CE(labeled) + λ_u·mean_u 1[max p ≥ τ]·CE(strong, argmax p) (FixMatch, Sohn et al. 2020, Eq. 4).
    ``fixmatch``: p from the student itself; ``ema_teacher``: p from an EMA of the student (Semi-ViT's
    EMA-Teacher, Cai et al. 2022), which is also the evaluated model."""
    run_dir, device = Path(run_dir), _device()
    if len(labeled) == 0:
        raise SemivitError("no labeled videos: use --labels all, N-per-class or P%")
    if cfg.semi not in ("none", "fixmatch", "ema_teacher"):
        raise SemivitError(f"unknown --semi '{cfg.semi}': use none, fixmatch or ema_teacher")
    if cfg.semi != "none" and (unlabeled is None or not len(unlabeled)):
        raise SemivitError(f"--semi {cfg.semi} needs unlabeled videos: use --labels with fewer than all")
    model = build_model(data, labeled, cfg, num_classes=len(data.classes))
    if init:
        pre = load_video_model(init)
        if (pre.spec.arch, pre.spec.width, pre.spec.in_chans) != (cfg.arch, cfg.width, data.channels):
            raise SemivitError(f"'{init}' is a {pre.spec.arch} of width {pre.spec.width} on {pre.spec.in_chans} "
                               f"channels: fine-tune with the same --arch and --width on the same data")
        model.encoder.load_state_dict(pre.encoder.state_dict())
        model.set_normalization(pre.mean, pre.std)
    net = nn.Module()  # what is optimised and checkpointed: the student (and the EMA teacher's copy)
    net.model = model
    teacher = ModelEMA(model, cfg.ema) if cfg.semi == "ema_teacher" else None
    if teacher is not None:
        net.teacher = teacher
    net.to(device)
    weak = finetune_view(cfg.flip)
    strong = ClipAugment(flip=cfg.flip, p_blur=0.5 if cfg.blur else 0.0, p_solarize=0.2)
    lengths = data.lengths
    batch = min(cfg.batch_size, len(labeled))

    def clips_of(pool: torch.Tensor, size: int, step: int, key: int, g: torch.Generator) -> tuple:
        vids = batch_indices(pool, size, step, cfg.seed * 31 + key)
        return vids, to_clips(data, vids, random_clip(lengths[vids], cfg.num_frames, cfg.stride, g), device)

    def step_fn(step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        vids, raw = clips_of(labeled, batch, step, 0, g)
        xl = augment_clips(raw, g, weak, cfg.size)
        y = data.labels[vids].to(device)
        if cfg.semi == "none":
            logits = model(xl)
            return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().detach()}
        uvids, uraw = clips_of(unlabeled, batch * cfg.mu, step, 1, g)
        xw, xs = augment_clips(uraw, g, weak, cfg.size), augment_clips(uraw, g, strong, cfg.size)
        if teacher is None:  # FixMatch: one pass over labeled, weak and strong clips (shared BatchNorm)
            logits = model(torch.cat([xl, xw, xs]))
            logits_l, logits_w, logits_s = logits.split([len(xl), len(xw), len(xs)])
        else:
            with torch.no_grad():
                logits_w = teacher(xw)
            logits_l, logits_s = model(torch.cat([xl, xs])).split([len(xl), len(xs)])
        conf, pseudo = F.softmax(logits_w.detach().float(), -1).max(-1)
        mask = (conf >= cfg.threshold).float()
        loss_u = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
        loss_l = F.cross_entropy(logits_l, y)
        right = (pseudo == data.labels[uvids].to(device)).float()  # logged only: never trained on
        return loss_l + cfg.lambda_u * loss_u, {
            "loss_x": loss_l.detach(), "loss_u": loss_u.detach(), "mask": mask.mean(),
            "pseudo_acc": (right * mask).sum() / mask.sum().clamp_min(1),
            "acc": (logits_l.argmax(1) == y).float().mean().detach()}

    metrics: dict[str, Any] = run_loop(run_dir, net, step_fn, cfg, cfg.semi if cfg.semi != "none" else "finetune",
                                       after_step=(lambda: teacher.update(model)) if teacher is not None else None)
    final = teacher.module if teacher is not None else model
    final.eval()
    logits = video_outputs(final, data, test, cfg.eval_clips, features=False)
    metrics.update(method=cfg.semi if cfg.semi != "none" else "finetune", init=init or "scratch",
                   labeled=len(labeled), unlabeled=len(unlabeled) if cfg.semi != "none" else 0, test=len(test),
                   test_top1=float((logits.argmax(1) == data.labels[test]).float().mean()))
    export_video_model(final, str(run_dir / "model.safetensors"))
    (run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
    return metrics
