"""What a stage trains and evaluates on: images (the default), or a backbone's cached features.

The Trainer asks its inputs for batches (what the method's :class:`~semivit.methods.base.DataRequest` names),
for logits on a part of the data (``labeled``, ``val``, ``test``) and for the model to export. Images and
cached features (:class:`FeatureInputs`) answer the same questions, so one loop trains a
network on images and a head on features.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from semivit.config import Config
from semivit.core.distributed import DistInfo, barrier
from semivit.data import ImageSet, PreparedData
from semivit.data.features import CachedFeatures, FeatureBatches, ViewPlan, embed_dataset, weights_fingerprint
from semivit.data.loaders import Batch
from semivit.engine.checkpoint import read_export_meta
from semivit.engine.evaluate import extract_features, predict_heads, predict_logits
from semivit.engine.stage import build_model, image_batches, per_rank_batches, strong_magnitude
from semivit.errors import SemivitError
from semivit.methods.base import DataRequest
from semivit.models.factory import ImageClassifier
from semivit.models.heads import FeatureHead, fold_feature_head, unfold_feature_head
from semivit.models.pretrained import pretrained_source

log = logging.getLogger("semivit")


class BatchSource(Protocol):
    """An endless, resumable stream of batches: batch ``step`` is a pure function of the seed and the step."""

    def next(self, step: int) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class StageInputs(Protocol):
    data: PreparedData

    def batches(self, cfg: Config, request: DataRequest, dist: DistInfo) -> BatchSource: ...

    def logits(self, net: nn.Module, part: str) -> torch.Tensor: ...

    def head_logits(self, net: nn.Module, part: str) -> dict[str, torch.Tensor]: ...

    def labels(self, part: str) -> torch.Tensor: ...

    def embeddings(self, net: nn.Module, part: str) -> torch.Tensor: ...

    def exportable(self, net: nn.Module) -> nn.Module: ...


class ImageInputs:
    """A stage on images: the network sees augmented image views; evaluation runs it on the images."""

    def __init__(self, data: PreparedData, device: torch.device) -> None:
        self.data, self.device = data, device

    def _part(self, part: str) -> tuple[ImageSet, torch.Tensor]:
        if part == "test":
            assert self.data.test is not None
            return self.data.test, torch.arange(len(self.data.test))
        if part not in ("labeled", "val"):
            raise ValueError(f"unknown part '{part}'")
        return self.data.train, getattr(self.data.split, part)

    def batches(self, cfg: Config, request: DataRequest, dist: DistInfo) -> BatchSource:
        return image_batches(cfg, request, self.data, self.device, dist)

    def logits(self, net: nn.Module, part: str) -> torch.Tensor:
        images, idx = self._part(part)
        return predict_logits(net, images, idx, device=self.device)

    def head_logits(self, net: nn.Module, part: str) -> dict[str, torch.Tensor]:
        """Each head's logits (a dual-stream Semiformer: fused, conv, transformer), the main one first."""
        images, idx = self._part(part)
        return predict_heads(net, images, idx, device=self.device)

    def labels(self, part: str) -> torch.Tensor:
        images, idx = self._part(part)
        return images.labels[idx]

    def embeddings(self, net: nn.Module, part: str) -> torch.Tensor:
        images, idx = self._part(part)
        return extract_features(net, images, idx, device=self.device, embedding=True)

    def exportable(self, net: nn.Module) -> nn.Module:
        return net


def has_test(inputs: Any) -> bool:
    test = inputs.data.test
    return test is not None and len(test) > 0


class FeatureInputs:
    """A stage on a frozen backbone's cached features (``features.frozen``): batches hold the features of
    cached views (:class:`~semivit.data.features.FeatureBatches`), evaluation runs the head on the features
    of the images as they are, and the exported model is the backbone with the head folded into its own
    classifier (:func:`~semivit.models.heads.fold_feature_head`): ``predict``, hub and ONNX export see a
    plain network."""

    def __init__(self, data: PreparedData, feats: CachedFeatures, backbone: ImageClassifier,
                 device: torch.device) -> None:
        self.data, self.feats, self.backbone, self.device = data, feats, backbone, device

    def _features(self, part: str) -> torch.Tensor:
        if part == "test":
            assert self.feats.test is not None
            return self.feats.test
        if part not in ("labeled", "val"):
            raise ValueError(f"unknown part '{part}'")
        return self.feats.train["none"][getattr(self.data.split, part)]

    def batches(self, cfg: Config, request: DataRequest, dist: DistInfo) -> BatchSource:
        labeled, unlabeled = per_rank_batches(cfg, request, self.data, dist.world)
        return FeatureBatches(self.feats, self.data.train.labels, self.data.split.labeled, self.data.split.unlabeled,
                              labeled_views=request.labeled_views, unlabeled_views=request.unlabeled_views,
                              batch_size=labeled, unlabeled_batch_size=unlabeled, device=self.device,
                              seed=cfg.train.seed, rank=dist.rank, world=dist.world, support=request.support)

    @torch.no_grad()
    def logits(self, net: nn.Module, part: str) -> torch.Tensor:
        was = net.training
        net.eval()
        feats = self._features(part)
        out = [net(feats[i:i + 4096].to(self.device).float()).float().cpu() for i in range(0, len(feats), 4096)]
        net.train(was)
        return torch.cat(out) if out else torch.zeros(0, 0)

    def head_logits(self, net: nn.Module, part: str) -> dict[str, torch.Tensor]:
        return {"logits": self.logits(net, part)}

    def labels(self, part: str) -> torch.Tensor:
        if part == "test":
            assert self.data.test is not None
            return self.data.test.labels
        return self.data.train.labels[getattr(self.data.split, part)]

    def embeddings(self, net: nn.Module, part: str) -> torch.Tensor:
        return self._features(part).float()

    def exportable(self, net: nn.Module) -> nn.Module:
        if not isinstance(net, FeatureHead):
            return net
        model = copy.deepcopy(self.backbone).cpu()
        fold_feature_head(model.classifier(), copy.deepcopy(net).cpu())
        return model


def fast_embedding(backbone: ImageClassifier, device: torch.device) -> Any:
    """``backbone.classifier_input`` on the fastest path that gives the same features: on a CPU a channels_last
    copy (EfficientNet-Lite0 at 96 px on 2 cores, batch 32: 550–590 images/s against 370 NCHW and 325 with
    onnxruntime; features within 3e-5; benchmarks/pretrained/embed_speed.py), elsewhere the backbone itself."""
    if device.type != "cpu":
        return backbone.classifier_input
    fast = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    return lambda x: fast.classifier_input(x.contiguous(memory_format=torch.channels_last))


def backbone_features(cfg: Config, data: PreparedData, dist: DistInfo, device: torch.device,
                      views: int) -> tuple[ImageClassifier, CachedFeatures]:
    """The pretrained backbone ``cfg.model`` names, and the cached features of ``data`` under it (the images as
    they are, and ``views`` weak and strong views of each training image): embedded once, then read by every
    later run, ``semivit probe`` included (data/features.py)."""
    f = cfg.features
    if views < 0 or f.batch_size < 1:
        raise SemivitError(f"features.views must be ≥ 0 and features.batch_size ≥ 1, got {views} and {f.batch_size}")
    if cfg.model.name == "auto":
        raise SemivitError("features.frozen trains a head on a pretrained backbone's features: name one with --model "
                           "(a hub name, local-dir:FOLDER, or an architecture with --pretrained FILE)")
    backbone = build_model(cfg, data, dist, device)
    if "backbone_size" not in backbone.spec.kwargs:
        raise SemivitError(f"features.frozen trains a head on a pretrained backbone's features, and '{cfg.model.name}' "
                           f"has no pretrained weights: use a hub name, local-dir:FOLDER or --pretrained FILE")
    backbone.eval().to(device)
    spec = {k: v for k, v in backbone.spec.to_dict().items() if k not in ("num_classes", "classes")}
    weights = weights_fingerprint(backbone, skip=f"backbone.{backbone.classifier_attr}")  # features do not read it
    identity = json.dumps({"spec": spec, "weights": weights}, sort_keys=True, default=str)
    plan = ViewPlan(views, data.flip, {"num_ops": cfg.data.strong_ops, "magnitude": strong_magnitude(cfg, data),
                                       "erase": cfg.data.strong_erase}, f.seed)
    root = None if f.cache.strip().lower() == "auto" else Path(f.cache)
    # rank 0 embeds (or reads) first; the other ranks then read its cache
    if dist.enabled and not dist.is_main:
        barrier()
    feats = embed_dataset(fast_embedding(backbone, device), identity, data, plan, root, batch_size=f.batch_size,
                          device=device, progress=cfg.train.progress and dist.is_main)
    if dist.enabled and dist.is_main:
        barrier()
    return backbone, feats


def frozen_backbone_inputs(cfg: Config, data: PreparedData, dist: DistInfo,
                           device: torch.device) -> tuple[FeatureInputs, FeatureHead]:
    """``features.frozen``: the backbone's cached features (:func:`backbone_features`) as the stage's inputs,
    and a head on them (the previous stage's, in a recipe)."""
    backbone, feats = backbone_features(cfg, data, dist, device, cfg.features.views)
    # standardised by every training image's features (no labels involved): 20 labeled images give a noisy σ
    head = FeatureHead(feats.train["none"], data.train.num_classes)
    local = pretrained_source(cfg.model.name, cfg.model.pretrained)[1]
    if local and (read_export_meta(local) or {}).get("classifier_trained"):
        # a recipe's later stage: the head the previous stage trained (folded into the classifier it exported)
        unfold_feature_head(backbone.classifier(), head)
        if dist.is_main:
            log.info("the head starts from the classifier %s was exported with", local)
    return FeatureInputs(data, feats, backbone, device), head
