"""Losses as small pieces, each citing the equation it implements."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from semivit.core.distributed import all_gather_cat, world_size


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated (gradients flow back to every rank), and this rank's offset."""
    if world_size() == 1:
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
    if reduce_ranks and world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        mean = all_reduce(mean) / world_size()
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
    if world_size() == 1:
        return z, labels
    joined, _ = gather_with_grad(z)
    return joined, all_gather_cat(labels)


def byol_loss(online_prediction: torch.Tensor, target_projection: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, Eq. 2), averaged over the batch:

        L = ‖q̄ − z̄'‖² = 2 − 2·⟨q, z'⟩ / (‖q‖·‖z'‖),   q̄ = q/‖q‖, z̄' = z'/‖z'‖

    ``online_prediction`` is q_θ(z_θ) of one view, ``target_projection`` the target network's z'_ξ of the
    other view; the target gets no gradient (sg(z'), the stop-gradient of Sec. 3.1). The symmetrised loss
    L^BYOL = L + L̃ (Eq. 2) is this function called twice with the views swapped.
    """
    q = F.normalize(online_prediction.float(), dim=-1)
    z = F.normalize(target_projection.detach().float(), dim=-1)
    return (2 - 2 * (q * z).sum(-1)).mean()


def batch_hard_triplet(embeddings: torch.Tensor, identities: torch.Tensor, margin: float = 0.0,
                       soft: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard triplet loss (Hermans et al. 2017, Eq. 5; soft margin, Sec. 2) as S4L-Exemplar applies it
    to the copies of each image (Zhai et al. 2019, Sec. 3.2):

        L = (1/N) Σ_a softplus( max_{p: id_p = id_a, p ≠ a} d(a, p) − min_{n: id_n ≠ id_a} d(a, n) + m )

    with d the Euclidean distance of the L2-normalised embeddings (S4L's code normalises them; m = 0 with
    the soft margin ``log(1 + e^x)``; ``soft=False`` gives the hinge ``[x + m]_+``). Every identity needs
    at least two members and the batch at least two identities. Returns the loss and the share of anchors
    whose nearest other embedding is a copy of the same image (batch top-1 retrieval, for logging).
    """
    e = F.normalize(embeddings.float(), dim=-1)
    # distances through a clamped square root: d/dx √x is infinite at 0 (the diagonal)
    d = (e.unsqueeze(1) - e.unsqueeze(0)).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    same = identities.view(-1, 1) == identities.view(1, -1)
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    hardest_pos = d.masked_fill(~same | eye, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(1)
    diff = hardest_pos - hardest_neg + margin
    loss = F.softplus(diff) if soft else F.relu(diff)
    nearest = d.masked_fill(eye, float("inf")).argmin(1)
    hit = same.gather(1, nearest.view(-1, 1)).float().mean()
    return loss.mean(), hit.detach()


def uda_consistency(strong_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 0.4,
                    threshold: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's consistency loss (Xie et al. 2020, Eq. 1, with the sharpening and confidence-based masking
    of Sec. 3.2 / Appendix), averaged over the unlabeled batch:

        L_u = (1/|B_u|) Σ_x 1[max_y p_θ̃(y|x) > β] · KL( p_θ̃(y|x; τ) ‖ p_θ(y|x̂) )

    x̂ is the strongly augmented view (``strong_logits``), x the original one (``target_logits``, no
    gradient: θ̃ is a fixed copy of θ); p(y|x; τ) = softmax(z/τ) is the sharpened target (τ = 0.4 in the
    paper's CIFAR-10 runs) and the mask uses the *unsharpened* prediction (β = 0.8), as the reference code.
    Returns the loss and the mask (float, per sample).
    """
    target_logits = target_logits.detach().float()
    log_target = F.log_softmax(target_logits / temperature, dim=-1)
    log_pred = F.log_softmax(strong_logits.float(), dim=-1)
    kl = (log_target.exp() * (log_target - log_pred)).sum(-1)
    mask = (F.softmax(target_logits, dim=-1).amax(-1) > threshold).float()
    return (kl * mask).mean(), mask


def tsa_threshold(schedule: str, step: int, total_steps: int, num_classes: int) -> float:
    """UDA's training-signal annealing threshold (Xie et al. 2020, Sec. 3.2): η_t = α_t·(1 − 1/K) + 1/K,
    with progress p = t/T and α_t = p (linear), 1 − exp(−5p) (log) or exp(5(p − 1)) (exp); "off" gives 1
    (nothing is masked)."""
    if schedule == "off":
        return 1.0
    p = min(max(step / max(total_steps, 1), 0.0), 1.0)
    alphas = {"linear": p, "log": 1 - math.exp(-5 * p), "exp": math.exp(5 * (p - 1))}
    if schedule not in alphas:
        raise ValueError(f"unknown TSA schedule '{schedule}': use off, linear, log or exp")
    return alphas[schedule] * (1 - 1 / num_classes) + 1 / num_classes


def tsa_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy with training-signal annealing (UDA, Sec. 3.2): labeled examples whose correct-class
    probability exceeds η_t are left out, and the rest are averaged:
    L = Σ_i 1[p(y_i|x_i) ≤ η_t]·CE_i / max(1, Σ_i 1[p(y_i|x_i) ≤ η_t]). Returns the loss and the mask."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    ce = -log_probs.gather(1, labels.view(-1, 1)).squeeze(1)
    keep = (ce.detach().neg().exp() <= threshold).float()
    return (ce * keep).sum() / keep.sum().clamp_min(1.0), keep


def feature_regression_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "regress") -> torch.Tensor:
    """Regress a student's embedding onto a frozen teacher's (no gradient to the teacher), averaged over x:

    - ``regress``: ‖s/‖s‖ − t/‖t‖‖² = 2 − 2·cos(s, t) — SimReg (Navaneet et al. 2022, Eq. 1: squared
      Euclidean distance of L2-normalised features). DisCo (Gao et al. 2022) distils the final embedding
      with the MSE of the L2-normalised student and teacher embeddings: this up to the constant 1/D its
      code averages over;
    - ``cosine``: 1 − cos(s, t) (the same direction, half the gradient);
    - ``mse``: mean squared error of the raw embeddings, (1/D)‖s − t‖² (no normalisation).
    """
    t = teacher.detach().float()
    s = student.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    cos = F.cosine_similarity(s, t, dim=-1)
    if kind == "regress":
        return (2 - 2 * cos).mean()
    if kind == "cosine":
        return (1 - cos).mean()
    raise ValueError(f"unknown feature loss '{kind}': use regress, cosine or mse")
