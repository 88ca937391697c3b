"""Semiformer (Weng et al., "Semi-Supervised Vision Transformers", ECCV 2022, arXiv 2111.11067, Sec. 3).

A dual-stream model (:mod:`semivit.models.semiformer`: a conv stream and a Transformer stream coupled in
every block, one head each) is trained jointly. With z_c, z_t the two heads' logits:

    L_x = ½ [CE(y, z_c(x)) + CE(y, z_t(x))]                                          (labeled, both heads)
    ŷ_i = argmax q_i,  q_i = softmax(z_c(weak(u_i)))                   (pseudo-label: the conv stream's)
    L_u = ½ Σ_{s ∈ {c, t}} (1/μB) Σ_i 1[max q_i ≥ τ] · CE(ŷ_i, z_s(strong(u_i)))
    L   = L_x + λ_u · 1[step ≥ warm-up] · L_u

The conv stream, with its spatial inductive bias, learns faster from few labels; its confident
pseudo-labels on the weak view supervise the Transformer stream (and the conv stream itself) on the strong
view — FixMatch's weak/strong consistency with the pseudo-labels taken across streams. The paper uses
τ = 0.7, λ_u = 4, μ = 7 and starts L_u after 30 of 600 epochs. The pseudo-label source can also be the
Transformer head or the fused prediction q = ½(softmax(z_c) + softmax(z_t)) (options of the reference
code), and L_u can be restricted to one stream. Both ½ factors follow the reference code's
averaging over the two heads. The weak views are labelled without gradients.

One departure from the reference code: it labels the weak views with the network in evaluation mode
(BatchNorm running statistics). Those statistics come from the training batches, 7/8 strong views, and on
8×8 digits strong views differ so much from weak ones that the conv head's weak-view accuracy fell from 0.67
to 0.32 within 20 steps of the unlabeled loss starting, and the labeled training accuracy from 0.95 to 0.5
(digits, 4 labels per class, the unlabeled loss from step 125).
semivit labels in training mode by default (``teacher_mode: train``: batch statistics of the weak batch,
which also enter the running statistics, as semivit's FixMatch); ``teacher_mode: eval`` is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.pseudo_label import pseudo_label_diagnostics
from semivit.models.semiformer import fuse_logits

SOURCES = ("conv", "transformer", "fused")
UNLABELED_STREAMS = {"both": ("conv", "transformer"), "transformer": ("transformer",), "conv": ("conv",)}


@dataclass
class SemiformerParams:
    threshold: float = 0.7  # τ: confidence of the pseudo-label source needed to use a pseudo-label
    lambda_u: float = 4.0  # λ_u: weight of the unlabeled loss
    mu: float = 7.0  # μ: unlabeled images per labeled image
    # no unlabeled loss before this share of the steps (< 1) or this many steps (>= 1); the paper's 5% was far
    # too short on digits (recipe: 125 steps)
    warmup_u: float = 0.05
    pseudo_source: str = "conv"  # which head labels the weak views: conv | transformer | fused
    unlabeled_streams: str = "both"  # heads that learn the pseudo-labels on strong views: both | transformer | conv
    teacher_mode: str = "train"  # the weak-view pass: train (BatchNorm batch statistics) | eval (running statistics)


def unlabeled_start(warmup_u: float, total_steps: int) -> int:
    """The first step with an unlabeled loss: ``warmup_u`` is a share of the steps (< 1) or a step count."""
    return int(warmup_u * total_steps) if warmup_u < 1 else int(warmup_u)


@register_method
class Semiformer(Method):
    """Both heads learn the labels; the chosen head's confident weak-view predictions pseudo-label the strong
    views for the Transformer stream (and the conv stream). Evaluation uses the fused prediction."""

    name = "semiformer"
    Params = SemiformerParams
    labeled_views = ("weak",)
    unlabeled_views = ("weak", "strong")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if not hasattr(self.model, "stream_logits"):
            raise SemivitError(f"method semiformer needs a dual-stream model, not '{self.model.spec.name}': "
                               f"use --model semiformer_tiny (small images) or semiformer_small")
        if p.pseudo_source not in SOURCES:
            raise SemivitError(f"method.pseudo_source must be conv, transformer or fused, got '{p.pseudo_source}'")
        if p.unlabeled_streams not in UNLABELED_STREAMS:
            raise SemivitError(f"method.unlabeled_streams must be both, transformer or conv, "
                               f"got '{p.unlabeled_streams}'")
        if p.teacher_mode not in ("train", "eval"):
            raise SemivitError(f"method.teacher_mode must be train or eval, got '{p.teacher_mode}'")
        if p.warmup_u < 0:
            raise SemivitError(f"method.warmup_u must be >= 0, got {p.warmup_u}")
        self.unlabeled_ratio = p.mu
        self.start_step = unlabeled_start(p.warmup_u, self.total_steps)

    @torch.no_grad()
    def pseudo_labels(self, u_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(confidence, pseudo-label) from ``pseudo_source`` on the weak views, and every head's logits.

        The network runs in ``teacher_mode`` (train or eval) and is put back in the mode it was in.
        """
        was_training = self.model.training
        self.model.train(self.params.teacher_mode == "train")
        try:
            logits = {k: v.float() for k, v in self.model.stream_logits(u_weak).items()}
        finally:
            self.model.train(was_training)
        conf, pseudo = logits[self.params.pseudo_source].softmax(-1).max(-1)
        return conf, pseudo, logits

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x_l, y = batch.x["weak"], batch.y
        assert y is not None
        conf, pseudo, weak = self.pseudo_labels(batch.u["weak"])
        mask = conf >= p.threshold
        active = step >= self.start_step
        # one pass over the labeled and (once the warm-up is over) the strong unlabeled images
        x = torch.cat([x_l, batch.u["strong"]]) if active else x_l
        out = self.model.stream_logits(x)
        n = len(x_l)
        metrics: dict[str, torch.Tensor] = {}
        loss_x = x_l.new_zeros((), dtype=torch.float32)
        for s in ("conv", "transformer"):
            ce = F.cross_entropy(out[s][:n].float(), y)
            loss_x = loss_x + 0.5 * ce
            metrics[f"loss_x_{s}"] = ce.detach()
            metrics[f"acc_{s}"] = (out[s][:n].argmax(-1) == y).float().mean().detach()
        metrics["acc"] = (out["fused"][:n].argmax(-1) == y).float().mean().detach()
        loss_u = x_l.new_zeros((), dtype=torch.float32)
        for s in ("conv", "transformer"):
            if active and s in UNLABELED_STREAMS[p.unlabeled_streams]:
                ce = (F.cross_entropy(out[s][n:].float(), pseudo, reduction="none") * mask.float()).mean()
                loss_u = loss_u + 0.5 * ce
                metrics[f"loss_u_{s}"] = ce.detach()
            else:
                metrics[f"loss_u_{s}"] = loss_u.new_zeros(())
        loss = loss_x + p.lambda_u * loss_u
        metrics.update(loss_x=loss_x.detach(), loss_u=loss_u.detach(),
                       u_active=torch.tensor(float(active), device=loss.device))
        metrics.update(self._diagnostics(mask, pseudo, weak, batch.u_true))
        return StepOutput(loss, metrics)

    @staticmethod
    def _diagnostics(mask: torch.Tensor, pseudo: torch.Tensor, weak: dict[str, torch.Tensor],
                     truth: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Mask ratio and how often the two heads agree on the weak views; against the hidden labels (where
        known): pseudo-label accuracy of the used labels, recall (share of correct pseudo-labels that pass the
        threshold) and each head's accuracy on the weak views (computed during the warm-up too)."""
        preds = {s: weak[s].argmax(-1) for s in ("conv", "transformer")}
        preds["fused"] = fuse_logits(weak["conv"], weak["transformer"]).argmax(-1)
        out = {**pseudo_label_diagnostics(mask, pseudo, truth),
               "agree": (preds["conv"] == preds["transformer"]).float().mean()}
        if truth is not None:
            known = truth >= 0
            for s, pred in preds.items():
                out[f"weak_acc_{s}"] = ((pred == truth) & known).sum() / known.sum().clamp_min(1)
        return {k: v.detach().float() for k, v in out.items()}
