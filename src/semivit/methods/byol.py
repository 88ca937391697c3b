"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): self-supervised pre-training without negatives.

An online network (backbone features → projection MLP → prediction MLP) predicts, for one augmented view,
the projection z'_ξ that a *target* network (backbone + projector, no predictor) gives for the other view.
The target is an exponential moving average of the online backbone and projector, ξ ← τ·ξ + (1 − τ)·θ
(Eq. 1), with τ rising from τ_base to 1 by a cosine over training (Sec. 3.3); it gets no gradient. τ_base
is declared for a stage of ``momentum_ref_steps`` steps and scaled to the stage's real length
(core/ema.py). The loss is the normalised MSE 2 − 2·cos(q_θ, sg(z'_ξ)), symmetrised over the two views
(Eq. 2). Labels are not used; the exported model is the online backbone, for fine-tuning (the ``byol``
recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from semivit.core.ema import ModelEMA, half_life, scaled_momentum
from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.losses import byol_loss
from semivit.models.factory import ImageClassifier
from semivit.models.heads import MLPHead


@dataclass
class BYOLParams:
    base_momentum: float = 0.99  # τ_base of the target EMA (paper: 0.996 on ImageNet; 0.99 suits short runs)
    # the stage length τ_base is declared for: a stage of K steps starts at τ_base^(momentum_ref_steps/K), so
    # the target lags the online network by the same share of the stage (core/ema.py); None = as given.
    # 600 steps: the byol recipe's stage, where 0.99 was chosen (digits)
    momentum_ref_steps: int | None = 600
    proj_dim: int = 128  # output of the projector and the predictor (paper: 256)
    proj_hidden: int | None = None  # hidden width of both MLPs; None = 4 × the backbone's width (paper: 4096)
    view: str = "contrastive"  # augmentation of the two views (SimCLR's crop + flip + colour distortion)
    MOMENTUM_REFERENCES: ClassVar[dict[str, str]] = {"base_momentum": "momentum_ref_steps"}


def target_momentum(step: int, total_steps: int, base: float) -> float:
    """The target's EMA momentum at step k of K (Grill et al. 2020, Sec. 3.3):
    τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2, from τ_base at k = 0 to 1 at k = K. ``base`` is τ_base
    already scaled to the stage's length (:func:`~semivit.core.ema.scaled_momentum`)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


class _Encoder(nn.Module):
    """Backbone features → projector: what the target network averages (built on the fly, not a child of
    the method, so the online weights are registered once)."""

    def __init__(self, model: ImageClassifier, projector: nn.Module) -> None:
        super().__init__()
        self.model, self.projector = model, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.model.features(x))


@register_method
class BYOL(Method):
    name = "byol"
    Params = BYOLParams
    labeled_views = ()
    trains_classifier = False  # judged by k-NN on features until fine-tuned
    find_unused_parameters = True  # the classifier head gets no gradient (DDP)

    @classmethod
    def schedule(cls, params: Any, total_steps: int) -> dict[str, float]:
        start = scaled_momentum(params.base_momentum, params.momentum_ref_steps, total_steps)
        return {"target_half_life_at_start": half_life(start)}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if not 0.0 <= p.base_momentum <= 1.0:
            raise SemivitError(f"method.base_momentum must be in [0, 1], got {p.base_momentum}")
        self.unlabeled_views = (p.view, f"{p.view}:2")
        hidden = p.proj_hidden or 4 * self.model.num_features
        self.projector = MLPHead(self.model.num_features, hidden, p.proj_dim, num_layers=2)
        self.predictor = MLPHead(p.proj_dim, hidden, p.proj_dim, num_layers=2)
        # τ_base follows the stage's length: the paper's schedule is planned over a fixed number of steps
        self.base_momentum = scaled_momentum(p.base_momentum, p.momentum_ref_steps, self.total_steps,
                                             "method.base_momentum")
        self.target = ModelEMA(_Encoder(self.model, self.projector), self.base_momentum)  # ξ initialised to θ

    def effective_settings(self) -> dict[str, Any]:
        if self.params.momentum_ref_steps is None:
            return {}
        return {"base_momentum": self.base_momentum, "momentum_ref_steps": self.total_steps}

    def momentum(self, step: int) -> float:
        return target_momentum(step, self.total_steps, self.base_momentum)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.u[self.params.view], batch.u[f"{self.params.view}:2"]
        n = len(x1)
        x = torch.cat([x1, x2])
        z = self.projector(self.model.features(x))  # one pass over both views: BatchNorm sees them together
        q = self.predictor(z)
        with torch.no_grad():
            target = self.target.module
            # The target's BatchNorm uses batch statistics like the online network's (as BYOL's code); its
            # backbone stays in eval mode (no drop-path). Its running statistics are overwritten each update.
            target.projector.train(self.training)
            z_t = target(x)
        # L^BYOL = L(q(view 1), z'(view 2)) + L(q(view 2), z'(view 1))  (Eq. 2)
        loss = byol_loss(q[:n], z_t[n:]) + byol_loss(q[n:], z_t[:n])
        with torch.no_grad():  # collapse shows as a per-dimension std of the normalised projections near 0
            z_std = F.normalize(z.float(), dim=-1).std(0).mean()
        return StepOutput(loss, {"loss_byol": loss.detach(), "z_std": z_std,
                                 "tau": torch.tensor(self.momentum(step))})

    def on_step_end(self, step: int) -> None:
        self.target.update(_Encoder(self.model, self.projector), decay=self.momentum(step))
