"""Distillation with unlabeled images (SimCLRv2, Chen et al. 2020b, Sec. 2.3 and Eq. 2).

A frozen teacher (any semivit model file) gives temperature-softened predictions on unlabeled images; the
student — the same architecture (self-distillation) or a smaller one (big-to-small, set with ``--model``)
— learns them, optionally plus cross-entropy on the labeled images:
L = (1−α)·(−Σ_x Σ_y P_T(y|x; τ) log P_S(y|x; τ)) + α·CE(labeled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.methods.base import Method, StepOutput, load_teacher, register_method
from semivit.methods.losses import distillation_loss


@dataclass
class DistillParams:
    teacher: str = ""  # the teacher's model.safetensors (or run folder)
    temperature: float = 1.0  # τ (SimCLRv2 uses 1.0 for its headline numbers)
    labeled_weight: float = 0.0  # α: weight of the labeled cross-entropy (0 = unlabeled distillation only)
    view: str = "weak"  # augmentation of the images both networks see
    # unlabeled images per labeled image when labeled_weight > 0; with labeled_weight 0 there is no labeled
    # stream and a step is train.batch_size unlabeled images (mu is not used)
    mu: float = 4.0
    # a stage shorter than this many steps starts the student from its teacher's weights instead of random
    # ones (0: never, the paper's choice). Self-distillation only: the student must have the teacher's shape.
    # Measured on digits' validation split (benchmarks/RESULTS.md, "SimCLRv2's distillation stage on a short
    # budget"): at 1,000 steps the student from scratch caught and passed its teacher; at 286 it fell short.
    teacher_init_below: int = 0


@register_method
class Distill(Method):
    name = "distill"
    Params = DistillParams

    previous_stage_is_teacher = True

    @classmethod
    def teacher_start(cls, params: Any) -> tuple[str, int]:
        return params.teacher, params.teacher_init_below

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.teacher = load_teacher(p.teacher, "distill", "", self.num_classes)
        self.labeled_views = (p.view,) if p.labeled_weight > 0 else ()
        self.unlabeled_views = (p.view,)
        self.unlabeled_ratio = p.mu

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # the teacher's predictions are the targets: no dropout or drop-path
        return self

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_u = batch.u[p.view]
        with torch.no_grad():
            teacher_logits = self.teacher(x_u)
        if p.labeled_weight > 0:
            x_l = batch.x[p.view]
            logits = self.model(torch.cat([x_l, x_u]))
            logits_l, logits_u = logits[:len(x_l)], logits[len(x_l):]
        else:
            logits_l, logits_u = None, self.model(x_u)
        loss_d = distillation_loss(logits_u, teacher_logits, p.temperature)
        metrics = {"loss_distill": loss_d.detach(),
                   "agree": (logits_u.argmax(-1) == teacher_logits.argmax(-1)).float().mean().detach()}
        loss = (1 - p.labeled_weight) * loss_d if logits_l is not None else loss_d
        if logits_l is not None:
            loss_x = F.cross_entropy(logits_l.float(), batch.y)
            loss = loss + p.labeled_weight * loss_x
            metrics["loss_x"] = loss_x.detach()
        return StepOutput(loss, metrics)
