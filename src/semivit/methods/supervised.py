"""Supervised training on the labeled images only: the baseline every semi-supervised method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.data.loaders import Batch
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.mixing import mix, soft_cross_entropy, soft_targets
from semivit.methods.multilabel import entry_accuracy, multilabel_loss, smooth_binary


@dataclass
class SupervisedParams:
    view: str = "weak"  # augmentation of labeled images: none | weak | strong
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(α, α) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(α, α) for CutMix; 0 = off (when both are on, each batch picks one)


@register_method
class Supervised(Method):
    """Cross-entropy on labeled views, with optional label smoothing, mixup and CutMix; on multi-label data the
    per-class loss of ``multilabel.loss`` (binary cross-entropy or ASL) on the same views."""

    name = "supervised"
    Params = SupervisedParams
    supports_multilabel = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.labeled_views = (self.params.view,)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x, y = batch.x[p.view], batch.y
        assert y is not None
        targets = (smooth_binary(y, p.label_smoothing) if self.multilabel is not None
                   else soft_targets(y, self.num_classes, p.label_smoothing))
        modes = [m for m, alpha in (("mixup", p.mixup), ("cutmix", p.cutmix)) if alpha > 0]
        if modes:
            mode = modes[int(torch.randint(len(modes), ()).item())]
            alpha = p.mixup if mode == "mixup" else p.cutmix
            lam = torch.distributions.Beta(alpha, alpha).sample().to(x.device).expand(len(x))
            perm = torch.randperm(len(x), device=x.device)
            x, lam = mix(x, perm, lam, mode)
            if self.multilabel is not None:  # an entry unknown in either image stays unknown
                unknown = (targets < 0) | (targets[perm] < 0)
            targets = lam.view(-1, 1) * targets + (1 - lam.view(-1, 1)) * targets[perm]
            if self.multilabel is not None:
                targets = targets.masked_fill(unknown, -1.0)
        logits = self.model(x)
        if self.multilabel is not None:
            loss = multilabel_loss(logits, targets, self.multilabel).mean()
            return StepOutput(loss, {"loss_x": loss.detach(), "acc": entry_accuracy(logits, y).detach()})
        loss = soft_cross_entropy(logits, targets).mean()
        acc = (logits.argmax(-1) == y).float().mean()
        return StepOutput(loss, {"loss_x": loss.detach(), "acc": acc.detach()})
