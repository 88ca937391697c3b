"""Exponential moving average of a model's weights: θ' ← m·θ' + (1−m)·θ after every step.

Used as an evaluation model (``train.ema``), as Semi-ViT's EMA-Teacher, and by BYOL's target network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    """A frozen copy of ``model`` that tracks its weights; buffers (e.g. BatchNorm stats) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        m = self.decay if decay is None else decay
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        # θ' ← m·θ' + (1−m)·θ, as one fused op over all tensors
        torch._foreach_lerp_(ema_params, params, 1.0 - m)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def train(self, mode: bool = True) -> ModelEMA:
        """The average always runs in eval mode (no dropout / drop-path), even inside a training method."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
