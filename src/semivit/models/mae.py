"""Masked autoencoder pieces (He et al. 2021) around a timm ViT encoder.

Random masking keeps 25% of the patches (Sec. 3, "Masking"); the encoder sees only those; a light
decoder with mask tokens and fixed 2-D sin-cos position embeddings reconstructs every patch; the loss is
the MSE on masked patches of per-patch normalised pixels (Sec. 3, "Reconstruction target").
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid×grid [+ a zero row for the class token])."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dimension divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.flatten()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    table = torch.cat([embed(yy), embed(xx)], dim=1).float()
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table])
    return table.unsqueeze(0)


def random_masking(n: int, length: int, mask_ratio: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-sample random shuffles: the indices of kept patches, the mask (1 = removed) and the inverse."""
    keep = max(1, int(round(length * (1 - mask_ratio))))
    noise = torch.rand(n, length, device=device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return shuffle[:, :keep], torch.gather(mask, 1, restore), restore


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """B×C×H×W → B×L×(p·p·C), patches in row-major order as the patch embedding sees them."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over masked patches only, targets normalised per patch (MAE Eq.: norm_pix_loss)."""
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred.float() - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


class MAEDecoder(nn.Module):
    """The light decoder: embed visible tokens, insert mask tokens, transformer blocks, predict pixels."""

    def __init__(self, encoder_dim: int, num_patches: int, patch_pixels: int, dim: int = 128,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(math.isqrt(num_patches))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid), persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """``tokens``: encoder output [cls, visible...]; returns pixel predictions for all patches."""
        x = self.embed(tokens)
        cls, visible = x[:, :1], x[:, 1:]
        n, length = restore.shape
        masks = self.mask_token.expand(n, length - visible.shape[1], -1)
        full = torch.cat([visible, masks], dim=1)
        full = torch.gather(full, 1, restore.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        x = torch.cat([cls, full], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])
