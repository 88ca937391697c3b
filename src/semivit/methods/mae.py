"""MAE pre-training (He et al. 2021): reconstruct masked patches of every image, labels unused.

The encoder trains without stochastic depth (``keep_drop_path: false``), as the reference's models_mae.py
(its encoder ``Block``s take no drop-path rate); fine-tuning stages use ``model.drop_path`` again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import DropPath
from torch import nn

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.models.mae import MAEDecoder, masked_patch_loss, patchify, random_masking, sincos_pos_embed


@dataclass
class MAEParams:
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    view: str = "weak"  # augmentation before masking (the paper: random resized crop + flip)
    # stochastic depth (model.drop_path) while pre-training: off, as MAE's models_mae.py builds its encoder
    # blocks without drop-path (and SSMAE's reference ssmae.py has none either)
    keep_drop_path: bool = False


def disable_drop_path(model: nn.Module) -> int:
    """Set every stochastic-depth layer of ``model`` to keep all paths (rate 0) in place; returns how many.
    The weights are untouched: a later stage builds its own model with its own ``model.drop_path``."""
    layers = [m for m in model.modules() if isinstance(m, DropPath)]
    for m in layers:
        m.drop_prob = 0.0
    return len(layers)


@register_method
class MAE(Method):
    """Masked-autoencoder pre-training of the ViT encoder; the exported model is the encoder."""

    name = "mae"
    Params = MAEParams
    labeled_views = ()
    trains_classifier = False
    find_unused_parameters = True  # the classifier head gets no gradient (DDP)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.model.is_vit:
            raise SemivitError("mae pre-trains ViTs only: choose a vit_* model")
        self.unlabeled_views = (self.params.view,)
        vit = self.model.backbone
        if not self.params.keep_drop_path:
            disable_drop_path(self.model)
        self.patch = vit.patch_embed.patch_size[0]
        num_patches = vit.patch_embed.num_patches
        # MAE uses fixed sin-cos position embeddings; fine-tuning later treats them as a learned start.
        with torch.no_grad():
            vit.pos_embed.copy_(sincos_pos_embed(vit.embed_dim, int(num_patches ** 0.5)))
        vit.pos_embed.requires_grad_(False)
        p = self.params
        self.decoder = MAEDecoder(vit.embed_dim, num_patches, self.patch ** 2 * self.model.spec.in_chans,
                                  p.decoder_dim, p.decoder_depth, p.decoder_heads)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches only; returns tokens [cls, visible], the mask and the restore order."""
        vit = self.model.backbone
        tokens = vit.patch_embed(self.model.normalize(x)) + vit.pos_embed[:, 1:]
        keep, mask, restore = random_masking(len(x), tokens.shape[1], self.params.mask_ratio, x.device)
        tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(x), -1, -1)
        tokens = vit.blocks(torch.cat([cls, tokens], dim=1))
        return vit.fc_norm(vit.norm(tokens)), mask, restore  # one of the two is a LayerNorm

    def reconstruction_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE loss of batch ``x``: mask, encode the visible patches, decode, MSE on masked patches only.
        Returns the loss and the mask (1 = removed)."""
        tokens, mask, restore = self.encode(x)
        pred = self.decoder(tokens, restore)
        target = patchify(self.model.normalize(x), self.patch)
        return masked_patch_loss(pred, target, mask, self.params.norm_pix_loss), mask

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        loss, mask = self.reconstruction_loss(batch.u[self.params.view])
        return StepOutput(loss, {"loss_rec": loss.detach(), "mask": mask.mean().detach()})
