"""CVRL: spatiotemporal contrastive video representation learning (Qian et al., CVPR 2021, arXiv 2008.03800).

Two clips of one video, sampled by temporal interval sampling (Sec. 3.2: the gap between their starts drawn
with P(t) ∝ 1 − (t/M)^power, the paper's linearly decreasing distribution at power 1) and augmented with
temporally consistent spatial augmentation (Sec. 3.3: one draw per clip), are a positive pair; the clips of
the other videos in the batch (on every DDP rank) are the negatives. Each clip is encoded by a video ResNet,
projected by an MLP head, and the pair is scored by InfoNCE (Sec. 3.1, Eq. 1):

    L_i = −log  exp(sim(z_i, z_i')/τ) / Σ_{k ≠ i} exp(sim(z_i, z_k)/τ),    τ = 0.1,

summed over the 2N clips: SimCLR's NT-Xent, so the method is :class:`~semivit.methods.simclr.SimCLR` on clip
views. The views (``cvrl`` and ``cvrl:2``) are made by the video batches (:mod:`semivit.video.inputs`); image
data cannot make them, and says so. The projection head is the paper's 3-layer MLP (hidden 2048 at full
scale, output 128; here the hidden width defaults to the encoder's feature width) and is dropped after
pre-training (``finetune_layer`` 0): fine-tuning and the linear probe start from the encoder.

Examples:
    >>> import torch
    >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    >>> loss, hit = video_info_nce(z1, z2, temperature=0.1, gather=False)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.methods.base import DataRequest, register_method
from semivit.methods.losses import nt_xent
from semivit.methods.simclr import SimCLR, SimCLRParams


def video_info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
                   gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CVRL's InfoNCE over clip embeddings (Eq. 1): row i of ``z1`` and of ``z2`` are the two clips of video
    i; every other clip of the (rank-gathered) batch is a negative. Returns the loss and the share of clips
    whose positive is their most similar clip."""
    return nt_xent(z1, z2, temperature, gather)


@dataclass
class CVRLParams(SimCLRParams):
    """The paper's settings (Sec. 4.1): τ 0.1, a 3-layer head to 128-d, dropped after pre-training."""

    temperature: float = 0.1
    finetune_layer: int = 0
    power: float = 1.0  # temporal interval sampling: P(t) ∝ 1 − (t/M)^power (0: a uniform gap)
    per_frame_aug: bool = False  # the ablation of Sec. 3.3: an independent augmentation for every frame


@register_method
class CVRL(SimCLR):
    """CVRL pre-training of a video encoder (see the module docstring); labels are not used."""

    name = "cvrl"
    Params = CVRLParams
    unlabeled_views = ("cvrl", "cvrl:2")  # made by video batches only: image batches refuse them in one line

    def data_request(self) -> DataRequest:
        p = self.params
        return DataRequest((), self.unlabeled_views, find_unused_parameters=self.find_unused_parameters,
                           view_options={"cvrl": {"power": p.power, "per_frame": p.per_frame_aug}})
