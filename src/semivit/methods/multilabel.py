"""Several labels per image: the loss, the per-class pseudo-labels and the checks, as small pieces the methods
that train on multi-label data (supervised, fixmatch, ema_teacher) compose.

Each class is its own yes/no question with a sigmoid output p_c = σ(z_c). Targets are N×C of 1 (present),
0 (absent) and -1 (unknown: no loss). Losses are summed over the known classes of an image and averaged over
the images, like the cross-entropy of single-label training.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from semivit.config import MultiLabelConfig
from semivit.errors import SemivitError
from semivit.methods.alignment import mean_over_ranks


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05) -> torch.Tensor:
    """The asymmetric loss per image and class (Ridnik et al., ICCV 2021, Eq. 1–4 and the official
    Alibaba-MIIL/ASL ``AsymmetricLoss``): with p = σ(z) and the shifted probability p_m = max(p − m, 0),

        L+ = −(1 − p)^γ+ · log p          L− = −p_m^γ− · log(1 − p_m)

    ``targets`` may be soft (mixed) values in [0, 1]: L = t·L+ + (1 − t)·L−. With γ+ = γ− = 0 and m = 0 it is
    the binary cross-entropy.

    Examples:
        >>> z, t = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
        >>> bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        >>> torch.allclose(asymmetric_loss(z, t, 0.0, 0.0, 0.0), bce)
        True
    """
    z = logits.float()
    p = torch.sigmoid(z)
    log_p = F.logsigmoid(z)
    if clip > 0:  # 1 − p_m = min(1 − p + m, 1)
        q = (1 - p + clip).clamp(max=1.0)
        log_q = torch.log(q.clamp_min(1e-8))
    else:
        q, log_q = 1 - p, F.logsigmoid(-z)
    positive = -log_p * (1 - p).pow(gamma_pos) if gamma_pos else -log_p
    negative = -log_q * (1 - q).pow(gamma_neg) if gamma_neg else -log_q
    return targets * positive + (1 - targets) * negative


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: MultiLabelConfig,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """The loss per image: ``cfg.loss`` (bce or asl) summed over the classes whose target is known (``targets``
    ≥ 0, and ``mask`` where given), as the cross-entropy sums over one image's classes.

    Examples:
        >>> cfg = MultiLabelConfig()
        >>> z, t = torch.zeros(1, 3), torch.tensor([[1, 0, -1]])
        >>> round(float(multilabel_loss(z, t, cfg)[0]), 4)  # two known classes at p = 0.5: 2·log 2
        1.3863
    """
    known = targets >= 0
    if mask is not None:
        known = known & mask
    t = targets.float().clamp(min=0)
    if cfg.loss == "asl":
        per_class = asymmetric_loss(logits, t, cfg.gamma_neg, cfg.gamma_pos, cfg.clip)
    else:
        per_class = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    return (per_class * known.float()).sum(1)


def smooth_binary(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of yes/no targets: t·(1 − ε) + ε/2 (unknown entries, -1, stay -1)."""
    if not eps:
        return targets.float()
    return torch.where(targets >= 0, targets.float() * (1 - eps) + eps / 2, targets.float())


def entry_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The share of known (image, class) entries that σ(z) ≥ 0.5 gets right: a training-time diagnostic."""
    known = targets >= 0
    right = ((logits > 0) == (targets > 0)) & known
    return right.sum() / known.sum().clamp_min(1)


def multilabel_pseudo_mixup(x: torch.Tensor, probs: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor,
                            mode: str, smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilistic pseudo mixup (Semi-ViT, Sec. 3.3) for label sets. Each image is mixed with a shuffled partner
    at λ = c_i / (c_i + c_j), where c is the image's confidence: Semi-ViT's max softmax read per class, the mean
    over classes of max(p_k, 1 − p_k). The target of class k is λ·t_ik + (1 − λ)·t_jk (binary smoothing
    ``smoothing``), and it is known only where both halves' pseudo-labels are (``mask``): a mixed entry with an
    unknown half has no target. Returns the mixed inputs, the soft targets and their mask.

    Examples:
        >>> x = torch.stack([torch.zeros(2), torch.ones(2)])
        >>> probs = torch.tensor([[0.9, 0.5], [0.1, 0.9]])
        >>> pseudo, mask = torch.tensor([[1, 0], [0, 1]]), torch.tensor([[True, False], [True, True]])
        >>> _ = torch.manual_seed(1)
        >>> mixed, t, known = multilabel_pseudo_mixup(x, probs, pseudo, mask, "mixup", 0.0)
        >>> known.tolist()  # class 2 of image 1 is unsure: no mixed image that holds it has a target there
        [[True, False], [True, False]]
    """
    from semivit.methods.mixing import mix

    conf = torch.maximum(probs, 1 - probs).mean(1)
    perm = torch.randperm(len(x), device=x.device)
    lam = conf / (conf + conf[perm]).clamp_min(1e-12)
    mixed, lam = mix(x, perm, lam, mode)
    t = smooth_binary(pseudo, smoothing)
    lam = lam.view(-1, 1).to(t.dtype)
    return mixed, lam * t + (1 - lam) * t[perm], mask & mask[perm]


class MultiLabelPseudoLabels(nn.Module):
    """Positive and negative pseudo-labels per class, UPS-style (Rizve et al., ICLR 2021, Eq. 2: g_c = 1[p_c ≥ τ⁺],
    used where p_c ≥ τ⁺ or p_c ≤ τ⁻; this takes no uncertainty term), with the thresholds fixed, or per class
    (``cap``; Xie et al., NeurIPS 2023, Sec. 3.2): τ⁺_c and τ⁻_c such that the share π_c of the class in the
    labeled images is pseudo-positive and 1 − π_c pseudo-negative (``keep`` < 1: only the most confident share of
    each). The quantiles come from a running histogram of the teacher's predictions (``window`` batches; one
    tensor, no host sync; averaged over DDP ranks), and π_c from every labeled batch seen, both saved with the
    method for an exact resume.

    Examples:
        >>> labeler = MultiLabelPseudoLabels(2, MultiLabelConfig(), threshold=0.9)
        >>> target, mask = labeler(torch.tensor([[0.95, 0.5], [0.01, 0.99]]), torch.tensor([[1, 0]]))
        >>> target.tolist(), mask.tolist()
        ([[1, 0], [0, 1]], [[True, False], [True, True]])
    """

    BINS = 200

    def __init__(self, num_classes: int, cfg: MultiLabelConfig, threshold: float) -> None:
        super().__init__()
        self.scheme, self.positive, self.negative = cfg.thresholds, threshold, cfg.negative_threshold
        self.keep, self.momentum = cfg.cap_keep, 1 - 1 / cfg.cap_window
        if self.scheme == "cap":  # built only when used, so fixed-threshold checkpoints keep their keys
            self.register_buffer("histogram", torch.zeros(num_classes, self.BINS))
            self.register_buffer("positives", torch.zeros(num_classes))
            self.register_buffer("labeled", torch.zeros(()))

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(τ⁺, τ⁻) per class under ``cap``: quantiles 1 − keep·π_c and keep·(1 − π_c) of the running histogram."""
        prior = self.positives / self.labeled.clamp_min(1)
        cdf = self.histogram.cumsum(1) / self.histogram.sum(1, keepdim=True).clamp_min(1e-12)
        upper = _quantile(cdf, 1 - self.keep * prior)
        lower = _quantile(cdf, self.keep * (1 - prior))
        return upper, lower

    def forward(self, probs: torch.Tensor, labeled_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(0/1 pseudo-targets, mask of those used) for the teacher's probabilities ``probs`` (B×C);
        ``labeled_targets``: this step's labeled batch (its class frequencies feed ``cap``)."""
        upper: torch.Tensor | float = self.positive
        lower: torch.Tensor | float = self.negative
        if self.scheme == "cap":
            with torch.no_grad():
                known = labeled_targets >= 0
                # averaged over the DDP ranks (a collective, no host sync), so every rank keeps the same thresholds
                self.positives += mean_over_ranks(((labeled_targets == 1) & known).sum(0).float())
                self.labeled += mean_over_ranks(known.any(1).sum().float())
                bins = (probs.float().clamp(0, 1 - 1e-6) * self.BINS).long()
                counts = torch.zeros_like(self.histogram).scatter_add_(
                    1, bins.t(), torch.ones_like(bins.t(), dtype=self.histogram.dtype))
                counts = mean_over_ranks(counts / len(probs))
                # the first batch fills the histogram; later ones move it as an EMA over ~window batches
                filled = (self.histogram.sum() > 0).float()
                self.histogram.mul_(filled * self.momentum).add_(counts * (1 - filled * self.momentum))
            upper, lower = self.thresholds()
        positive, negative = probs >= upper, probs <= lower
        return positive.long(), positive | negative


def _quantile(cdf: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row of ``cdf`` (C×BINS, over [0, 1]) the value below which a share ``q[c]`` lies, interpolated within
    its bin."""
    bins = cdf.shape[1]
    q = q.clamp(0, 1).unsqueeze(1)
    idx = torch.searchsorted(cdf.contiguous(), q).clamp(max=bins - 1)
    below = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp_min(0)), torch.zeros_like(q))
    at = cdf.gather(1, idx)
    within = ((q - below) / (at - below).clamp_min(1e-12)).clamp(0, 1)
    return ((idx.float() + within) / bins).squeeze(1)


def check_multilabel(cfg: MultiLabelConfig, multilabel: bool, method: str, supported: bool,
                     unsupported_settings: dict[str, object]) -> None:
    """Refuse, in one line, settings that cannot apply: multi-label settings on single-label data, a method that
    cannot train on multi-label data, a single-label option (``unsupported_settings``: name → value, refused when
    not off) with multi-label data, and ASL or CAP knobs when that loss or scheme is not chosen."""
    default = MultiLabelConfig()
    changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)]
    if not multilabel:
        if changed:
            raise SemivitError(f"multilabel.{changed[0]} applies to data with several labels per image, and this "
                               f"data has one class per image: drop the setting")
        return
    if not supported:
        raise SemivitError(f"method '{method}' trains on one class per image, and this data has several labels per "
                           f"image: use supervised, fixmatch or ema_teacher")
    for name, value in unsupported_settings.items():
        if value not in ("off", 0, 0.0, False, None):
            raise SemivitError(f"method.{name}={value} is for data with one class per image: drop it for "
                               f"multi-label data (multilabel.thresholds=cap gives per-class thresholds)")
    asl = {"gamma_neg", "gamma_pos", "clip"} & set(changed)
    if asl and cfg.loss != "asl":
        raise SemivitError(f"multilabel.{sorted(asl)[0]} shapes the asymmetric loss: add multilabel.loss=asl")
    cap = {"cap_window", "cap_keep"} & set(changed)
    if cap and cfg.thresholds != "cap":
        raise SemivitError(f"multilabel.{sorted(cap)[0]} belongs to per-class thresholds: add "
                           f"multilabel.thresholds=cap")
    if cfg.thresholds == "cap" and "negative_threshold" in changed:
        raise SemivitError("multilabel.negative_threshold is a fixed threshold, and multilabel.thresholds=cap sets "
                           "them per class: drop one of the two")
    if not 0 < cfg.cap_keep <= 1 or cfg.cap_window < 1 or not 0 <= cfg.negative_threshold < 1 or cfg.clip < 0:
        raise SemivitError("multilabel: cap_keep must be in (0, 1], cap_window ≥ 1, negative_threshold in [0, 1) "
                           "and clip ≥ 0")
    if math.isnan(cfg.gamma_neg) or cfg.gamma_neg < 0 or cfg.gamma_pos < 0:
        raise SemivitError("multilabel.gamma_neg and multilabel.gamma_pos must be ≥ 0")
