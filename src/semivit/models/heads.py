"""Heads that sit on a backbone's pooled features."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLRv2's deep projection head (Chen et al. 2020b, Sec. 2.1): ``num_layers`` linear layers, each
    followed by BatchNorm, with ReLU between them (none after the last). ``blocks[:k]`` is what fine-tuning
    "from the k-th layer of the projection head" keeps."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        blocks = []
        for i in range(num_layers):
            last = i == num_layers - 1
            layer: list[nn.Module] = [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1])]
            if not last:
                layer.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layer))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
