"""Losses as small pieces, each citing the equation it implements."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated (gradients flow back to every rank), and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * len(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2,
            gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR, Chen et al. 2020, Eq. 1), symmetric in the two views.

    For each of the 2N normalised embeddings, the positive is the other view of the same image and the
    negatives are the 2N−2 other embeddings — gathered from every DDP rank when ``gather`` (so the loss
    equals one process holding the joined batch). Returns the loss and the share of anchors whose
    positive is their most similar key.
    """
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    k1, offset = _gather_with_grad(z1) if gather else (z1, 0)
    k2, _ = _gather_with_grad(z2) if gather else (z2, 0)
    n, m = len(z1), len(k1)
    keys = torch.cat([k1, k2])
    idx = torch.arange(n, device=z1.device) + offset
    losses, hits = [], []
    for anchors, self_idx, pos_idx in ((z1, idx, idx + m), (z2, idx + m, idx)):
        logits = anchors @ keys.T / temperature
        logits[torch.arange(n), self_idx] = float("-inf")  # an embedding is not its own negative
        losses.append(F.cross_entropy(logits, pos_idx))
        hits.append((logits.argmax(-1) == pos_idx).float().mean())
    return (losses[0] + losses[1]) / 2, (hits[0] + hits[1]).detach() / 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """SimCLRv2 distillation (Chen et al. 2020b, Eq. 2): −Σ_y P_T(y|x; τ) log P_S(y|x; τ), averaged over x.

    Equals KL(P_T ‖ P_S) plus the teacher's entropy, which has no gradient for the student.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()
