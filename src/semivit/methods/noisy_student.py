"""Noisy Student training (Xie et al. 2020, "Self-training with Noisy Student improves ImageNet
classification", Algorithm 1).

A teacher labels unlabeled images *without* noise (eval mode, clean input); an equal-or-larger student
learns the labeled images and the pseudo-labeled ones *with* noise — input noise (RandAugment: the strong
view), dropout before the classifier and stochastic depth (``model.drop_path``):

    (1/n) Σ_i ℓ(y_i, f^noised(x_i)) + λ·(1/m) Σ_j ℓ(ỹ_j, f^noised(x̃_j)),   ỹ_j = f_teacher(x̃_j) (noise-free)

with soft pseudo-labels (the teacher's probabilities) or hard ones (its argmax), and an optional confidence
filter (images whose teacher confidence is below ``threshold`` are left out, the paper's data filtering).
The teacher is frozen, so computing its labels online from the clean view of each batch is the same as
labelling the unlabeled set once beforehand (but every epoch's crop is labelled afresh). Then the student
becomes the teacher: the ``noisy-student`` recipe chains rounds, each stage taking the previous one as
its teacher and training its student from scratch (as the paper's students; set ``model.pretrained`` on a
stage to start from the teacher instead).

Data balancing (``balance``; the paper duplicates images of classes the teacher assigns rarely and keeps
the most confident ones of frequent classes, so every class has about as many pseudo-labeled images): online,
each pseudo-labeled image is weighted by w_c = 1 / (C · π̂_c), where π̂_c is the share of the images that
passed the filter so far which the teacher put in class c (counted over all ranks, kept in checkpoints). The
teacher is frozen, so π̂ converges to its label distribution on the unlabeled set, and E[w] = 1: the
weighting changes the mix of classes, not the loss's scale — the expectation of training on the balanced set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, load_teacher, register_method
from semivit.methods.mixing import soft_cross_entropy
from semivit.methods.pseudo_label import pseudo_label_diagnostics
from semivit.models.factory import set_head_dropout


@dataclass
class NoisyStudentParams:
    teacher: str = ""  # the teacher's model.safetensors (or run folder); a recipe stage gets the previous one
    soft: bool = True  # soft pseudo-labels (the teacher's probabilities) or hard ones (its argmax)
    temperature: float = 1.0  # softmax temperature of the soft pseudo-labels
    threshold: float = 0.0  # confidence filter on the teacher's max probability (paper, ImageNet: 0.3)
    lambda_u: float = 1.0  # weight of the pseudo-labeled loss
    mu: float = 3.0  # unlabeled images per labeled image (the paper uses a larger unlabeled batch)
    teacher_view: str = "none"  # the clean input the teacher labels: none (as is) or weak
    student_view: str = "strong"  # input noise on the pseudo-labeled images (RandAugment)
    labeled_view: str = "strong"  # input noise on the labeled images (the paper noises both)
    dropout: float = 0.5  # dropout before the student's classifier (paper: 0.5 on the final layer)
    balance: bool = False  # weight pseudo-labeled images by 1 / (C · the teacher's running class share)


@register_method
class NoisyStudent(Method):
    name = "noisy_student"
    Params = NoisyStudentParams

    previous_stage_is_teacher = True

    @classmethod
    def teacher_start(cls, params: Any) -> tuple[str, int]:
        return params.teacher, 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.temperature <= 0:
            raise SemivitError(f"method.temperature must be positive, got {p.temperature}")
        self.teacher = load_teacher(p.teacher, "noisy_student", ", or run it as a stage of the noisy-student "
                                    "recipe", self.num_classes)
        set_head_dropout(self.model, p.dropout)
        self.labeled_views = (p.labeled_view,)
        self.unlabeled_views = tuple(dict.fromkeys((p.teacher_view, p.student_view)))
        self.unlabeled_ratio = p.mu
        # images per teacher class that passed the filter so far (float64: exact counts for a long run)
        self.register_buffer("class_counts", torch.zeros(self.num_classes, dtype=torch.float64))

    def train(self, mode: bool = True) -> NoisyStudent:
        super().train(mode)
        self.teacher.eval()  # the teacher is not noised: no dropout or drop-path when it labels
        return self

    def pseudo_labels(self, x_clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's targets for clean images (soft or one-hot), its confidence and its argmax."""
        p = self.params
        with torch.no_grad():
            logits = self.teacher(x_clean).float()
        conf, hard = F.softmax(logits, -1).max(-1)
        targets = F.softmax(logits / p.temperature, -1) if p.soft else F.one_hot(hard, self.num_classes).float()
        return targets, conf, hard

    def balance_weights(self, hard: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """w = 1 / (C · π̂_class) for each image, after adding this batch's filtered labels to the counts."""
        # scatter_add, not bincount(hard[mask]): no output size to read back, so no device → host sync
        counts = torch.zeros_like(self.class_counts).scatter_add_(0, hard, mask.to(self.class_counts.dtype))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # every rank keeps the same counts, so the same weights
        self.class_counts += counts
        share = self.class_counts / self.class_counts.sum().clamp_min(1)
        # a class never seen yet has share 0; its weight is capped at C (as if seen once in C² images)
        return (1 / (self.num_classes * share.clamp_min(1 / self.num_classes ** 2))).float()[hard]

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_l, y = batch.x[p.labeled_view], batch.y
        assert y is not None
        targets, conf, hard = self.pseudo_labels(batch.u[p.teacher_view])
        mask = conf >= p.threshold
        u_noisy = batch.u[p.student_view]
        logits = self.model(torch.cat([x_l, u_noisy]))  # the student, noised: train mode, strong views
        logits_l, logits_u = logits[:len(x_l)], logits[len(x_l):]
        loss_x = F.cross_entropy(logits_l.float(), y)
        weight = mask.float()
        if p.balance:
            weight = weight * self.balance_weights(hard, mask)
        # the mean over the images that pass the filter, as training on the filtered pseudo-labeled set
        loss_u = (soft_cross_entropy(logits_u, targets) * weight).sum() / mask.sum().clamp_min(1)
        loss = loss_x + p.lambda_u * loss_u
        out = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
               "acc": (logits_l.argmax(-1) == y).float().mean().detach(),
               "agree": (logits_u.argmax(-1) == hard).float().mean().detach(),
               **pseudo_label_diagnostics(mask, hard, batch.u_true)}
        if p.balance:
            out["weight_max"] = weight.max().detach()
        return StepOutput(loss, out)
