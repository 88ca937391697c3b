"""SimCLR(v2) contrastive pre-training (Chen et al. 2020a/b): two augmented views, NT-Xent on the
outputs of a deep projection head; labels are not used."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.data.loaders import Batch
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.losses import nt_xent
from semivit.models.heads import ProjectionHead


@dataclass
class SimCLRParams:
    temperature: float = 0.2  # τ of NT-Xent (SimCLR: 0.1–0.5; larger batches prefer smaller τ)
    proj_layers: int = 3  # SimCLRv2's 3-layer head (SimCLR v1: 2)
    proj_dim: int = 128
    proj_hidden: int | None = None  # None = the backbone's feature width


@register_method
class SimCLR(Method):
    name = "simclr"
    Params = SimCLRParams
    labeled_views = ()
    unlabeled_views = ("contrastive", "contrastive:2")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.projector = ProjectionHead(self.model.num_features, p.proj_hidden, p.proj_dim, p.proj_layers)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.u["contrastive"], batch.u["contrastive:2"]
        # one forward pass over both views, so the head's BatchNorm normalises them together
        z = self.projector(self.model.features(torch.cat([x1, x2])))
        loss, hit = nt_xent(z[:len(x1)], z[len(x1):], self.params.temperature)
        return StepOutput(loss, {"loss_con": loss.detach(), "pos_top1": hit})

