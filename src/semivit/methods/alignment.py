"""Pseudo-labels on skewed classes: distribution alignment and class-balanced confidence thresholds.

A confidence-thresholded teacher leans towards the classes it already predicts most: their pseudo-labels pass
the threshold more often, the student learns them more, and the teacher leans further (benchmarks/RESULTS.md,
the 3 : 1 Shirt/T-shirt pair). Two remedies, each switched on by a method setting of FixMatch, the
EMA-Teacher (``dist_align``, ``class_thresholds``) and UDA (``dist_align``):

- :class:`DistributionAlignment` rescales each unlabeled prediction so that their running marginal matches a
  target (ReMixMatch, Berthelot et al. 2020, Sec. 3.2): p̃ = Normalize(p · π(y) / p̄(y)), p̄ the running mean
  of the predictions on unlabeled images. The target π is uniform, the labeled set's class frequencies (the
  paper's), or the unlabeled pool's marginal estimated by EM under label shift (``pool``; Saerens et al.
  2002), for when the labels were drawn class-balanced from a skewed pool: there the labeled marginal is the
  wrong target.
- :class:`ClassThresholds` gives each class its own confidence threshold: FreeMatch's self-adaptive ones
  (Wang et al. 2023, Eq. 6–8) or FlexMatch's curriculum pseudo-labelling (Zhang et al. 2021, Eq. 6–7, with
  its threshold warm-up).

Every statistic is a buffer (saved in checkpoints, resumed exactly), updated on the device with no host sync,
and averaged over the DDP ranks (an all-reduce / all-gather: every rank keeps the same state).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.distributed as dist
from torch import nn

from semivit.core.distributed import all_gather_cat, world_size
from semivit.errors import SemivitError

#: the choices of ``method.dist_align`` and ``method.class_thresholds`` (the methods' Params use these types)
DistAlign = Literal["off", "uniform", "labeled", "pool"]
ClassThresholdScheme = Literal["off", "freematch", "flexmatch"]
DIST_ALIGN: tuple[str, ...] = get_args(DistAlign)
CLASS_THRESHOLDS: tuple[str, ...] = get_args(ClassThresholdScheme)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """A one-line :class:`SemivitError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SemivitError(f"method.{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got '{value}'")


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` averaged over the DDP ranks (``x`` itself in one process): a collective, not a host sync."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def align(probs: torch.Tensor, target: torch.Tensor, running: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReMixMatch's distribution alignment (Berthelot et al. 2020, Sec. 3.2): p̃ = Normalize(p · π / p̄).

    Examples:
        >>> p = torch.tensor([[0.8, 0.2]])
        >>> align(p, torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2])).round(decimals=4)
        tensor([[0.5000, 0.5000]])
    """
    out = probs * (target + eps) / (running + eps)
    return out / out.sum(-1, keepdim=True)


def prior_shift(probs: torch.Tensor, new_prior: torch.Tensor, old_prior: torch.Tensor,
                eps: float = 1e-6) -> torch.Tensor:
    """Posteriors of a classifier fitted under ``old_prior``, moved to ``new_prior`` (Saerens et al. 2002,
    Eq. 2.4): p'(y|x) = Normalize(p(y|x) · π'(y) / π(y)). The same rescaling as :func:`align`, named for
    the EM of the pool's prior.

    Examples:
        >>> prior_shift(torch.tensor([[0.5, 0.5]]), torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5]))
        tensor([[0.2500, 0.7500]])
    """
    return align(probs, new_prior, old_prior, eps)


class RunningMean(nn.Module):
    """A running mean of vectors, m·v + (1−m)·x per update, bias-corrected as Adam's moments (divided by
    1 − m^t), so the first updates are not pulled towards the zero start; ``value`` before any update is
    ``init``.

    Examples:
        >>> r = RunningMean(2, momentum=0.5)
        >>> r.update(torch.tensor([1.0, 0.0])); r.value
        tensor([1., 0.])
        >>> r.update(torch.tensor([0.0, 1.0])); r.value  # (0.5·[1, 0] + 0.5·[0, 1]) / 0.75
        tensor([0.3333, 0.6667])
    """

    def __init__(self, size: int, momentum: float, init: float | None = None) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("sum", torch.zeros(size))
        self.register_buffer("weight", torch.zeros(()))  # 1 − m^t, on the device: no host counter
        self.register_buffer("init", torch.full((size,), 1.0 / size if init is None else init))

    @property
    def value(self) -> torch.Tensor:
        return torch.where(self.weight > 0, self.sum / self.weight.clamp_min(1e-12), self.init)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        m = self.momentum
        self.sum.mul_(m).add_(x.to(self.sum.dtype), alpha=1 - m)
        self.weight.mul_(m).add_(1 - m)


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment of the unlabeled predictions towards a target marginal.

    ``target``: ``uniform`` (1/K), ``labeled`` (the running class frequencies of the labeled batches: the
    paper's p(y)), or ``pool`` (the pool's marginal π̂_U, estimated online by the EM of Saerens et al. 2002,
    Eq. 2.9–2.10: π̂_U ← mean_i Normalize(p_i · π̂_U / π_L), with π_L the labeled frequencies the classifier
    was fitted under; each step makes one EM iteration on the batch and averages it into π̂_U). p̄ (the
    denominator of :func:`align`) is the running mean of the predictions before alignment over about
    ``window`` batches (ReMixMatch: the last 128), as USB's ``DistAlignEMAHook``.

    Examples:
        >>> da = DistributionAlignment(2, "uniform", window=1)
        >>> p = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # p̄ = [0.8, 0.2]
        >>> da(p, torch.tensor([0, 1])).round(decimals=4)
        tensor([[0.6923, 0.3077],
                [0.3684, 0.6316]])
    """

    def __init__(self, num_classes: int, target: str, window: float = 128.0) -> None:
        super().__init__()
        check_choice("dist_align", target, DIST_ALIGN[1:])
        if window < 1:
            raise SemivitError(f"method.align_window must be at least 1 batch, got {window}")
        self.target, self.num_classes = target, num_classes
        m = 1.0 - 1.0 / window
        self.p_model, self.p_labeled, self.p_pool = (RunningMean(num_classes, m) for _ in range(3))

    def target_marginal(self) -> torch.Tensor:
        """The marginal the aligned predictions are pulled towards (π in :func:`align`)."""
        if self.target == "uniform":
            return torch.full_like(self.p_model.value, 1.0 / self.num_classes)
        return self.p_labeled.value if self.target == "labeled" else self.p_pool.value

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Aligned ``probs`` (unlabeled predictions, rows summing to 1); ``labels``: the labeled batch's, for
        π_L. Updates the running marginals first (in training mode), so the batch is aligned with them."""
        if self.training:
            freq = torch.bincount(labels, minlength=self.num_classes).float() / max(len(labels), 1)
            self.p_labeled.update(mean_over_ranks(freq))
            self.p_model.update(mean_over_ranks(probs.float().mean(0)))
            if self.target == "pool":  # one EM step on this batch (Saerens et al. 2002, Eq. 2.9–2.10)
                shifted = prior_shift(probs.float(), self.p_pool.value, self.p_labeled.value)
                self.p_pool.update(mean_over_ranks(shifted.mean(0)))
        return align(probs.float(), self.target_marginal(), self.p_model.value)


def flexmatch_warp(beta: torch.Tensor) -> torch.Tensor:
    """FlexMatch's convex mapping M(β) = β / (2 − β) (Zhang et al. 2021, Eq. 7).

    Examples:
        >>> flexmatch_warp(torch.tensor([0.0, 0.5, 1.0]))
        tensor([0.0000, 0.3333, 1.0000])
    """
    return beta / (2 - beta)


class ClassThresholds(nn.Module):
    """Per-class confidence thresholds: the mask 1[max p ≥ τ_c] with c = argmax p.

    ``freematch`` (Wang et al. 2023, Eq. 6–8; USB ``FreeMatchThresholingHook``): τ ← λτ + (1−λ)·mean(max p),
    p̃ ← λp̃ + (1−λ)·mean(p), τ_c = p̃_c / max(p̃) · τ, both from 1/K, λ = 0.999; the global ``threshold`` is not
    used (the method learns it). ``flexmatch`` (Zhang et al. 2021, Eq. 6–7 with the threshold warm-up; USB
    ``FlexMatchThresholdingHook``): a memory of each unlabeled image's last pseudo-label that passed τ (−1:
    none yet), σ_c the images holding class c, β_c = σ_c / max(max_c σ, #unused), τ_c = M(β_c) · τ.

    Examples:
        >>> th = ClassThresholds(2, "freematch", threshold=0.95, momentum=0.0)
        >>> th(torch.tensor([[0.9, 0.1], [0.6, 0.4]]))  # τ = 0.75, p̃ = [0.75, 0.25]: τ_c = [0.75, 0.25]
        tensor([ True, False])
    """

    def __init__(self, num_classes: int, scheme: str, threshold: float, momentum: float = 0.999) -> None:
        super().__init__()
        check_choice("class_thresholds", scheme, CLASS_THRESHOLDS[1:])
        self.scheme, self.num_classes, self.threshold, self.momentum = scheme, num_classes, threshold, momentum
        self.register_buffer("global_conf", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_conf", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("memory", torch.zeros(0, dtype=torch.long))  # FlexMatch: sized by :meth:`setup`

    def setup(self, num_images: int) -> None:
        """Size FlexMatch's memory for ``num_images`` training images (indexed as the batches' ``u_index``)."""
        if self.scheme == "flexmatch":
            self.memory = torch.full((num_images,), -1, dtype=torch.long, device=self.class_conf.device)

    def thresholds(self) -> torch.Tensor:
        """τ_c for every class (after the updates of the last batch)."""
        if self.scheme == "freematch":
            return self.class_conf / self.class_conf.max() * self.global_conf
        counts = torch.bincount(self.memory + 1, minlength=self.num_classes + 1).float()
        # warm-up: the unused images count in the max, so thresholds rise as the memory fills (FlexMatch Sec. 3.3)
        return flexmatch_warp(counts[1:] / counts.max().clamp_min(1)) * self.threshold

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The mask of the pseudo-labels ``probs.argmax(-1)`` that pass their class's threshold; updates the
        statistics first in training mode (``index``: the images' indices, which FlexMatch's memory needs)."""
        conf, pseudo = probs.max(-1)
        if self.training and self.scheme == "freematch":
            m = self.momentum
            self.global_conf.mul_(m).add_(mean_over_ranks(conf.mean()), alpha=1 - m)
            self.class_conf.mul_(m).add_(mean_over_ranks(probs.mean(0)), alpha=1 - m)
        elif self.training:
            if index is None or len(self.memory) == 0:
                raise SemivitError("method.class_thresholds=flexmatch needs the unlabeled images' indices")
            # USB's order: the thresholds of the memory so far decide this batch, which then updates it
            mask = conf >= self.thresholds()[pseudo]
            idx, lab, ok = (all_gather_cat(t) for t in (index, pseudo, conf >= self.threshold))
            # a where, not memory[idx[ok]]: boolean indexing has a data-dependent size (a host sync on a GPU)
            self.memory.index_put_((idx,), torch.where(ok, lab, self.memory[idx]))
            return mask
        return conf >= self.thresholds()[pseudo]
