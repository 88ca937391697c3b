"""PAWS (Assran et al. 2021, "Semi-Supervised Learning of Visual Features by Non-Parametrically Predicting
View Assignments with Support Samples"): semi-supervised pre-training by soft nearest neighbours.

Each step: a class-balanced labeled support batch and unlabeled images, each seen as 2 large views and
``multicrop`` small ones. Every view is classified by the soft nearest-neighbour classifier π over the
support embeddings (Eq. 1); its target is the sharpened π of the *other* large view (Eq. 2, no gradient),
small views learn the mean of the two large-view targets; the loss is the cross-entropy to the targets
minus the entropy of the mean sharpened prediction (ME-MAX, Eq. 3–4). The classifier head is not trained:
after pre-training, classify by soft nearest neighbours over the labeled set (``semivit evaluate
--classifier snn``) or fine-tune (the ``paws`` recipe).

As in the reference (facebookresearch/suncet ``src/paws_train.py``), the projector is fc1–BN–ReLU–fc2–BN–
ReLU–fc3 with a plain last Linear (``init_model``); each support image is seen as ``support_views`` views
(``criterion.supervised_views: 2``). The snn classifier reads the projector output (``snn_eval.py``
classifies ``encoder(imgs)``, which ends in that head; without the prediction head, its default), so the
projector layers after ``finetune_layer`` are exported as the model's ``embedding``: k-NN, the linear probe
and snn evaluate on it, and ``semivit evaluate --classifier snn`` rebuilds the classifier PAWS trained.
Fine-tuning from the export ignores it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from semivit.data.loaders import Batch
from semivit.errors import SemivitError
from semivit.methods.base import DataRequest, Method, StepOutput, register_method
from semivit.methods.losses import gather_supports, gather_with_grad, paws_loss, sharpen, smooth_one_hot, snn
from semivit.models.factory import attach_head_layers
from semivit.models.heads import ProjectionHead

log = logging.getLogger("semivit")


@dataclass
class PAWSParams:
    tau: float = 0.1  # τ of the soft nearest-neighbour classifier
    sharpen: float = 0.25  # T of the target sharpening
    me_max: bool = True  # the mean-entropy maximisation regulariser
    label_smoothing: float = 0.1  # support labels: (1 − s)·onehot + s/K
    classes_per_batch: int | None = None  # support classes per step and rank (None = every class)
    # support images per class and step, drawn without replacement when the class has that many labels and
    # with replacement otherwise: a value ≥ the labels per class makes (almost) every labeled image a
    # support each step (reference CIFAR-10: 64 of 400 per class, with 2 views each)
    images_per_class: int = 4
    support_views: int = 2  # augmented views of each support image (reference: supervised_views 2)
    multicrop: int = 6  # small views per unlabeled image (PAWS CIFAR-10: 6 of 18 px; ImageNet: 6 of 96 px)
    large_scale: tuple[float, float] = (0.75, 1.0)  # crop scale of the large views (ImageNet: 0.14–1)
    small_scale: tuple[float, float] = (0.3, 0.75)  # crop scale of the small views (ImageNet: 0.05–0.14)
    small_size: int | None = None  # side of the small views in px (None: ~9/16 of the image, a patch multiple)
    # a ViT's small views need at least this many patches a side, else multi-crop is switched off (logged, and
    # written as multicrop 0 into the run's config): on 8×8 digits a small view is one 4-px patch, and 6 of
    # them cost 15 points of validation k-NN (benchmarks/RESULTS.md, "PAWS: evaluated on its own embedding")
    min_small_patches: int = 2
    jitter_strength: float = 0.5  # colour distortion s (PAWS: 0.5 on CIFAR-10, 1.0 on ImageNet)
    proj_layers: int = 3
    proj_dim: int = 128
    proj_hidden: int | None = None  # None = the backbone's feature width
    proj_last_bn: bool = False  # BatchNorm on the last projector layer (reference fc3: none; SimCLRv2: yes)
    pred_head: bool = False  # a 2-layer prediction head on the anchor side (PAWS's ImageNet runs use one)
    finetune_layer: int = 1  # head layers exported with the encoder for fine-tuning (SimCLRv2's choice)


@register_method
class PAWS(Method):
    name = "paws"
    Params = PAWSParams
    labeled_views = ("large",)
    trains_classifier = False  # judged by k-NN / soft nearest neighbours on its embedding until fine-tuned
    find_unused_parameters = True  # the classifier head gets no gradient (DDP)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        if not 0 <= p.finetune_layer < p.proj_layers:
            raise SemivitError(f"method.finetune_layer must be in [0, {p.proj_layers - 1}], got {p.finetune_layer}")
        if p.multicrop < 0 or p.images_per_class < 1 or p.support_views < 1:
            raise SemivitError("method.multicrop must be ≥ 0, method.images_per_class and method.support_views ≥ 1")
        self.labeled_views = ("large", *(f"large:{i}" for i in range(2, p.support_views + 1)))
        small = p.small_size or self._default_small_size()
        self.multicrop = p.multicrop
        if self.model.is_vit and p.multicrop:
            patch = self.model.backbone.patch_embed.patch_size[0]
            if small // patch < p.min_small_patches:
                log.warning("paws: %d-px small views are %d patch(es) a side (< method.min_small_patches %d): "
                            "multi-crop is off for these images", small, small // patch, p.min_small_patches)
                self.multicrop = 0
        self.unlabeled_views = ("large", "large:2", *(f"small:{i}" for i in range(1, self.multicrop + 1)))
        self.support = (p.classes_per_batch, p.images_per_class)  # the balanced support sampler
        self.view_options = {"large": {"scale": tuple(p.large_scale), "jitter_strength": p.jitter_strength},
                             "small": {"scale": tuple(p.small_scale), "jitter_strength": p.jitter_strength,
                                       "out_size": small}}
        hidden = p.proj_hidden or self.model.num_features
        head = ProjectionHead(self.model.num_features, hidden, p.proj_dim, p.proj_layers, last_bn=p.proj_last_bn)
        kept = list(head.blocks[:p.finetune_layer])
        if kept:
            attach_head_layers(self.model, kept, hidden)
        self.kept = torch.nn.ModuleList(kept)
        # the rest of the projector is the model's embedding: exported with it, so evaluation (k-NN, linear
        # probe, snn) and `semivit evaluate --classifier snn` read the space the snn loss was trained in
        self.model.attach_embedding(
            {"in_dim": self.model.num_features, "hidden_dim": hidden, "out_dim": p.proj_dim,
             "num_layers": p.proj_layers, "start": p.finetune_layer, "last_bn": p.proj_last_bn},
            torch.nn.Sequential(*head.blocks[p.finetune_layer:]))
        self.predictor = (torch.nn.Sequential(torch.nn.Linear(p.proj_dim, p.proj_dim), torch.nn.BatchNorm1d(p.proj_dim),
                                              torch.nn.ReLU(inplace=True), torch.nn.Linear(p.proj_dim, p.proj_dim))
                          if p.pred_head else None)

    def data_request(self) -> DataRequest:
        return replace(super().data_request(), support=self.support, view_options=self.view_options)

    def effective_settings(self) -> dict[str, Any]:
        return {"multicrop": self.multicrop} if self.multicrop != self.params.multicrop else {}

    def _default_small_size(self) -> int:
        side = self.model.spec.image_size
        size = max(1, round(side * 9 / 16))
        if self.model.is_vit:  # a ViT needs whole patches
            patch = self.model.backbone.patch_embed.patch_size[0]
            size = max(patch, round(size / patch) * patch)
        return size

    @property
    def projector(self) -> torch.nn.Module:
        """The projector layers after ``finetune_layer``: the model's exported ``embedding``."""
        assert self.model.embedding is not None
        return self.model.embedding

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The projection z of images ``x``: features → kept head layers → projector (= ``model.embed``)."""
        return self.model.embed(x)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        p = self.params
        # every support image's views, view-major (the reference concatenates its supervised views the same
        # way, labels repeated per view)
        support_x = torch.cat([batch.x[name] for name in self.labeled_views])
        support_y = batch.y.repeat(len(self.labeled_views))
        large = [batch.u["large"], batch.u["large:2"]]
        small = [batch.u[name] for name in self.unlabeled_views[2:]]
        n_support, b = len(support_x), len(large[0])
        # supports and large views share one forward pass (one size); small views take a second one
        h = self.project(torch.cat([support_x, *large]))
        h_small = self.project(torch.cat(small)) if small else h[:0]
        z, z_small = (self.predictor(h), self.predictor(h_small)) if self.predictor is not None else (h, h_small)
        supports, labels = gather_supports(z[:n_support], support_y)
        # targets use the projection (no prediction head): the same gathered supports when there is none
        target_supports = (supports.detach() if self.predictor is None
                           else gather_with_grad(h[:n_support].detach())[0])
        labels = smooth_one_hot(labels, self.num_classes, p.label_smoothing)
        anchors = torch.cat([z[n_support:], z_small])
        probs = snn(anchors, supports, labels, p.tau)
        with torch.no_grad():
            views = h[n_support:].detach()
            swapped = torch.cat([views[b:], views[:b]])  # view 1's target comes from view 2, and back
            targets = sharpen(snn(swapped, target_supports, labels, p.tau), p.sharpen)
            if small:
                mean_target = (targets[:b] + targets[b:]) / 2
                targets = torch.cat([targets, mean_target.repeat(len(small), 1)])
        loss, entropy = paws_loss(probs, targets, p.me_max, p.sharpen)
        metrics = {"loss_ce": (loss + entropy).detach(), "me_max_entropy": entropy.detach()}
        if batch.u_true is not None:  # diagnostics against hidden labels: the large views' snn predictions
            known = batch.u_true >= 0
            hits = (probs[:b].argmax(-1) == batch.u_true).float()
            metrics["snn_acc"] = (hits * known).sum() / known.sum().clamp_min(1)
        return StepOutput(loss, metrics)
