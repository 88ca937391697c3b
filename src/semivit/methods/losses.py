"""Losses as small pieces, each citing the equation it implements."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> int:
    """The number of DDP processes (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated (gradients flow back to every rank), and this rank's offset."""
    if _world() == 1:
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
    k1, offset = gather_with_grad(z1) if gather else (z1, 0)
    k2, _ = gather_with_grad(z2) if gather else (z2, 0)
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


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.1) -> torch.Tensor:
    """One-hot targets with label smoothing: (1 − s)·onehot + s/K (PAWS's support labels use s = 0.1)."""
    return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes


def snn(queries: torch.Tensor, supports: torch.Tensor, support_labels: torch.Tensor,
        tau: float = 0.1) -> torch.Tensor:
    """Soft nearest-neighbour classifier (PAWS, Assran et al. 2021, Eq. 1).

    π(z) = Σ_i softmax_i(z·z_i / τ) · y_i over the support samples, with z and z_i L2-normalised and y_i
    (soft) one-hot labels. Returns class probabilities (rows sum to 1).
    """
    q, s = F.normalize(queries.float(), dim=-1), F.normalize(supports.float(), dim=-1)
    return F.softmax(q @ s.T / tau, dim=-1) @ support_labels.float()


def sharpen(probs: torch.Tensor, temperature: float = 0.25) -> torch.Tensor:
    """PAWS target sharpening (Eq. 2): [ρ(p)]_k = p_k^{1/T} / Σ_j p_j^{1/T}."""
    p = probs.float().clamp_min(1e-12) ** (1.0 / temperature)
    return p / p.sum(-1, keepdim=True)


def mean_entropy(probs: torch.Tensor, reduce_ranks: bool = True) -> torch.Tensor:
    """H(p̄): entropy of the batch-mean prediction (PAWS's ME-MAX regulariser maximises it, Eq. 4).

    With DDP the mean is taken over every rank's batch (the gradient flows back through an all-reduce of
    the means, as one process holding the joined batch would compute it).
    """
    mean = probs.float().mean(0)
    if reduce_ranks and _world() > 1:
        from torch.distributed.nn.functional import all_reduce

        mean = all_reduce(mean) / _world()
    return -(mean * mean.clamp_min(1e-12).log()).sum()


def paws_loss(anchor_probs: torch.Tensor, targets: torch.Tensor, me_max: bool = True,
              sharpen_temperature: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """PAWS objective (Eq. 3–4): mean cross-entropy H(target, π(view)) − H(mean of sharpened π(view)).

    ``targets`` are sharpened predictions of the *other* large view, computed without gradient; returns
    (the total loss, the ME-MAX entropy term) — the entropy is returned for logging.
    """
    ce = -(targets.detach() * anchor_probs.float().clamp_min(1e-12).log()).sum(-1).mean()
    if not me_max:
        return ce, torch.zeros((), device=ce.device)
    entropy = mean_entropy(sharpen(anchor_probs, sharpen_temperature))
    return ce - entropy, entropy


def gather_supports(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's support embeddings (with gradient) and labels, concatenated (PAWS gathers supports)."""
    if _world() == 1:
        return z, labels
    joined, _ = gather_with_grad(z)
    parts = [torch.empty_like(labels) for _ in range(_world())]
    dist.all_gather(parts, labels.contiguous())
    return joined, torch.cat(parts)
