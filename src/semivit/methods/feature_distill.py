"""Feature distillation into a small student: DisCo (Gao et al. 2022, "DisCo: Remedy Self-supervised
Learning on Lightweight Models with Distilled Contrastive Learning") and SimReg (Navaneet et al. 2022,
"SimReg: Regression as a Simple Yet Effective Tool for Self-supervised Knowledge Distillation").

A frozen teacher — any semivit model file, typically a self-supervised one (simclr, byol, mae) — gives
the embedding t of each unlabeled image; the student's pooled features pass through a deep MLP prediction
head g and regress onto it (SimReg, Eq. 1):

    L = (1/N) Σ_x d( g(f_S(x)), f_T(x) ),   d(s, t) = ‖s/‖s‖ − t/‖t‖‖²  (``loss: regress``)

or 1 − cos(s, t) (``cosine``) or the MSE of the raw embeddings (``mse``). Teacher and student see the same
weakly augmented image (SimReg's finding). The head exists only during distillation (SimReg: a deeper head
distils better without changing the deployed network; DisCo: a wider embedding eases the "distilling
bottleneck"): the exported model is the student's backbone, evaluated by k-NN like other pre-training
methods and fine-tuned afterwards.

DisCo's student also keeps its own self-supervised contrastive loss (DisCo Sec. 3: L = L_con + λ·L_DisCo):
with ``contrastive_weight`` λ' > 0 both networks see two augmented views (``view`` and ``view:2``; DisCo's
augmentation is ``view: contrastive``: crop, flip, colour jitter), the regression runs on both, and NT-Xent
(SimCLR's Eq. 1; DisCo
used MoCo-v2's queue, semivit's contrastive loss is SimCLR's) on the student's two head outputs is added:

    L = L_reg(view 1) + L_reg(view 2)  (averaged) + λ'·NT-Xent(g(f_S(x₁)), g(f_S(x₂)))

The teacher's embedding is its pooled backbone features (``teacher_embedding: features``), or those passed
through the projection-head layers its file keeps (``head``: SimCLR(v2)'s ``finetune_layer`` layers).
DisCo distils the final embedding after the full projection MLP, which semivit does not export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, load_teacher, register_method
from semivit.methods.losses import feature_regression_loss, nt_xent
from semivit.models.factory import ImageClassifier
from semivit.models.heads import MLPHead


@dataclass
class FeatureDistillParams:
    teacher: str = ""  # the teacher's model.safetensors (or run folder); a recipe stage gets the previous one
    loss: Literal["regress", "cosine", "mse"] = "regress"  # regress: the normalised squared distance
    head_layers: int = 4  # layers of the student's prediction MLP (dropped at export; SimReg: deeper is better)
    head_hidden: int | None = None  # its hidden width; None = 4 × the teacher's embedding width
    teacher_embedding: Literal["features", "head"] = "features"  # head: through the teacher's kept head layers
    view: str = "weak"  # the augmented view both networks see (with contrastive_weight > 0: two of it)
    contrastive_weight: float = 0.0  # DisCo: the student's own NT-Xent on two views, this weight; 0 = SimReg
    temperature: float = 0.2  # NT-Xent temperature (with contrastive_weight > 0)


def teacher_embedding(teacher: ImageClassifier, x: torch.Tensor, where: str) -> torch.Tensor:
    """The teacher's embedding of ``x``: pooled features, or (``head``) after the projection-head layers
    that sit before its classifier (``model.head_layers``)."""
    h = teacher.features(x)
    if where == "features":
        return h
    head = teacher.backbone.get_classifier()
    if not isinstance(head, nn.Sequential) or len(head) < 2:
        raise SemivitError("method.teacher_embedding=head needs a teacher with projection-head layers "
                           "(model.head_layers ≥ 1, e.g. a simclr run): use teacher_embedding=features")
    for layer in list(head)[:-1]:
        h = layer(h)
    return h


@register_method
class FeatureDistill(Method):
    name = "feature_distill"
    Params = FeatureDistillParams
    labeled_views = ()
    trains_classifier = False  # the student's classifier head stays untrained: judged by k-NN
    find_unused_parameters = True  # (DDP) the classifier head gets no gradient

    previous_stage_is_teacher = True

    @classmethod
    def teacher_start(cls, params: Any) -> tuple[str, int]:
        return params.teacher, 0
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.head_layers < 1:
            raise SemivitError(f"method.head_layers must be ≥ 1, got {p.head_layers}")
        if p.contrastive_weight < 0 or p.temperature <= 0:
            raise SemivitError(f"method.contrastive_weight must be ≥ 0 and method.temperature > 0, got "
                               f"{p.contrastive_weight} and {p.temperature}")
        teacher = load_teacher(p.teacher, "feature_distill", ", or run it after a pre-training stage in a recipe")
        spec = self.model.spec
        if (teacher.spec.in_chans, teacher.spec.image_size) != (spec.in_chans, spec.image_size):
            raise SemivitError(f"the teacher takes {teacher.spec.in_chans}×{teacher.spec.image_size}² images, "
                               f"the student {spec.in_chans}×{spec.image_size}²: use a teacher trained on this data")
        self.teacher = teacher.requires_grad_(False).eval()
        with torch.no_grad():  # the teacher's embedding width, from one probe image
            probe = torch.zeros(1, spec.in_chans, spec.image_size, spec.image_size)
            dim = teacher_embedding(self.teacher, probe, p.teacher_embedding).shape[-1]
        self.unlabeled_views = (p.view, f"{p.view}:2") if p.contrastive_weight > 0 else (p.view,)
        self.head = MLPHead(self.model.num_features, p.head_hidden or 4 * dim, dim, p.head_layers)

    def train(self, mode: bool = True) -> FeatureDistill:
        super().train(mode)
        self.teacher.eval()  # targets without dropout or drop-path
        return self

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x = torch.cat([batch.u[v] for v in self.unlabeled_views])  # one pass for both views
        with torch.no_grad():
            target = teacher_embedding(self.teacher, x, p.teacher_embedding)
        pred = self.head(self.model.features(x))
        loss_feat = feature_regression_loss(pred, target, p.loss)
        cos = F.cosine_similarity(pred.detach().float(), target.float(), dim=-1).mean()
        metrics = {"loss_feat": loss_feat.detach(), "cos": cos}
        if p.contrastive_weight <= 0:
            return StepOutput(loss_feat, metrics)
        loss_con, hits = nt_xent(*pred.chunk(2), p.temperature)
        metrics.update(loss_con=loss_con.detach(), con_acc=hits)
        return StepOutput(loss_feat + p.contrastive_weight * loss_con, metrics)
