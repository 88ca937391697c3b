"""OpenMatch (Saito, Kim & Saenko, NeurIPS 2021): semi-supervised learning from an unlabeled pool that holds
images of classes nobody labeled, with one-vs-all (OVA) outlier heads and soft open-set consistency.

Beside the K-way classifier the method owns K binary OVA heads (one linear layer, 2K logits, read as B×2×K:
index 0 "not class j", index 1 "class j"; the official code's ``fc_open``, without bias). With
p_j^+ = softmax over the pair of head j, the loss is

    L = L_x + L_ova + λ_em · L_em + λ_socr · L_socr + λ_u · L_fix

- L_x: cross-entropy of the labeled images;
- L_ova (Eq. 1, with the official ``ova_loss``'s hard-negative mining): (1/B) Σ_i [−log p_{y_i}^+(x_i)
  − min_{j≠y_i} log p_j^-(x_i)], the hardest negative head only;
- L_em (Eq. 2, ``ova_ent``): the mean entropy of every OVA head's pair on the unlabeled images, averaged over
  two weak views, so each unlabeled image is pushed to a confident inlier-or-outlier decision;
- L_socr (Eq. 3, soft open-set consistency): (1/B) Σ_i Σ_j Σ_{t∈{−,+}} (p_j^t(u_i) − p_j^t(u'_i))² between two
  augmentations u, u' of the same unlabeled image, on every image (outliers included);
- L_fix: FixMatch (weak view labels its strong view where max p ≥ τ) on the unlabeled images selected as
  inliers: outlier score s(u) = 1 − p_ŷ^+(u) below ``inlier_cutoff`` (0.5) for ŷ the K-way prediction, and
  only from ``start_fix`` on (the paper's warm-up epochs, here a share of the stage: 10 of 512 epochs in the
  paper; the default 0.1 gives a short stage's OVA heads time to learn first).

Departures from the official code (VisionLearningGroup/OP_Match ``trainer.py``): inliers are selected in
the batch from the weak view's OVA output (as USB's ``openmatch`` does) instead of by a pass over the whole
pool each epoch; the first weak view both feeds SOCR and labels the strong view, in one forward pass.

Measured (benchmarks/RESULTS.md, issue 28): on a frozen ImageNet backbone's features the linear OVA heads
extrapolate, and images of unknown classes far from the labeled ones score as *more* familiar (AUROC 0.15 on
CIFAR-10 6/10), even with the heads trained on the labels alone; closed-set accuracy still gains. ``ova_bias``
adds a bias to the heads (not the paper's; it did not change that).

On the partial path (``features.train_blocks``: the backbone's last blocks train on cached activations, recipe
``partial-openmatch``) the heads read features that learn, closer to the paper's setting (a network trained
whole).

Every unlabeled image's outlier score is written to ``outlier_scores.csv`` of the run (and the test set's to
``test_outlier_scores.csv``); when the test set holds images of unknown classes (label −1) ``results.json``
gets ``test_openset_auroc``, the AUROC of unknown against known by the outlier score (and
``test_openset_auroc_msp``, by 1 − the maximum softmax probability, the standard baseline).

Examples:
    >>> import torch
    >>> logits_open = torch.zeros(2, 6)  # 2 images, K = 3 heads: every pair at p = 0.5
    >>> round(float(ova_loss(logits_open, torch.tensor([0, 2]))), 4)  # -2 log 0.5
    1.3863
    >>> semivit.fit("data.npz", method="openmatch", labels="50-per-class")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semivit.core.io import atomic_write_json
from semivit.core.schedule import stage_steps
from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.pseudo_label import pseudo_label_diagnostics
from semivit.models.heads import FeatureHead
from semivit.models.outlier import (
    attach_outlier_head,
    fold_standardization,
    outlier_score,
    ova_probs,
    scored_parts,
    write_scores,
)
from semivit.models.tail import BackboneTail

__all__ = ["OpenMatch", "OpenMatchParams", "outlier_score", "ova_entropy", "ova_loss", "ova_probs", "socr_loss"]

log = logging.getLogger("semivit")


@dataclass
class OpenMatchParams:
    threshold: float = 0.95  # τ of FixMatch on the selected inliers (FixMatch's paper)
    lambda_u: float = 1.0  # λ_u: weight of the FixMatch loss
    mu: float = 2.0  # μ: unlabeled images per labeled image (OP_Match: --mu 2)
    lambda_em: float = 0.1  # λ_em: OVA entropy minimisation (OP_Match: --lambda_oem 0.1)
    lambda_socr: float = 0.5  # λ_socr: soft open-set consistency (OP_Match: 0.5 on CIFAR-10, 1.0 on CIFAR-100)
    start_fix: float = 0.1  # FixMatch starts here: a share of the stage below 1, else a number of steps
    inlier_cutoff: float = 0.5  # an unlabeled image is an inlier when its outlier score is below this
    label_smoothing: float = 0.0  # ε of the labeled cross-entropy
    ova_bias: bool = False  # a bias in the OVA heads (the official fc_open has none)


def ova_loss(logits_open: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with hard-negative mining (official ``ova_loss``): mean_i [−log p_{y_i}^+ + max_{j≠y_i} −log p_j^-].

    Examples:
        >>> # K = 2, head 0 at p+ = σ(2): label 0 → −log σ(2) − log 1/2; label 1 → −log 1/2 − log σ(−2)
        >>> logits_open = torch.tensor([[0.0, 0.0, 2.0, 0.0]])
        >>> [round(float(ova_loss(logits_open, torch.tensor([y]))), 4) for y in (0, 1)]
        [0.8201, 2.8201]
    """
    p = ova_probs(logits_open)
    positive = F.one_hot(labels, p.shape[2]).float()
    inlier = (-torch.log(p[:, 1] + 1e-8) * positive).sum(1)
    hardest_negative = (-torch.log(p[:, 0] + 1e-8) * (1 - positive)).max(1).values
    return (inlier + hardest_negative).mean()


def ova_entropy(logits_open: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (official ``ova_ent``): the entropy of each head's pair, averaged over heads and images."""
    p = ova_probs(logits_open)
    return (-(p * torch.log(p + 1e-8)).sum(1)).mean(1).mean()


def socr_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Eq. 3, soft open-set consistency: mean_i Σ_j Σ_t (p_j^t(a_i) − p_j^t(b_i))² over both views' OVA outputs."""
    return ((ova_probs(logits_a) - ova_probs(logits_b)) ** 2).sum((1, 2)).mean()


class OpenSetNet(nn.Module):
    """The classifier and the OVA heads as one network whose output is [K logits, 2K OVA logits]: what the
    stage's inputs run over a part of the data (images, or cached features) to score it."""

    def __init__(self, method: OpenMatch) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, h = self.method.logits_and_features(x)
        return torch.cat([logits.float(), self.method.ova(h).float()], 1)


@register_method
class OpenMatch(Method):
    """OpenMatch: FixMatch on the unlabeled images its OVA heads call inliers (see the module docstring)."""

    name = "openmatch"
    Params = OpenMatchParams
    scores_outliers = True
    labeled_views = ("weak",)
    unlabeled_views = ("weak", "weak:2", "strong")

    @classmethod
    def schedule(cls, params: Any, total_steps: int) -> dict[str, float]:
        return {"start_fix": float(stage_steps(params.start_fix, total_steps))}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        for key in ("threshold", "inlier_cutoff"):
            if not 0 <= getattr(p, key) <= 1:
                raise SemivitError(f"method.{key} must be in [0, 1], got {getattr(p, key)}")
        for key in ("lambda_u", "lambda_em", "lambda_socr", "start_fix", "label_smoothing"):
            if getattr(p, key) < 0:
                raise SemivitError(f"method.{key} must be ≥ 0, got {getattr(p, key)}")
        if p.mu <= 0:
            raise SemivitError(f"method.mu must be > 0 (openmatch learns from unlabeled images), got {p.mu}")
        self.unlabeled_ratio = p.mu
        self.start_step = stage_steps(p.start_fix, self.total_steps)
        head = self._feature_head()
        if head is not None:  # cached features (or the last blocks on them): the heads read the standardised ones
            width = head.linear.in_features
        elif hasattr(self.model, "classifier_input") and hasattr(self.model, "classifier"):
            try:
                width = self.model.classifier().in_features
            except SemivitError as e:
                raise SemivitError(f"openmatch needs a model with one linear classifier: {e}") from None
        else:
            raise SemivitError(f"openmatch needs an image classifier, a linear head on cached features or a "
                               f"backbone's last blocks with their head, got {type(self.model).__name__}")
        # the official fc_open: one linear layer, 2K outputs, no bias (unless ova_bias)
        self.ova = nn.Linear(width, 2 * self.num_classes, bias=p.ova_bias)

    def _feature_head(self) -> FeatureHead | None:
        """The linear head on standardised features of a run on cached features (alone, or after the trained last
        blocks of a cut backbone); None for an image classifier."""
        if isinstance(self.model, FeatureHead):
            return self.model
        return self.model.head if isinstance(self.model, BackboneTail) else None

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K-way logits and the features the classifier reads (which the OVA heads read too)."""
        head = self._feature_head()
        if head is not None:  # a cut backbone's activations go through its trained blocks first
            h = head.standardize(self.model.pooled(x.float()) if isinstance(self.model, BackboneTail) else x)
            return head.linear(h), h
        h = self.model.classifier_input(x)
        return self.model.classifier()(h), h

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_l, y = batch.x["weak"], batch.y
        u1, u2, u_strong = batch.u["weak"], batch.u["weak:2"], batch.u["strong"]
        assert y is not None
        n, m = len(x_l), len(u1)
        # one forward over labeled, both weak and the strong views (the official code's one concatenated batch)
        logits, h = self.logits_and_features(torch.cat([x_l, u1, u2, u_strong]))
        logits, logits_open = logits.float(), self.ova(h).float()
        loss_x = F.cross_entropy(logits[:n], y, label_smoothing=p.label_smoothing)
        loss_ova = ova_loss(logits_open[:n], y)
        open_1, open_2 = logits_open[n:n + m], logits_open[n + m:n + 2 * m]
        loss_em = (ova_entropy(open_1) + ova_entropy(open_2)) / 2
        loss_socr = socr_loss(open_1, open_2)
        with torch.no_grad():
            weak = logits[n:n + m].detach()
            conf, pseudo = weak.softmax(-1).max(-1)
            inlier = outlier_score(weak, open_1.detach()) < p.inlier_cutoff
        # the warm-up is decided on the host from the step number: no device sync
        mask = (conf >= p.threshold) & inlier if step >= self.start_step else torch.zeros_like(inlier)
        loss_fix = (F.cross_entropy(logits[n + 2 * m:], pseudo, reduction="none") * mask.float()).mean()
        loss = loss_x + loss_ova + p.lambda_em * loss_em + p.lambda_socr * loss_socr + p.lambda_u * loss_fix
        metrics = {"loss_x": loss_x.detach(), "loss_ova": loss_ova.detach(), "loss_em": loss_em.detach(),
                   "loss_socr": loss_socr.detach(), "loss_u": loss_fix.detach(),
                   "acc": (logits[:n].argmax(-1) == y).float().mean().detach(),
                   "inlier": inlier.float().mean(), **pseudo_label_diagnostics(mask, pseudo, batch.u_true)}
        if batch.u_true is not None:  # hidden labels (benchmarks only): share of true outliers selected
            outlier = batch.u_true < 0
            metrics["outlier_recall"] = ((~inlier & outlier).sum() / outlier.sum().clamp_min(1)).float()
        return StepOutput(loss, metrics)

    def complete_export(self, model: nn.Module) -> nn.Module:
        """A copy of the exported classifier carrying the OVA heads as its outlier head (``models/outlier.py``),
        folded from the standardised features a head on cached features reads into the raw features the exported
        network computes, so ``predict`` and the ONNX file score new images."""
        head = self._feature_head()
        folded = fold_standardization(self.ova, *((head.mean, head.std) if head is not None else ()))
        model = copy.deepcopy(model)
        attach_outlier_head(model, folded.to(next(model.parameters()).device))
        return model

    @torch.no_grad()
    def scores(self, inputs: Any, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Outlier scores and K-way logits of a part of the stage's data (``unlabeled``, ``test``, ...)."""
        out = inputs.logits(OpenSetNet(self), part)
        logits, logits_open = out[:, :self.num_classes], out[:, self.num_classes:]
        return outlier_score(logits, logits_open), logits

    def save_outputs(self, inputs: Any, run_dir: Path) -> dict[str, Any]:
        """Write every unlabeled (and test) image's outlier score; the test AUROC of unknown vs known."""
        from sklearn.metrics import roc_auc_score

        data, metrics = inputs.data, {}
        for part, name, images, idx in scored_parts(data, "outlier_scores.csv"):
            score, logits = self.scores(inputs, part)
            write_scores(run_dir / name, images, idx, score, logits.argmax(1))
            labels = images.labels[idx]
            if part == "test" and bool((labels < 0).any()) and bool((labels >= 0).any()):
                unknown = labels < 0
                metrics["test_openset_auroc"] = float(roc_auc_score(unknown.numpy(), score.float().numpy()))
                msp = 1 - logits.softmax(1).max(1).values  # the standard baseline: 1 − max softmax probability
                metrics["test_openset_auroc_msp"] = float(roc_auc_score(unknown.numpy(), msp.float().numpy()))
        if metrics:
            path = run_dir / "results.json"
            results = json.loads(path.read_text()) if path.is_file() else {}
            atomic_write_json(path, {**results, **metrics})
            log.info("open-set AUROC on the test set: %.4f (max softmax: %.4f)", metrics["test_openset_auroc"],
                     metrics["test_openset_auroc_msp"])
        log.info("outlier scores of %d unlabeled images: %s", len(data.split.unlabeled), run_dir / "outlier_scores.csv")
        return metrics
