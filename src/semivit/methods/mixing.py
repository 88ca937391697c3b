"""Mixup and CutMix with a mixing ratio per sample (needed by probabilistic pseudo mixup).

Mixup: Zhang et al. 2018, x̃ = λ·x_i + (1−λ)·x_j. CutMix: Yun et al. 2019, a box of area (1−λ)·H·W is
pasted from x_j; λ is recomputed from the clipped box so targets match the pixels.
"""

from __future__ import annotations

import torch


def mixup(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each sample with ``x[perm]``; ``lam`` (B,) is the weight of the sample itself. Any sample shape:
    images, or cached feature vectors (the feature-space mixup of a head on a frozen backbone)."""
    w = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return w * x + (1 - w) * x[perm], lam


def cutmix(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box of area (1−λ) from ``x[perm]`` into each sample; returns the actual λ."""
    if x.dim() != 4:
        from semivit.errors import SemivitError

        raise SemivitError(f"CutMix pastes image boxes, and these inputs are {x.dim()}-D (cached features?): use "
                           f"mixup (method.pseudo_mixup=mixup) or none")
    b, _, h, w = x.shape
    cut = torch.sqrt((1 - lam).clamp(0, 1))
    ch, cw = (cut * h).round().long(), (cut * w).round().long()
    cy = (torch.rand(b, device=x.device) * h).long()
    cx = (torch.rand(b, device=x.device) * w).long()
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + (ch - ch // 2)).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + (cw - cw // 2)).clamp(0, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1)) &
           (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1)))
    mixed = torch.where(box.unsqueeze(1), x[perm], x)
    actual = 1 - box.flatten(1).float().mean(1)
    return mixed, actual


def mix(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``mode`` is "mixup", "cutmix", or "both": each sample draws CutMix or mixup with equal chance (per
    element, as Semi-ViT's ``ProbPseudoMixup._params_per_elem``: ``use_cutmix = rand(B) < 0.5``, not one
    choice for the whole batch). Returns the mixed images and the actual λ of each sample."""
    if mode == "mixup":
        return mixup(x, perm, lam)
    if mode == "cutmix":
        return cutmix(x, perm, lam)
    if mode == "both":
        use_cutmix = torch.rand(len(x), device=x.device) < 0.5
        blended, lam_mixup = mixup(x, perm, lam)
        pasted, lam_cutmix = cutmix(x, perm, lam)  # both are cheap next to the forward pass
        return (torch.where(use_cutmix.view(-1, 1, 1, 1), pasted, blended),
                torch.where(use_cutmix, lam_cutmix.to(lam_mixup.dtype), lam_mixup))
    raise ValueError(f"unknown mix mode '{mode}': use mixup, cutmix or both")


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing ε: (1−ε)·onehot + ε/K."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    return onehot * (1 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy −Σ_y t_y log p_y against soft targets."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
