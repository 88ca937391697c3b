"""UDA (Xie et al. 2020, "Unsupervised Data Augmentation for Consistency Training").

The model's prediction on an unlabeled image's original (weak) view, sharpened with a softmax temperature
τ and without gradient, is the target of its prediction on a strongly augmented (RandAugment) view;
images whose unsharpened confidence is ≤ β are masked out (Sec. 3.2). Training-signal annealing (TSA,
Sec. 3.2) leaves out labeled examples the model already gives more than η_t to, so the few labels are not
memorised before the unlabeled signal takes effect. The objective (Eq. 2):

    L = (1/Σ_i m_i) Σ_i m_i·CE(y_i, p_θ(y|x_i)) + λ·(1/|B_u|) Σ_x 1[max p_θ̃(y|x) > β]·KL(p_θ̃(y|x; τ) ‖ p_θ(y|x̂))

with m_i = 1[p_θ(y_i|x_i) ≤ η_t] and η_t = α_t·(1 − 1/K) + 1/K (α_t: linear, log or exp in t/T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.alignment import DistAlign, DistributionAlignment
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.losses import tsa_cross_entropy, tsa_threshold, uda_consistency
from semivit.methods.pseudo_label import pseudo_label_diagnostics


@dataclass
class UDAParams:
    lambda_u: float = 1.0  # λ: weight of the consistency loss (UDA: 1)
    mu: float = 7.0  # unlabeled images per labeled image (UDA's image runs use a several-times larger batch)
    temperature: float = 0.4  # τ: sharpening of the targets (UDA CIFAR-10: 0.4; 1 = no sharpening)
    threshold: float = 0.8  # β: confidence mask on the unsharpened target (UDA: 0.8 CIFAR-10, 0.5 ImageNet)
    tsa: Literal["off", "linear", "log", "exp"] = "off"  # training-signal annealing (exp: for very few labels)
    # skewed classes: align the targets to a marginal before sharpening (methods/alignment.py; ReMixMatch's
    # distribution alignment): off | uniform | labeled | pool
    dist_align: DistAlign = "off"
    align_window: float = 128.0  # batches the running marginal of the predictions averages (ReMixMatch: 128)


@register_method
class UDA(Method):
    name = "uda"
    Params = UDAParams
    labeled_views = ("weak",)
    unlabeled_views = ("weak", "strong")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.temperature <= 0:
            raise SemivitError(f"method.temperature must be positive, got {p.temperature}")
        self.unlabeled_ratio = p.mu
        self.aligner = (DistributionAlignment(self.num_classes, p.dist_align, p.align_window)
                        if p.dist_align != "off" else None)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_l, y, u_weak, u_strong = batch.x["weak"], batch.y, batch.u["weak"], batch.u["strong"]
        assert y is not None
        # one training-mode pass over the labeled, original (weak) and augmented views, as the official code
        # (google-research/uda image/main.py concatenates sup, ori and aug images); θ̃: the weak views' logits
        # without gradient
        n, m = len(x_l), len(u_weak)
        logits = self.model(torch.cat([x_l, u_weak, u_strong]))
        logits_l, target_logits, logits_u = logits[:n], logits[n:n + m].detach(), logits[n + m:]
        if self.aligner is not None:  # the aligned probabilities as logits: uda_consistency sharpens and masks them
            target_logits = self.aligner(target_logits.float().softmax(-1), y).clamp_min(1e-12).log()
        eta = tsa_threshold(p.tsa, step, self.total_steps, self.num_classes)
        loss_x, kept = tsa_cross_entropy(logits_l, y, eta)
        loss_u, mask = uda_consistency(logits_u, target_logits, p.temperature, p.threshold)
        loss = loss_x + p.lambda_u * loss_u
        return StepOutput(loss, {
            "loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "tsa_eta": torch.tensor(eta),
            "tsa_kept": kept.mean(), "acc": (logits_l.argmax(-1) == y).float().mean().detach(),
            **pseudo_label_diagnostics(mask.bool(), target_logits.argmax(-1), batch.u_true)})
