"""Exponential moving average of a model's weights: θ' ← m·θ' + (1−m)·θ after every step.

Used as an evaluation model (``train.ema``), as Semi-ViT's EMA-Teacher (``method.ema``), and by BYOL's
target network (``method.base_momentum``).

**Momenta follow the stage length.** After K updates the average still holds m^K of its starting weights,
so a momentum tuned for a stage of K_ref steps is wrong for a stage that gets fewer (``semivit bench``
rescales every stage to its budget; ``--steps`` shortens a recipe): 0.999 tuned for 5,000 steps leaves
0.999^700 ≈ 50% of the start in a 700-step stage, against 0.7% at full length. So a momentum is declared
together with the stage length it was chosen for (``*_ref_steps``) and converted to

    m_eff = m^(K_ref / K)        (:func:`scaled_momentum`),

which keeps m_eff^K = m^K_ref: the average moves as far from its start, and its half-life is the same share
of the stage, whatever the stage's length. Without a reference length the momentum is a per-step value used
as given. The trainer writes the effective value, with K as its reference, into the run's ``config.yaml``
(an equivalent declaration: m_eff^(K/K') = m^(K_ref/K') for any later length K').
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from semivit.errors import SemivitError


def scaled_momentum(momentum: float, ref_steps: int | None, steps: int, name: str = "momentum") -> float:
    """The per-step momentum for a stage of ``steps`` steps: m^(K_ref/K), or ``momentum`` itself when
    ``ref_steps`` is None (or the stage has exactly K_ref steps). ``name`` names the setting in errors."""
    if not 0.0 <= momentum <= 1.0:
        raise SemivitError(f"{name} must be in [0, 1], got {momentum}")
    if ref_steps is None or ref_steps == steps or momentum in (0.0, 1.0):
        return float(momentum)
    if ref_steps <= 0 or steps <= 0:
        raise SemivitError(f"the reference length of {name} and the stage's steps must be positive, got "
                           f"{ref_steps} and {steps}")
    return float(momentum ** (ref_steps / steps))


def half_life(momentum: float) -> float:
    """Steps after which the average holds half of its start: ln ½ / ln m (∞ for m = 1, 0 for m = 0)."""
    if momentum >= 1.0:
        return math.inf
    if momentum <= 0.0:
        return 0.0
    return math.log(0.5) / math.log(momentum)


class ModelEMA(nn.Module):
    """A frozen copy of ``model`` that tracks its weights. ``decay`` is the per-step momentum m (already scaled
    to the stage: :func:`scaled_momentum`).

    ``buffers``: ``"copy"`` takes the student's buffers (e.g. BatchNorm statistics) as they are; ``"ema"``
    averages floating-point buffers with the same momentum (integer ones, BatchNorm's batch counter, are
    copied), as Semi-ViT's teacher does through timm's ``ModelEma`` (it averages the whole state dict) and as
    Mean Teacher's teacher keeps statistics of its own weights: a BatchNorm teacher then normalises with
    statistics that match its averaged weights, not the student's latest ones.

    Examples:
        >>> ema = ModelEMA(nn.BatchNorm1d(4), decay=0.9, buffers="ema")
        >>> student = nn.BatchNorm1d(4)
        >>> _ = student.train()(torch.randn(8, 4) + 10)  # the student's running mean moves to ~1
        >>> ema.update(student)
        >>> bool((ema.module.running_mean - 0.1 * student.running_mean).abs().max() < 1e-6)
        True
    """

    def __init__(self, model: nn.Module, decay: float, buffers: str = "copy") -> None:
        super().__init__()
        if buffers not in ("copy", "ema"):
            raise ValueError(f"buffers must be 'copy' or 'ema', got {buffers!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.average_buffers = decay, buffers == "ema"

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        m = self.decay if decay is None else decay
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        # θ' ← m·θ' + (1−m)·θ, as one fused op over all tensors
        torch._foreach_lerp_(ema_params, params, 1.0 - m)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            if self.average_buffers and ema_b.is_floating_point():
                ema_b.lerp_(b, 1.0 - m)
            else:
                ema_b.copy_(b)

    def train(self, mode: bool = True) -> ModelEMA:
        """The average always runs in eval mode (no dropout / drop-path), even inside a training method."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
