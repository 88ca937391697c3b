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
stage to start from the teacher instead). Not implemented: the paper's data balancing (duplicating images
of rare classes in the pseudo-labeled set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


@register_method
class NoisyStudent(Method):
    name = "noisy_student"
    Params = NoisyStudentParams

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
        # the mean over the images that pass the filter, as training on the filtered pseudo-labeled set
        loss_u = (soft_cross_entropy(logits_u, targets) * mask).sum() / mask.sum().clamp_min(1)
        loss = loss_x + p.lambda_u * loss_u
        out = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
               "acc": (logits_l.argmax(-1) == y).float().mean().detach(),
               "agree": (logits_u.argmax(-1) == hard).float().mean().detach(),
               **pseudo_label_diagnostics(mask, hard, batch.u_true)}
        return StepOutput(loss, out)
