"""SimCLR(v2) contrastive pre-training (Chen et al. 2020a/b): two augmented views, NT-Xent on the
outputs of a deep projection head; labels are not used."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.losses import nt_xent
from semivit.models.factory import attach_head_layers
from semivit.models.heads import ProjectionHead


@dataclass
class SimCLRParams:
    temperature: float = 0.2  # τ of NT-Xent (SimCLR: 0.1–0.5; larger batches prefer smaller τ)
    proj_layers: int = 3  # SimCLRv2's 3-layer head (SimCLR v1: 2)
    proj_dim: int = 128
    proj_hidden: int | None = None  # None = the backbone's feature width
    finetune_layer: int = 1  # SimCLRv2: the exported model keeps this many head layers for fine-tuning


@register_method
class SimCLR(Method):
    name = "simclr"
    Params = SimCLRParams
    labeled_views = ()
    trains_classifier = False
    find_unused_parameters = True  # the classifier head gets no gradient (DDP)
    unlabeled_views = ("contrastive", "contrastive:2")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if not 0 <= p.finetune_layer < p.proj_layers:
            raise SemivitError(f"method.finetune_layer must be in [0, {p.proj_layers - 1}] (a layer of the "
                               f"{p.proj_layers}-layer projection head), got {p.finetune_layer}")
        head = ProjectionHead(self.model.num_features, p.proj_hidden, p.proj_dim, p.proj_layers)
        # The first `finetune_layer` head layers live in the model (they are exported and fine-tuned, as
        # SimCLRv2 fine-tunes from the first layer of the projection head); the rest stay with the method.
        kept = list(head.blocks[:p.finetune_layer])
        if kept:
            attach_head_layers(self.model, kept, head.blocks[0][0].out_features)
        self.kept = torch.nn.ModuleList(kept)  # the same modules, to run them without the classifier
        self.projector = torch.nn.Sequential(*head.blocks[p.finetune_layer:])

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = (batch.u[view] for view in self.unlabeled_views)  # CVRL's subclass: two clips of a video
        # one forward pass over both views, so the head's BatchNorm normalises them together
        h = self.model.features(torch.cat([x1, x2]))
        for block in self.kept:
            h = block(h)
        z = self.projector(h)
        loss, hit = nt_xent(z[:len(x1)], z[len(x1):], self.params.temperature)
        return StepOutput(loss, {"loss_con": loss.detach(), "pos_top1": hit})

