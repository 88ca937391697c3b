"""SSMAE ("Semi-Supervised Masked Autoencoders", arXiv 2601.20072): one ViT trained jointly on masked-image
reconstruction and classification, with pseudo-labels switched on by a validation-driven gate.

Each step (the reference code, github.com/atik666/ssmae ``main.py`` ``train_SSMAE_w_unlabeled``): the MAE
loss on masked views of every image in the batch (labeled and unlabeled; L317–320), and one cross-entropy
over the labeled images *and* the unlabeled images that have a pseudo-label in the memory, appended to the
labeled batch on their weak views at full weight (L290–312, L323–324):

    L = w_rec · L_rec + [Σ_labeled CE(y_i, f(weak_i)) + λ_u Σ_memory CE(ŷ_j, f(weak_j))] / (B + n_memory)

(λ_u = 1 is the reference: a pseudo-labelled image counts as a label.)
Acceptance (L295–305): an unlabeled image without a stored label, while the gate is open, whose weak and
strong views get the same class with both confidences > ``threshold``; its label enters the memory (a buffer
saved in checkpoints, so it survives resume) and stays there — a stored label is never replaced and is used
whenever the image comes back, open gate or not (L291–294).
Gate (L241–253, on a validation split carved from the labels instead of the reference's test set): no
pseudo-labels before ``gate_start`` (the reference's ``pseudo_label_start_epoch`` 10 of 100 epochs); from
then on, at every check (every ``gate_every`` steps) the gate is set anew: among validation images predicted
with confidence > ``gate_confidence``, the accuracy must reach ``gate_accuracy``. A departure: at least
``gate_min_confident`` of them must be confident (at most half the validation split) — the reference counts
a single confident image on its 10,000-image test set, where that never happens; on a 100-image validation
split one confident image would decide the gate by itself. ``gate: open`` forces pseudo-labelling from step 0
(the ablation), ``gate: closed`` never opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from semivit.core.distributed import all_gather_cat
from semivit.core.schedule import stage_steps
from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import StepOutput, register_method
from semivit.methods.mae import MAE, MAEParams


@dataclass
class SSMAEParams(MAEParams):  # MAE's settings (mask ratio, decoder, view to reconstruct), and:
    rec_weight: float = 1.0  # w_rec: weight of the reconstruction loss against the classification loss
    lambda_u: float = 1.0  # weight of a pseudo-labelled image against a labeled one (1 = the reference)
    mu: float = 2.0  # unlabeled images per labeled image (the reference: 32 unlabeled + 16 labeled, main.py L190–206)
    threshold: float = 0.95  # acceptance: both views' confidence above this, and the same class
    gate: Literal["val", "open", "closed"] = "val"  # val (the validation rule) | open (from step 0) | closed (never)
    # between gate checks, and no pseudo-labels before gate_start: each a share of the stage's steps (< 1) or a
    # number of steps (>= 1). 0.0357: the ssmae recipe's 100 of 2,800 steps, the proportion it was tuned at (the
    # reference checks once per epoch of 100, from epoch 10)
    gate_every: float = 0.0357
    gate_start: float = 0.1
    gate_confidence: float = 0.95  # validation images counted by the rule: confidence above this
    gate_accuracy: float = 0.70  # the rule: accuracy of those confident validation images ≥ this
    gate_min_confident: int = 10  # and at least this many of them (at most half the validation split)
    gate_latch: bool = False  # True: once open, stay open (the reference re-checks at every check)


@register_method
class SSMAE(MAE):
    name = "ssmae"
    Params = SSMAEParams  # type: ignore[assignment]
    labeled_views = ("weak",)  # the labeled images are reconstructed from their weak view
    trains_classifier = True
    find_unused_parameters = False  # the classifier and the decoder both take part in every loss

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.gate_every <= 0:
            raise SemivitError(f"method.gate_every must be positive (a share of the steps below 1, or a number "
                               f"of steps), got {p.gate_every}")
        if p.gate_start < 0:
            raise SemivitError(f"method.gate_start must be ≥ 0, got {p.gate_start}")
        self.unlabeled_views = tuple(dict.fromkeys((p.view, "weak", "strong")))
        self.unlabeled_ratio = p.mu
        points = self.schedule(p, self.total_steps)
        self.validation_every = int(points["gate_every"]) if p.gate == "val" else 0
        self.gate_start_step = int(points["gate_start"])  # the first step at which a check may open the gate
        self.register_buffer("gate_open", torch.tensor(p.gate == "open"))
        self.register_buffer("memory", torch.zeros(0, dtype=torch.long))
        self.register_buffer("memory_true", torch.zeros(0, dtype=torch.long))  # diagnostics only

    @classmethod
    def schedule(cls, params: SSMAEParams, total_steps: int) -> dict[str, float]:
        return {"gate_every": max(1, stage_steps(params.gate_every, total_steps)),
                "gate_start": stage_steps(params.gate_start, total_steps)}

    def setup(self, num_train: int) -> None:
        # -1 = no pseudo-label yet. memory_true keeps the hidden label seen at acceptance (-1 when unknown)
        # so the memory's accuracy can be logged; it never feeds the loss.
        self.memory = torch.full((num_train,), -1, dtype=torch.long)
        self.memory_true = torch.full((num_train,), -1, dtype=torch.long)

    # --------------------------------------------------------------------------------------------- the gate
    @staticmethod
    def gate_rule(logits: torch.Tensor, labels: torch.Tensor, confidence: float, accuracy: float,
                  min_confident: int = 1) -> tuple[bool, float, int]:
        """(open?, accuracy of the confident predictions, how many were confident) — reference main.py
        L75–104 (``high_conf_accuracy``) and L249 (``≥ high_conf_acc_threshold``)."""
        conf, pred = logits.float().softmax(-1).max(-1)
        confident = conf > confidence
        n = int(confident.sum())
        acc = float((pred[confident] == labels[confident]).float().mean()) if n else 0.0
        return n >= min_confident and acc >= accuracy, acc, n

    def on_validation(self, step: int, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        p = self.params
        needed = max(1, min(p.gate_min_confident, len(labels) // 2))
        ok, acc, n = self.gate_rule(logits, labels, p.gate_confidence, p.gate_accuracy, needed)
        ok = ok and step >= self.gate_start_step  # the reference checks from epoch 10 on (main.py L242)
        if not (p.gate_latch and bool(self.gate_open)):
            self.gate_open.fill_(ok)
        return {"open": float(self.gate_open), "confident_acc": acc, "confident": float(n)}

    @staticmethod
    def accept(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
               threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """SSMAE acceptance (reference main.py L295–299): the weak and strong views agree and both are
        confident (> ``threshold``). Returns (accepted mask, the agreed class)."""
        cw, pw = weak_logits.float().softmax(-1).max(-1)
        cs, ps = strong_logits.float().softmax(-1).max(-1)
        return (pw == ps) & (cw > threshold) & (cs > threshold), pw

    @staticmethod
    def classification_loss(logits: torch.Tensor, targets: torch.Tensor, num_labeled: int,
                            use: torch.Tensor, lambda_u: float) -> torch.Tensor:
        """Cross-entropy of the labeled images and the used pseudo-labelled ones as one batch: the first
        ``num_labeled`` rows of ``logits`` are labeled, the rest unlabeled, ``use`` marks those with a
        pseudo-label. With λ_u = 1 this is the mean over the labeled batch with the pseudo-labelled images
        appended (reference main.py L308–312, L324); unused rows weigh 0, so the shapes stay fixed."""
        weights = torch.cat([torch.ones(num_labeled, device=logits.device), lambda_u * use.float()])
        per_image = F.cross_entropy(logits.float(), targets, reduction="none")
        return (per_image * weights).sum() / (num_labeled + use.sum())

    @torch.no_grad()
    def _remember(self, index: torch.Tensor, accepted: torch.Tensor, label: torch.Tensor,
                  truth: torch.Tensor | None) -> None:
        """Write this step's acceptances into the memory, gathered from every DDP rank first: each rank then
        holds the union of all ranks' pseudo-labels (the memory is a buffer, and DDP broadcasts rank 0's buffers
        before every forward: written from one rank's acceptances only, the others' would be lost a step
        later). Fixed shapes, no host sync: a rejected image rewrites its own stored value."""
        truth = torch.full_like(index, -1) if truth is None else truth
        rows = all_gather_cat(torch.stack([index, accepted.long(), label, truth], 1))  # one collective a step
        index, accepted, label, truth = rows[:, 0], rows[:, 1].bool(), rows[:, 2], rows[:, 3]
        self.memory[index] = torch.where(accepted, label, self.memory[index])
        self.memory_true[index] = torch.where(accepted, truth, self.memory_true[index])

    # --------------------------------------------------------------------------------------------- the step
    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        x, y = batch.x["weak"], batch.y
        assert y is not None
        u_weak, u_strong, u_idx = batch.u["weak"], batch.u["strong"], batch.u_index
        # reconstruction of every image of the batch, from a masked view
        loss_rec, _ = self.reconstruction_loss(torch.cat([x, batch.u[p.view]]))
        # classification of the whole images, labeled and unlabeled, on their weak views: one pass gives the
        # loss of the labeled and pseudo-labelled images and the weak-view predictions for acceptance
        logits = self.model(torch.cat([x, u_weak]))
        logits_l, logits_w = logits[:len(x)], logits[len(x):]
        with torch.no_grad():
            logits_s = self.model(u_strong)
            accepted, agreed = self.accept(logits_w.detach(), logits_s, p.threshold)
            accepted &= self.gate_open & (self.memory[u_idx] < 0)  # a stored label is kept (main.py L291)
            targets = torch.where(accepted, agreed, self.memory[u_idx])
            self._remember(u_idx, accepted, agreed, batch.u_true)
            use = targets >= 0  # stored labels are used whether or not the gate is open now (main.py L291–294)
        loss_cls = self.classification_loss(logits, torch.cat([y, targets.clamp_min(0)]), len(x), use, p.lambda_u)
        loss = p.rec_weight * loss_rec + loss_cls
        with torch.no_grad():
            loss_x = F.cross_entropy(logits_l.float(), y)
            per_u = F.cross_entropy(logits_w.float(), targets.clamp_min(0), reduction="none")
            loss_u = (per_u * use).sum() / use.sum().clamp_min(1)
            stored = self.memory >= 0
            known = stored & (self.memory_true >= 0)
            metrics = {"loss_rec": loss_rec.detach(), "loss_x": loss_x, "loss_u": loss_u,
                       "loss_cls": loss_cls.detach(),
                       "acc": (logits_l.argmax(-1) == y).float().mean(), "gate": self.gate_open.float(),
                       "accepted": accepted.float().mean(), "used": use.float().mean(),
                       "memory": stored.sum().float(),
                       "memory_acc": ((self.memory == self.memory_true) & known).sum() / known.sum().clamp_min(1)}
        return StepOutput(loss, metrics)
