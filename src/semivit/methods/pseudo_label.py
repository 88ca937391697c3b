"""Pseudo-labelling with a confidence threshold: FixMatch, and Semi-ViT's EMA-Teacher with
probabilistic pseudo mixup.

Both share one step (Sohn et al. 2020, Eq. 2–4; Cai et al. 2022, Sec. 3): a teacher labels the weak view
of each unlabeled image, ŷ = argmax p, and the student learns ŷ on the strong view where max p ≥ τ:

    L = CE_ε(labeled) + λ_u · (1/μB) Σ_i 1[max p_i ≥ τ] · CE(ŷ_i, student(strong_i))

CE_ε is the cross-entropy with label smoothing ε (``label_smoothing``; Semi-ViT's main_semi.py L91 and L403–404:
``--smoothing 0.1`` → timm's LabelSmoothingCrossEntropy on the labeled batch; FixMatch's paper uses none).
FixMatch's teacher is the student itself; the EMA-Teacher is θ' ← m·θ' + (1−m)·θ, updated every step, with
m scaled to the stage's length (:mod:`semivit.core.ema`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semivit.core.ema import ModelEMA, half_life, scaled_momentum
from semivit.data.loaders import Batch
from semivit.methods.alignment import ClassThresholds, ClassThresholdScheme, DistAlign, DistributionAlignment
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.mixing import mix, soft_cross_entropy, soft_targets
from semivit.methods.multilabel import (
    MultiLabelPseudoLabels,
    entry_accuracy,
    multilabel_loss,
    multilabel_pseudo_mixup,
    smooth_binary,
)


@dataclass
class PseudoLabelParams:
    threshold: float = 0.7  # τ: confidence needed to use a pseudo-label
    lambda_u: float = 5.0  # λ_u: weight of the unlabeled loss
    mu: float = 5.0  # μ: unlabeled images per labeled image
    pseudo_mixup: Literal["off", "mixup", "cutmix", "both"] = "off"  # probabilistic pseudo mixup (both: per image)
    mixup_smoothing: float = 0.1  # label smoothing of the mixed soft targets
    label_smoothing: float = 0.1  # ε of the labeled cross-entropy (Semi-ViT's main_semi.py L91, L403–404)
    # EMA-Teacher momentum m (ema_teacher only), declared for a stage of `ema_ref_steps` steps: a stage of K
    # steps uses m^(ema_ref_steps/K), so the teacher moves as far whatever the stage's length; None = per-step
    # m as given. 0.99 for 2,000 steps was chosen on digits' validation split (the semivit recipe)
    # (an `ema` given without `ema_ref_steps` is per step: methods.base.method_params)
    ema: float = 0.99
    ema_ref_steps: int | None = 2000
    eval_with: Literal["teacher", "student"] = "teacher"  # ema_teacher: evaluate the teacher or the student
    # skewed classes (methods/alignment.py): align the teacher's predictions to a target marginal (ReMixMatch's
    # distribution alignment): off | uniform | labeled (the labeled batches' class frequencies) | pool (the
    # unlabeled pool's marginal, estimated by EM: for class-balanced labels drawn from a skewed pool)
    dist_align: DistAlign = "off"
    align_window: float = 128.0  # batches the running marginal of the predictions averages (ReMixMatch: 128)
    # per-class thresholds instead of the one τ: off | freematch (self-adaptive; τ itself then unused) |
    # flexmatch (curriculum pseudo-labelling: τ scaled per class by how many images each class already holds)
    class_thresholds: ClassThresholdScheme = "off"
    MOMENTUM_REFERENCES: ClassVar[dict[str, str]] = {"ema": "ema_ref_steps"}


@dataclass
class FixMatchParams(PseudoLabelParams):
    """FixMatch's paper settings (Sohn et al. 2020, Sec. 4: τ 0.95, λ_u 1, μ 7, no label smoothing)."""

    threshold: float = 0.95
    lambda_u: float = 1.0
    mu: float = 7.0
    label_smoothing: float = 0.0


def pseudo_mixup(x: torch.Tensor, conf: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 mode: str, smoothing: float,
                 passed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilistic pseudo mixup (Semi-ViT, Sec. 3.3; reference util/mixup.py ``ProbPseudoMixup._mix_elem``).

    Each sample i is mixed with a shuffled partner j with ratio λ = p_i / (p_i + p_j); the soft target is
    λ·onehot(ŷ_i) + (1−λ)·onehot(ŷ_j) (smoothed), and the mixed sample's confidence is max(p_i, p_j).
    ``mode``: mixup, cutmix, or both (each sample draws CutMix or mixup with equal chance, as the
    reference's per-element ``use_cutmix = rand(B) < switch_prob``, util/mixup.py L59, switch_prob 0.5).
    Returns the mixed images, targets and confidences; with ``passed`` (each sample's own mask, e.g. from
    per-class thresholds) the third is instead the mixed sample's mask, passed_i or passed_j: the same rule
    as max(p_i, p_j) ≥ τ under one threshold.
    """
    perm = torch.randperm(len(x), device=x.device)
    lam = conf / (conf + conf[perm]).clamp_min(1e-12)
    mixed, lam = mix(x, perm, lam, mode)
    targets = soft_targets(labels, num_classes, smoothing)
    lam = lam.view(-1, 1)
    third = torch.maximum(conf, conf[perm]) if passed is None else passed | passed[perm]
    return mixed, lam * targets + (1 - lam) * targets[perm], third


class PseudoLabelMethod(Method):
    """The shared step; subclasses choose the teacher."""

    Params = PseudoLabelParams
    labeled_views = ("weak",)
    unlabeled_views = ("weak", "strong")
    #: the teacher is the student itself (FixMatch): the weak views then go through the same training-mode
    #: forward as the labeled and strong views, as the official code does (``interleave`` of x, u_w, u_s in
    #: google-research/fixmatch and kekmodel/FixMatch-pytorch); with BatchNorm backbones the statistics then
    #: come from one batch of all three, and the weak logits see the same dropout as in the reference.
    teacher_in_student_pass: ClassVar[bool] = False
    supports_multilabel = True

    @classmethod
    def single_label_options(cls, params: Any) -> dict[str, Any]:
        return {"dist_align": params.dist_align, "class_thresholds": params.class_thresholds}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.unlabeled_ratio = p.mu
        # multi-label data: positive and negative pseudo-labels per class (methods/multilabel.py)
        self.ml_labeler = (MultiLabelPseudoLabels(self.num_classes, self.multilabel, p.threshold)
                           if self.multilabel is not None else None)
        # built only when switched on, so the default runs' checkpoints keep their keys
        self.aligner = (DistributionAlignment(self.num_classes, p.dist_align, p.align_window)
                        if p.dist_align != "off" else None)
        self.thresholder = (ClassThresholds(self.num_classes, p.class_thresholds, p.threshold)
                            if p.class_thresholds != "off" else None)

    def setup(self, num_train: int) -> None:
        if self.thresholder is not None:
            self.thresholder.setup(num_train)

    def pseudo_labels(self, probs: torch.Tensor, y: torch.Tensor,
                      index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's probabilities (aligned when ``dist_align`` is on), their confidences, pseudo-labels,
        and the mask of those used (one τ, or per-class thresholds)."""
        if self.aligner is not None:
            probs = self.aligner(probs, y)
        conf, pseudo = probs.max(-1)
        mask = conf >= self.params.threshold if self.thresholder is None else self.thresholder(probs, index)
        return probs, conf, pseudo, mask

    def teacher_logits(self, x_weak: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_l, y, u_weak, u_strong = batch.x["weak"], batch.y, batch.u["weak"], batch.u["strong"]
        assert y is not None
        if self.ml_labeler is not None:
            return self._multilabel_step(x_l, y, u_weak, u_strong, batch.u_true)
        metrics: dict[str, torch.Tensor] = {}
        if self.teacher_in_student_pass and p.pseudo_mixup == "off":  # one forward: labeled, weak, strong
            n, m = len(x_l), len(u_weak)
            logits = self.model(torch.cat([x_l, u_weak, u_strong]))
            logits_l, logits_u = logits[:n], logits[n + m:]
            _, conf, pseudo, mask = self.pseudo_labels(logits[n:n + m].detach().float().softmax(-1), y, batch.u_index)
            loss_x = F.cross_entropy(logits_l.float(), y, label_smoothing=p.label_smoothing)
            loss_u = (F.cross_entropy(logits_u.float(), pseudo, reduction="none") * mask.float()).mean()
            return self._output(loss_x, loss_u, logits_l, y, metrics, mask, pseudo, batch.u_true)
        # a separate teacher pass: the EMA-Teacher's network, or pseudo mixup (whose strong input is built
        # from the pseudo-labels, so it cannot share their forward)
        with torch.no_grad():
            probs = self.teacher_logits(u_weak).float().softmax(-1)
        probs, conf, pseudo, own_mask = self.pseudo_labels(probs, y, batch.u_index)
        if p.pseudo_mixup != "off":
            passed = own_mask if self.thresholder is not None else None
            u_input, u_targets, mixed = pseudo_mixup(u_strong, conf, pseudo, self.num_classes,
                                                     p.pseudo_mixup, p.mixup_smoothing, passed)
            # the mixed sample's confidence decides (engine_semi.py L110–111)
            mask = mixed >= p.threshold if passed is None else mixed
            metrics["mask_unmixed"] = own_mask.float().mean()
        else:
            u_input, u_targets = u_strong, F.one_hot(pseudo, self.num_classes).float()
            mask = own_mask
        # one forward pass over labeled and strong unlabeled images
        logits = self.model(torch.cat([x_l, u_input]))
        logits_l, logits_u = logits[:len(x_l)], logits[len(x_l):]
        loss_x = F.cross_entropy(logits_l.float(), y, label_smoothing=p.label_smoothing)
        loss_u = (soft_cross_entropy(logits_u, u_targets) * mask.float()).mean()
        return self._output(loss_x, loss_u, logits_l, y, metrics, mask, pseudo, batch.u_true)

    def _multilabel_step(self, x_l: torch.Tensor, y: torch.Tensor, u_weak: torch.Tensor, u_strong: torch.Tensor,
                         truth: torch.Tensor | None) -> StepOutput:
        """The same step on multi-label data: the teacher's sigmoid outputs on the weak views give positive and
        negative pseudo-labels per class (:class:`~semivit.methods.multilabel.MultiLabelPseudoLabels`), which the
        student learns on the strong views with the per-class loss; entries between the thresholds give none."""
        assert self.multilabel is not None and self.ml_labeler is not None
        p = self.params
        n, m = len(x_l), len(u_weak)
        mixing = p.pseudo_mixup != "off"
        if self.teacher_in_student_pass and not mixing:  # one forward: labeled, weak, strong
            logits = self.model(torch.cat([x_l, u_weak, u_strong]))
            weak, logits_u = logits[n:n + m].detach(), logits[n + m:]
            pseudo, mask = self.ml_labeler(weak.float().sigmoid(), y)
        else:  # the teacher's own pass (pseudo mixup builds the strong input from its labels)
            with torch.no_grad():
                probs = self.teacher_logits(u_weak).float().sigmoid()
            pseudo, mask = self.ml_labeler(probs, y)
            u_input = u_strong
            if mixing:
                u_input, targets, used = multilabel_pseudo_mixup(u_strong, probs, pseudo, mask, p.pseudo_mixup,
                                                                 p.mixup_smoothing)
            logits = self.model(torch.cat([x_l, u_input]))
            logits_u = logits[n:]
        if not mixing:
            targets, used = pseudo, mask
        logits_l = logits[:n]
        loss_x = multilabel_loss(logits_l, smooth_binary(y, p.label_smoothing), self.multilabel).mean()
        loss_u = multilabel_loss(logits_u, targets, self.multilabel, used).mean()
        # the diagnostics read each image's own pseudo-labels (after mixing too, as the single-label step does)
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "acc": entry_accuracy(logits_l, y).detach(),
                   "mask": used.float().mean().detach(), "positives": (pseudo.bool() & mask).float().mean().detach()}
        if mixing:
            metrics["mask_unmixed"] = mask.float().mean().detach()
        if truth is not None:  # hidden labels, diagnostics only
            known = truth >= 0
            correct = (pseudo == truth) & known
            metrics["pseudo_acc"] = ((correct & mask).sum() / (mask & known).sum().clamp_min(1)).float()
            # the share of all (image, class) entries that got a right pseudo-label
            metrics["pseudo_coverage"] = ((correct & mask).sum() / known.sum().clamp_min(1)).float()
        return StepOutput(loss_x + p.lambda_u * loss_u, metrics)

    def _output(self, loss_x: torch.Tensor, loss_u: torch.Tensor, logits_l: torch.Tensor, y: torch.Tensor,
                metrics: dict[str, torch.Tensor], mask: torch.Tensor, pseudo: torch.Tensor,
                truth: torch.Tensor | None) -> StepOutput:
        # mask, pseudo_acc and pseudo_recall use the mask training used (after mixing, the mixed confidence),
        # with ŷ_i as sample i's label — the reference logs them so (engine_semi.py L157–163)
        return StepOutput(loss_x + self.params.lambda_u * loss_u,
                          {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                           "acc": (logits_l.argmax(-1) == y).float().mean().detach(),
                           **metrics, **self._diagnostics(mask, pseudo, truth)})

    @staticmethod
    def _diagnostics(mask: torch.Tensor, pseudo: torch.Tensor, truth: torch.Tensor | None) -> dict:
        """:func:`pseudo_label_diagnostics` and the teacher's accuracy on all weak views."""
        out = pseudo_label_diagnostics(mask, pseudo, truth)
        if truth is not None:
            known = truth >= 0
            out["teacher_acc"] = (((pseudo == truth) & known).sum() / known.sum().clamp_min(1)).float()
        return out


def pseudo_label_diagnostics(mask: torch.Tensor, pseudo: torch.Tensor,
                             truth: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Mask ratio; against hidden labels where they exist (``truth`` ≥ 0; benchmarks only, never the loss):
    pseudo-label accuracy of the used labels and recall (share of correct pseudo-labels that pass the mask)."""
    out = {"mask": mask.float().mean()}
    if truth is not None:
        known = truth >= 0
        correct = (pseudo == truth) & known
        out["pseudo_acc"] = (correct & mask).sum() / (mask & known).sum().clamp_min(1)
        out["pseudo_recall"] = (correct & mask).sum() / correct.sum().clamp_min(1)
    return {k: v.detach().float() for k, v in out.items()}


@register_method
class FixMatch(PseudoLabelMethod):
    """FixMatch (Sohn et al., NeurIPS 2020): the student labels its own weak views. Defaults are the
    paper's (:class:`FixMatchParams`); for evaluation on an EMA of the weights, as the paper and as the
    EMA-Teacher's teacher, set ``train.ema`` (the ``fixmatch`` recipe does)."""

    name = "fixmatch"
    Params = FixMatchParams
    teacher_in_student_pass = True

    def teacher_logits(self, x_weak: torch.Tensor) -> torch.Tensor:
        return self.model(x_weak)


@register_method
class EMATeacher(PseudoLabelMethod):
    """Semi-ViT's EMA-Teacher (Cai et al., NeurIPS 2022): pseudo-labels from an EMA of the student.

    The momentum is ``ema`` declared for ``ema_ref_steps`` steps and scaled to this stage's length,
    m^(ema_ref_steps/K) (:func:`~semivit.core.ema.scaled_momentum`), so a stage shortened by ``--steps``
    or a benchmark budget leaves the teacher as far from its start as the full stage; the run's config.yaml
    records the value used.

    Start: the reference (main_semi.py L334–358) loads the student from the supervised checkpoint's
    ``model`` and the teacher from its ``model_ema`` when there is one (``--super_finetune_ema``, on by
    default). A semivit pipeline hands one set of weights from stage to stage — the stage's evaluation
    EMA when it has one (``train.ema``: the trainer exports the EMA as model.safetensors), else the raw
    model — so the teacher starts from the stage-2 EMA when there is one, as the reference's does; the
    student starts from the same weights (a departure: the raw stage-2 weights are not exported).
    """

    name = "ema_teacher"

    @classmethod
    def schedule(cls, params: Any, total_steps: int) -> dict[str, float]:
        return {"teacher_half_life": half_life(scaled_momentum(params.ema, params.ema_ref_steps, total_steps))}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.momentum = scaled_momentum(self.params.ema, self.params.ema_ref_steps, self.total_steps, "method.ema")
        # BatchNorm statistics averaged with the weights, as Semi-ViT's timm ModelEma does (no-op for ViTs)
        self.teacher = ModelEMA(self.model, self.momentum, buffers="ema")

    def effective_settings(self) -> dict[str, Any]:
        if self.params.ema_ref_steps is None:
            return {}
        return {"ema": self.momentum, "ema_ref_steps": self.total_steps}

    def teacher_logits(self, x_weak: torch.Tensor) -> torch.Tensor:
        return self.teacher(x_weak)

    def on_step_end(self, step: int) -> None:
        self.teacher.update(self.model)

    def eval_model(self) -> nn.Module:
        return self.teacher.module if self.params.eval_with == "teacher" else self.model
