"""S4L (Zhai et al. 2019, "S4L: Self-Supervised Semi-Supervised Learning"): one network trained jointly on
the labels and on a self-supervised task over all images (Eq. 1):

    min_θ  L_l(D_l, θ) + w · L_self(D_u ∪ D_l, θ)

- ``task: rotation`` (S4L-Rotation, Sec. 3.1; RotNet, Gidaris et al. 2018): every image is rotated by
  r ∈ R = {0°, 90°, 180°, 270°} and a 4-way head on the backbone features predicts r,
  L_self = −(1/|R|) Σ_r log p(r | x^r). As the reference code, the classifier also learns the label of each
  rotated copy of a labeled image (``rotate_labeled``; turn it off where rotation changes the class, e.g.
  6 and 9 on digits).
- ``task: exemplar`` (S4L-Exemplar, Sec. 3.2; Dosovitskiy et al. 2014): ``copies`` augmented views of each
  image; a linear embedding head on the features, L2-normalised, learns to be invariant to the
  augmentations with the batch-hard triplet loss with soft margin (Hermans et al. 2017) whose identities
  are the source images; the classifier learns the label of every copy of a labeled image.

The self-supervised loss is the mean of its value on the unlabeled and on the labeled batch (the labeled
part only with ``self_on_labeled``), as in the reference code. Labeled and unlabeled batches are the same
size by default (``mu`` = 1, as the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import Method, StepOutput, register_method
from semivit.methods.losses import batch_hard_triplet

ROTATIONS = 4  # 0°, 90°, 180°, 270°


@dataclass
class S4LParams:
    task: Literal["rotation", "exemplar"] = "rotation"
    weight: float = 1.0  # w: weight of the self-supervised loss (1.0 in the reference configs)
    mu: float = 1.0  # unlabeled images per labeled image (S4L: equal batch sizes)
    self_on_labeled: bool = True  # also apply the self-supervised loss to the labeled images (S4L does)
    view: str = "weak"  # rotation: the augmentation before rotating
    rotate_labeled: bool = True  # rotation: classify all 4 rotated copies of a labeled image (reference code)
    copies: int = 8  # exemplar: augmented copies of each image (S4L: 8)
    exemplar_view: str = "contrastive"  # exemplar: crop + flip + colour jitter (S4L: Inception crop, HSV noise)
    embed_dim: int = 128  # exemplar: width of the embedding head (S4L: 1000)


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 rotations of a square B×C×H×W batch, rotation-major: ``out[k·B + i]`` is image i rotated by
    k·90° counter-clockwise (``torch.rot90`` on H, W); returns the images and the rotation labels k."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    images = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return images, labels


@register_method
class S4L(Method):
    name = "s4l"
    Params = S4LParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if p.task == "rotation":
            views: tuple[str, ...] = (p.view,)
            self.rotation_head = nn.Linear(self.model.num_features, ROTATIONS)
        else:  # exemplar
            if p.copies < 2:
                raise SemivitError(f"method.copies must be ≥ 2 for the exemplar triplet loss, got {p.copies}")
            views = (p.exemplar_view, *(f"{p.exemplar_view}:{i}" for i in range(2, p.copies + 1)))
            self.embed_head = nn.Linear(self.model.num_features, p.embed_dim)
        self.labeled_views = self.unlabeled_views = views
        self.unlabeled_ratio = p.mu

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The model's classifier on pooled features (``model(x)`` = classify(model.features(x)))."""
        return self.model.backbone.get_classifier()(features)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        assert batch.y is not None
        if self.params.task == "rotation":
            loss_x, loss_self, metrics = self._rotation(batch)
        else:
            loss_x, loss_self, metrics = self._exemplar(batch)
        loss = loss_x + self.params.weight * loss_self
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_self": loss_self.detach(), **metrics})

    def _rotation(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        x_l, x_u, y = batch.x[p.view], batch.u[p.view], batch.y
        n_l, n = len(x_l), len(x_l) + len(x_u)
        images, rot = rotate_batch(torch.cat([x_l, x_u]))
        h = self.model.features(images)  # one pass over every rotation of every image
        rot_logits = self.rotation_head(h).float()
        # L_self on the unlabeled images and (self_on_labeled) on the labeled ones: the mean of the two parts
        is_labeled = (torch.arange(len(h), device=h.device) % n) < n_l
        parts = [~is_labeled] + ([is_labeled] if p.self_on_labeled else [])
        loss_self = torch.stack([F.cross_entropy(rot_logits[m], rot[m]) for m in parts if m.any()]).mean()
        h_l = h.view(ROTATIONS, n, -1)[:, :n_l]  # rotation-major: [r, i]
        if p.rotate_labeled:
            logits = self.classify(h_l.reshape(ROTATIONS * n_l, -1))
            targets = y.repeat(ROTATIONS)
        else:
            logits, targets = self.classify(h_l[0]), y
        loss_x = F.cross_entropy(logits.float(), targets)
        upright = logits[:n_l]  # rotation 0 comes first either way
        return loss_x, loss_self, {"acc": (upright.argmax(-1) == y).float().mean().detach(),
                                   "rot_acc": (rot_logits.argmax(-1) == rot).float().mean().detach()}

    def _exemplar(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p, y = self.params, batch.y
        views = self.labeled_views
        x_l = torch.cat([batch.x[v] for v in views])  # copy-major: [copy c, image i]
        x_u = torch.cat([batch.u[v] for v in views])
        n_l, n_u = len(batch.x[views[0]]), len(batch.u[views[0]])
        h = self.model.features(torch.cat([x_l, x_u]))  # one pass over every copy of every image
        logits = self.classify(h[:len(x_l)]).float()
        loss_x = F.cross_entropy(logits, y.repeat(p.copies))
        emb = self.embed_head(h)
        ids_u = torch.arange(n_u, device=h.device).repeat(p.copies)
        loss_u, hit = batch_hard_triplet(emb[len(x_l):], ids_u)
        losses = [loss_u]
        if p.self_on_labeled:
            ids_l = torch.arange(n_l, device=h.device).repeat(p.copies)
            losses.append(batch_hard_triplet(emb[:len(x_l)], ids_l)[0])
        loss_self = torch.stack(losses).mean()
        return loss_x, loss_self, {"acc": (logits[:n_l].argmax(-1) == y).float().mean().detach(),
                                   "retrieval_top1": hit}
