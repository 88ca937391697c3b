"""NNCSL (Kang, Fini, Nabi, Ricci, Alahari, "A Soft Nearest-Neighbor Framework for Continual Semi-Supervised
Learning", ICCV 2023): the CSL learner and the NND distillation, one task of a class-incremental sequence.

The task loop (which classes arrive when, the replay buffer, evaluation on the classes seen so far) lives in
:mod:`semivit.continual`; this method trains one task. Its loss, as the authors' ``src/nncsl_train.py``
(kangzhiq/NNCSL) computes it with their default weights (``configs/nncsl/cifar10/*_nncsl.yaml``)::

    L = w_paws·L_CSL + w_online·L_CE + w_dist·L_NND

- **CSL** (Sec. 3.2, the base learner): PAWS's objective (Assran et al. 2021, Eq. 1–4) over the current
  task's labeled supports: the soft nearest-neighbour prediction π(z) = Σ_i softmax_i(z·z_i/τ)·y_i of every
  unlabeled view learns the sharpened π of the other large view, minus the entropy of the mean sharpened
  prediction (ME-MAX). Supports and their (smoothed) one-hot labels span only the current task's classes
  (the code's ``mask: true``): the buffer's old-class exemplars are supports for NND and the classifier, not
  for the current task's pseudo-labels. ``mask: false`` uses every seen class (the authors' PAWS baseline).
- **L_CE**: a linear classifier on the backbone's pooled features, cross-entropy over the classes seen so
  far on every support view (current labels and buffer); its gradient reaches the backbone (``detach:
  false``). This classifier, restricted to the seen classes, is what evaluation reads (their ``validate``).
- **NND** (Sec. 3.3): the previous task's frozen model classifies the unlabeled views by soft nearest
  neighbours over the old-class exemplars of the buffer (its own embeddings of them); the current model does
  the same with its embeddings; L_NND = (1/N) Σ_x H(π_old(x), π_new(x)) = −Σ_k π_old,k log π_new,k. The
  old model's predictions carry class-level knowledge and, being functions of each view's similarities to
  the supports, the feature-level relations of the old feature space (the paper's two kinds of knowledge).
  Without a buffer the supports are the current labels, as in the authors' code.

Defaults are the authors' CIFAR-10 ones: τ 0.1, T 0.25, label smoothing 0.1, 2 support views, 2 small
views, w_paws = w_me_max = 1, w_online 0.005, w_dist 0.2 (their ``alpha: 0``: the MSE feature term behind
``alpha`` is off in every released config and is not built here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import StepOutput, load_teacher, register_method
from semivit.methods.losses import gather_supports, paws_loss, sharpen, smooth_one_hot, snn
from semivit.methods.paws import PAWS, PAWSParams


@dataclass
class NNCSLParams(PAWSParams):
    images_per_class: int = 5  # the authors' supervised_imgs_per_class
    multicrop: int = 2  # their CIFAR configs: 2 small views per unlabeled image
    finetune_layer: int = 0  # the classifier reads the backbone's features; the whole projector is the embedding
    w_paws: float = 1.0  # weight of L_CSL (cross-entropy and ME-MAX together, as their w_paws = w_me_max = 1)
    w_online: float = 0.005  # weight of the classifier's cross-entropy on the supports
    w_dist: float = 0.2  # weight of L_NND (0: CSL alone, or the PAWS baseline with mask false)
    mask: bool = True  # CSL supports: the current task's classes only (true) or every seen class (false)
    # set by the task loop (semivit.continual); empty = a single task over every class (joint training)
    classes: list[int] = field(default_factory=list)  # the current task's classes
    old_classes: list[int] = field(default_factory=list)  # classes of earlier tasks (held by the buffer)
    distill_classes: list[int] = field(default_factory=list)  # NND's support classes (the buffer's, or current)
    teacher: str = ""  # the previous task's model (NND): model.safetensors or run folder
    init: str = ""  # the previous task's model to continue from, projector included


def subset_targets(labels: torch.Tensor, classes: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Smoothed one-hot targets over the class subset ``classes`` (sorted): column k is class ``classes[k]``
    (the authors' ``make_labels_matrix`` for the task's classes: (1 − s)·onehot + s/|C|)."""
    position = torch.searchsorted(classes, labels)
    return smooth_one_hot(position, len(classes), smoothing)


def csl_loss(anchors: torch.Tensor, supports: torch.Tensor, targets_views: torch.Tensor,
             target_supports: torch.Tensor, support_labels: torch.Tensor, n_large: int, tau: float = 0.1,
             temperature: float = 0.25, me_max: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSL's PAWS objective on one task's supports (NNCSL Sec. 3.2; PAWS Eq. 1–4).

    ``anchors``: every unlabeled view's embedding, the 2 large views first (``n_large`` = 2·B rows), then the
    small ones, view-major; ``targets_views``: the 2·B large views' target-side embeddings in the same order;
    ``support_labels``: (smoothed) one-hot rows over the task's classes. The target of large view 1 is the
    sharpened π of large view 2 and back; a small view's target is the mean of the two (no gradient).
    Returns (loss = H(target, π) − H(π̄), the ME-MAX entropy H(π̄), π of the anchors).
    """
    probs = snn(anchors, supports, support_labels, tau)
    with torch.no_grad():
        b = n_large // 2
        swapped = torch.cat([targets_views[b:n_large], targets_views[:b]])
        targets = sharpen(snn(swapped, target_supports, support_labels, tau), temperature)
        n_small = (len(anchors) - n_large) // b if b else 0
        if n_small:
            targets = torch.cat([targets, ((targets[:b] + targets[b:]) / 2).repeat(n_small, 1)])
        targets = targets * (targets >= 1e-4)  # the reference zeroes tiny targets (numerical stability)
    loss, entropy = paws_loss(probs, targets, me_max, temperature)
    return loss, entropy, probs


def nnd_loss(student_anchors: torch.Tensor, student_supports: torch.Tensor, teacher_anchors: torch.Tensor,
             teacher_supports: torch.Tensor, support_labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """NND (NNCSL Sec. 3.3): (1/N) Σ_x H(π_old(x), π_new(x)) = −(1/N) Σ_x Σ_k π_old,k(x) log π_new,k(x).

    π_new is the soft nearest-neighbour classifier of the current model (its embeddings of the views and of
    the supports), π_old the previous task's frozen model's over the same images (no gradient), both with the
    same ``support_labels``; π_old is not sharpened (the reference's ``dist_logit_loss``).
    """
    new = snn(student_anchors, student_supports, support_labels, tau)
    with torch.no_grad():
        old = snn(teacher_anchors, teacher_supports, support_labels, tau)
    return -(old * new.clamp_min(1e-12).log()).sum(-1).mean()


@register_method
class NNCSL(PAWS):
    """One task of NNCSL: CSL + linear classifier + NND from the previous task's model (see the module)."""

    name = "nncsl"
    Params = NNCSLParams
    trains_classifier = True  # evaluated by its linear classifier over the seen classes, as the reference
    find_unused_parameters = False  # the classifier learns from the supports every step

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        k = self.num_classes
        current = sorted(set(p.classes)) or list(range(k))
        old = sorted(set(p.old_classes) - set(current))
        if any(not 0 <= c < k for c in [*current, *old, *p.distill_classes]):
            raise SemivitError(f"method.classes / old_classes / distill_classes must be class numbers in [0, {k - 1}]")
        seen = sorted(set(current) | set(old))
        self.register_buffer("seen", torch.tensor(seen), persistent=False)
        self.register_buffer("csl_classes", torch.tensor(current if p.mask else seen), persistent=False)
        self.register_buffer("distill_set", torch.tensor(sorted(set(p.distill_classes)), dtype=torch.long),
                             persistent=False)
        if p.init:  # the previous task's weights, projector included (model.pretrained would drop it)
            from semivit.core.checkpoint import read_weights

            tensors, _ = read_weights(p.init)
            missing, unexpected = self.model.load_state_dict(tensors, strict=False)
            if missing or unexpected:
                raise SemivitError(f"method.init '{p.init}' does not match this model (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}): use the previous task's model.safetensors")
        self.teacher = None
        if p.w_dist > 0 and p.teacher:
            if len(self.distill_set) == 0:
                raise SemivitError("NND needs method.distill_classes (the buffer's classes, or the current ones)")
            self.teacher = load_teacher(p.teacher, "nncsl", " (the previous task's model)", k)
            if self.teacher.embedding is None:
                raise SemivitError(f"the teacher '{p.teacher}' has no projector embedding: use the previous "
                                   f"task's nncsl model")

    @property
    def classifier(self) -> torch.nn.Module:
        return getattr(self.model.backbone, self.model.classifier_attr)

    def _embed(self, net, x: torch.Tensor, small: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of ``x`` and the projector output of ``x`` and then of the small views (one
        forward per image size)."""
        feats = net.features(x)
        z = net.embedding(feats)
        if small:
            z = torch.cat([z, net.embedding(net.features(torch.cat(small)))])
        return feats, z

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        support_x = torch.cat([batch.x[name] for name in self.labeled_views])
        support_y = batch.y.repeat(len(self.labeled_views))
        large = torch.cat([batch.u["large"], batch.u["large:2"]])
        small = [batch.u[name] for name in self.unlabeled_views[2:]]
        n = len(support_x)
        feats, h = self._embed(self.model, torch.cat([support_x, large]), small)
        z = self.predictor(h) if self.predictor is not None else h
        metrics: dict[str, torch.Tensor] = {}

        # L_CE: the linear classifier over the seen classes, on every support view (current + buffer)
        logits = self.classifier(feats[:n])[:, self.seen]
        ce = F.cross_entropy(logits, torch.searchsorted(self.seen, support_y))
        metrics["loss_ce_online"] = ce.detach()
        metrics["acc"] = (self.seen[logits.argmax(-1)] == support_y).float().mean().detach()

        # L_CSL: PAWS over the supports of the current task (mask) or of every seen class
        supports, labels = gather_supports(z[:n], support_y)
        target_supports, _ = gather_supports(h[:n].detach(), support_y)
        keep = torch.isin(labels, self.csl_classes)
        targets_1hot = subset_targets(labels[keep], self.csl_classes, p.label_smoothing)
        loss_csl, entropy, probs = csl_loss(z[n:], supports[keep], h[n:n + len(large)].detach(),
                                            target_supports[keep], targets_1hot, len(large), p.tau, p.sharpen,
                                            p.me_max)
        loss = p.w_paws * loss_csl + p.w_online * ce
        metrics.update(loss_csl=loss_csl.detach(), me_max_entropy=entropy.detach())

        # L_NND: the previous task's model and this one classify the unlabeled views over the same exemplars
        if self.teacher is not None:
            self.teacher.eval()  # its predictions are targets: no dropout, drop-path or BN updates
            with torch.no_grad():
                _, h_old = self._embed(self.teacher, torch.cat([support_x, large]), small)
            old_supports, _ = gather_supports(h_old[:n], support_y)
            pick = torch.isin(labels, self.distill_set)
            distill_1hot = subset_targets(labels[pick], self.distill_set, p.label_smoothing)
            loss_nnd = nnd_loss(z[n:], supports[pick], h_old[n:], old_supports[pick], distill_1hot, p.tau)
            loss = loss + p.w_dist * loss_nnd
            metrics["loss_nnd"] = loss_nnd.detach()
        if batch.u_true is not None:  # diagnostics against hidden labels: the large views' snn predictions
            b = len(batch.u["large"])
            hits = (self.csl_classes[probs[:b].argmax(-1)] == batch.u_true).float()
            metrics["snn_acc"] = hits.mean()
        return StepOutput(loss, metrics)
