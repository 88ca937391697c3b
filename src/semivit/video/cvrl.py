"""CVRL: spatiotemporal contrastive video representation learning (Qian et al., CVPR 2021, arXiv 2008.03800).

Two clips of one video, sampled by temporal interval sampling (:mod:`semivit.video.sampling`) and
augmented with temporally consistent spatial augmentation (:mod:`semivit.video.augment`), are a positive
pair; the clips of the other videos in the batch (on every DDP rank) are the negatives. Each clip is
encoded by a video ResNet, projected by an MLP head, and the pair is scored by InfoNCE (Sec. 3.1, Eq. 1):

    L_i = −log  exp(sim(z_i, z_i')/τ) / Σ_{k ≠ i} exp(sim(z_i, z_k)/τ),    τ = 0.1,

summed over the 2N clips — SimCLR's NT-Xent, which :func:`semivit.methods.losses.nt_xent` implements with
negatives gathered across ranks. The projection head is the paper's 3-layer MLP (hidden 2048 at full
scale, output 128; here the hidden width defaults to the encoder's feature width).
"""

from __future__ import annotations

import torch
from torch import nn

from semivit.methods.losses import nt_xent
from semivit.models.heads import ProjectionHead
from semivit.video.models import VideoClassifier


def video_info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
                   gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CVRL's InfoNCE over clip embeddings (Eq. 1): row i of ``z1`` and of ``z2`` are the two clips of video
    i; every other clip of the (rank-gathered) batch is a negative. Returns the loss and the share of clips
    whose positive is their most similar clip."""
    return nt_xent(z1, z2, temperature, gather)


class CVRL(nn.Module):
    """The pre-training network: the classifier's encoder and a projection head (the head is dropped after
    pre-training; the encoder is what fine-tuning and the linear probe start from)."""

    def __init__(self, model: VideoClassifier, proj_dim: int = 128, proj_hidden: int | None = None,
                 proj_layers: int = 3, temperature: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.projector = ProjectionHead(model.num_features, proj_hidden, proj_dim, proj_layers)
        self.temperature = temperature

    def loss(self, clips1: torch.Tensor, clips2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE of two augmented B×T×C×H×W clip batches (row i of each from video i)."""
        # one pass over both views, so the BatchNorms normalise them together (as SimCLR's code does)
        z = self.projector(self.model.features(torch.cat([clips1, clips2])))
        loss, hit = video_info_nce(z[:len(clips1)], z[len(clips1):], self.temperature)
        return loss, {"loss_con": loss.detach(), "pos_top1": hit}
