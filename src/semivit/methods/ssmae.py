"""SSMAE ("Semi-Supervised Masked Autoencoders", arXiv 2601.20072): one ViT trained jointly on masked-image
reconstruction and classification, with pseudo-labels switched on by a validation-driven gate.

Each step: the MAE loss on masked weak views of every image in the batch (labeled and unlabeled),
cross-entropy on the labeled images, and — once the gate is open — cross-entropy on the strong views of
unlabeled images whose pseudo-label is in the memory:
    L = w_rec · L_rec + CE(labeled) + λ_u · CE(memory labels of unlabeled images).
Gate (the reference code's rule, on a validation split carved from the labels instead of its test set):
every ``gate_every`` steps, among validation images predicted with confidence > ``gate_confidence``, the
accuracy must reach ``gate_accuracy`` (and at least ``gate_min_confident`` of them must be confident).
Acceptance: an unlabeled image's weak and strong views get the same class, both with confidence >
``threshold``; its label enters the memory (a buffer saved in checkpoints, so it survives resume) and is
used whenever the image comes back. ``gate: open`` forces pseudo-labelling from step 0 (the ablation),
``gate: closed`` never opens it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import StepOutput, register_method
from semivit.methods.mae import MAE, MAEParams


@dataclass
class SSMAEParams(MAEParams):  # MAE's settings (mask ratio, decoder, view to reconstruct), and:
    rec_weight: float = 1.0  # w_rec: weight of the reconstruction loss against the classification loss
    lambda_u: float = 1.0  # weight of the pseudo-label cross-entropy
    mu: float = 5.0  # unlabeled images per labeled image
    threshold: float = 0.95  # acceptance: both views' confidence above this, and the same class
    gate: str = "val"  # val (the validation rule) | open (from step 0) | closed (never)
    gate_every: int = 100  # steps between gate checks
    gate_confidence: float = 0.95  # validation images counted by the rule: confidence above this
    gate_accuracy: float = 0.70  # the rule: accuracy of those confident validation images ≥ this
    gate_min_confident: int = 1  # and at least this many of them
    gate_latch: bool = True  # once open, stay open (False: re-check and possibly close at every check)


@register_method
class SSMAE(MAE):
    name = "ssmae"
    Params = SSMAEParams  # type: ignore[assignment]
    labeled_views = ("weak",)  # the labeled images are reconstructed from their weak view
    trains_classifier = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.gate not in ("val", "open", "closed"):
            raise SemivitError(f"method.gate is '{p.gate}': use val, open or closed")
        if p.gate_every < 1:
            raise SemivitError(f"method.gate_every must be ≥ 1, got {p.gate_every}")
        self.unlabeled_views = tuple(dict.fromkeys((p.view, "weak", "strong")))
        self.unlabeled_ratio = p.mu
        self.validation_every = p.gate_every if p.gate == "val" else 0
        self.register_buffer("gate_open", torch.tensor(p.gate == "open"))
        self.register_buffer("memory", torch.zeros(0, dtype=torch.long))
        self.register_buffer("memory_true", torch.zeros(0, dtype=torch.long))  # diagnostics only

    def setup(self, num_train: int) -> None:
        # -1 = no pseudo-label yet. memory_true keeps the hidden label seen at acceptance (-1 when unknown)
        # so the memory's accuracy can be logged; it never feeds the loss.
        self.memory = torch.full((num_train,), -1, dtype=torch.long)
        self.memory_true = torch.full((num_train,), -1, dtype=torch.long)

    # --------------------------------------------------------------------------------------------- the gate
    @staticmethod
    def gate_rule(logits: torch.Tensor, labels: torch.Tensor, confidence: float, accuracy: float,
                  min_confident: int = 1) -> tuple[bool, float, int]:
        """(open?, accuracy of the confident predictions, how many were confident)."""
        conf, pred = logits.float().softmax(-1).max(-1)
        confident = conf > confidence
        n = int(confident.sum())
        acc = float((pred[confident] == labels[confident]).float().mean()) if n else 0.0
        return n >= min_confident and acc >= accuracy, acc, n

    def on_validation(self, step: int, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        p = self.params
        ok, acc, n = self.gate_rule(logits, labels, p.gate_confidence, p.gate_accuracy, p.gate_min_confident)
        if not (p.gate_latch and bool(self.gate_open)):
            self.gate_open.fill_(ok)
        return {"open": float(self.gate_open), "confident_acc": acc, "confident": float(n)}

    @staticmethod
    def accept(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
               threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """SSMAE acceptance: the weak and strong views agree and both are confident (> ``threshold``).
        Returns (accepted mask, the agreed class)."""
        cw, pw = weak_logits.float().softmax(-1).max(-1)
        cs, ps = strong_logits.float().softmax(-1).max(-1)
        return (pw == ps) & (cw > threshold) & (cs > threshold), pw

    # --------------------------------------------------------------------------------------------- the step
    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x, y = batch.x["weak"], batch.y
        u_weak, u_strong, u_idx = batch.u["weak"], batch.u["strong"], batch.u_index
        # reconstruction of every image of the batch, from a masked view
        loss_rec, _ = self.reconstruction_loss(torch.cat([x, batch.u[p.view]]))
        # classification of the whole images: labeled weak views and unlabeled strong views
        logits = self.model(torch.cat([x, u_strong]))
        logits_l, logits_s = logits[:len(x)], logits[len(x):]
        loss_x = F.cross_entropy(logits_l.float(), y)
        with torch.no_grad():
            logits_w = self.model(u_weak)
            accepted, agreed = self.accept(logits_w, logits_s.detach(), p.threshold)
            accepted &= self.gate_open
            self.memory[u_idx] = torch.where(accepted, agreed, self.memory[u_idx])
            if batch.u_true is not None:
                self.memory_true[u_idx] = torch.where(accepted, batch.u_true, self.memory_true[u_idx])
            targets = self.memory[u_idx]
            use = (targets >= 0) & self.gate_open
        per_image = F.cross_entropy(logits_s.float(), targets.clamp_min(0), reduction="none")
        loss_u = (per_image * use).sum() / max(len(u_idx), 1)
        loss = p.rec_weight * loss_rec + loss_x + p.lambda_u * loss_u
        with torch.no_grad():
            stored = self.memory >= 0
            known = stored & (self.memory_true >= 0)
            metrics = {"loss_rec": loss_rec.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                       "acc": (logits_l.argmax(-1) == y).float().mean(), "gate": self.gate_open.float(),
                       "accepted": accepted.float().mean(), "used": use.float().mean(),
                       "memory": stored.sum().float(),
                       "memory_acc": ((self.memory == self.memory_true) & known).sum() / known.sum().clamp_min(1)}
        return StepOutput(loss, metrics)
