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
from semivit.models.tail import BackboneTail, prefix_of

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
        if part not in ("labeled", "val", "unlabeled"):
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
    cached views (:class:`~semivit.data.features.FeatureBatches`), evaluation runs the trained module on the
    features of the images as they are, and the exported model is a plain network: the backbone with the head
    folded into its own classifier (:func:`~semivit.models.heads.fold_feature_head`), and with a cut backbone's
    trained tail written back (:meth:`~semivit.models.tail.BackboneTail.exported`), so ``predict``, hub and
    ONNX export take images."""

    def __init__(self, data: PreparedData, feats: CachedFeatures, backbone: ImageClassifier,
                 device: torch.device) -> None:
        self.data, self.feats, self.backbone, self.device = data, feats, backbone, device

    def _features(self, part: str) -> torch.Tensor:
        if part == "test":
            assert self.feats.test is not None
            return self.feats.test
        if part not in ("labeled", "val", "unlabeled"):
            raise ValueError(f"unknown part '{part}'")
        return self.feats.train["none"][getattr(self.data.split, part)]

    def batches(self, cfg: Config, request: DataRequest, dist: DistInfo) -> BatchSource:
        labeled, unlabeled = per_rank_batches(cfg, request, self.data, dist.world)
        return FeatureBatches(self.feats, self.data.train.labels, self.data.split.labeled, self.data.split.unlabeled,
                              labeled_views=request.labeled_views, unlabeled_views=request.unlabeled_views,
                              batch_size=labeled, unlabeled_batch_size=unlabeled, device=self.device,
                              seed=cfg.train.seed, rank=dist.rank, world=dist.world, support=request.support)

    @torch.no_grad()
    def _apply(self, fn: Any, net: nn.Module, part: str) -> torch.Tensor:
        was = net.training
        net.eval()
        feats = self._features(part)
        step = 512 if isinstance(net, BackboneTail) else 4096  # a tail's activations are maps, not vectors
        out = [fn(feats[i:i + step].to(self.device).float()).float().cpu() for i in range(0, len(feats), step)]
        net.train(was)
        return torch.cat(out) if out else torch.zeros(0, 0)

    def logits(self, net: nn.Module, part: str) -> torch.Tensor:
        return self._apply(net, net, part)

    def head_logits(self, net: nn.Module, part: str) -> dict[str, torch.Tensor]:
        return {"logits": self.logits(net, part)}

    def labels(self, part: str) -> torch.Tensor:
        if part == "test":
            assert self.data.test is not None
            return self.data.test.labels
        return self.data.train.labels[getattr(self.data.split, part)]

    def embeddings(self, net: nn.Module, part: str) -> torch.Tensor:
        if isinstance(net, BackboneTail):  # the pooled features of the trained tail
            return self._apply(net.pooled, net, part)
        return self._features(part).float()

    def exportable(self, net: nn.Module) -> nn.Module:
        if isinstance(net, BackboneTail):
            return net.exported(self.backbone)
        if not isinstance(net, FeatureHead):
            return net
        model = copy.deepcopy(self.backbone).cpu()
        fold_feature_head(model.classifier(), copy.deepcopy(net).cpu())
        return model


def fast_embedding(backbone: ImageClassifier, device: torch.device, cut_blocks: int = 0) -> Any:
    """``backbone.classifier_input`` (or, with ``cut_blocks``, the activation before the last ``cut_blocks``
    blocks: :func:`~semivit.models.tail.prefix_of`) on the fastest path that gives the same features: on a CPU
    a channels_last copy (EfficientNet-Lite0 at 96 px on 2 cores, batch 32: 550–590 images/s against 370 NCHW
    and 325 with onnxruntime; features within 3e-5; benchmarks/pretrained/embed_speed.py), elsewhere the
    backbone itself."""
    net = backbone
    if device.type == "cpu":
        net = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    embed = prefix_of(net, cut_blocks) if cut_blocks else net.classifier_input
    if device.type != "cpu":
        return embed
    # the cache stores plain contiguous tensors (safetensors refuses strided ones)
    return lambda x: embed(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _pretrained_backbone(cfg: Config, data: PreparedData, dist: DistInfo, device: torch.device) -> ImageClassifier:
    f = cfg.features
    if f.views < 0 or f.batch_size < 1:
        raise SemivitError(f"features.views must be ≥ 0 and features.batch_size ≥ 1, got {f.views} and {f.batch_size}")
    if cfg.model.name == "auto":
        raise SemivitError("features.frozen trains a head on a pretrained backbone's features: name one with --model "
                           "(a hub name, local-dir:FOLDER, or an architecture with --pretrained FILE)")
    backbone = build_model(cfg, data, dist, device)
    if "backbone_size" not in backbone.spec.kwargs:
        raise SemivitError(f"features.frozen trains a head on a pretrained backbone's features, and '{cfg.model.name}' "
                           f"has no pretrained weights: use a hub name, local-dir:FOLDER or --pretrained FILE")
    return backbone.eval().to(device)


def _cached_features(cfg: Config, data: PreparedData, dist: DistInfo, device: torch.device, backbone: ImageClassifier,
                     views: int, tail: BackboneTail | None = None) -> CachedFeatures:
    """The cache of ``backbone``'s features (``tail``: of the activation at its cut), keyed by the weights the
    features depend on: not the classifier, nor a cut backbone's trained tail, so a recipe's later stage, which
    starts from the earlier stage's export, reads the same cache."""
    f = cfg.features
    spec = {k: v for k, v in backbone.spec.to_dict().items() if k not in ("num_classes", "classes")}
    skip = (f"backbone.{backbone.classifier_attr}",)
    if tail is not None:
        skip += tuple(f"{name}." for name in tail.trained_names)
        spec["cut_after_block"] = tail.cut
    identity = json.dumps({"spec": spec, "weights": weights_fingerprint(backbone, skip=skip)}, sort_keys=True,
                          default=str)
    plan = ViewPlan(views, data.flip, {"num_ops": cfg.data.strong_ops, "magnitude": strong_magnitude(cfg, data),
                                       "erase": cfg.data.strong_erase}, f.seed)
    root = None if f.cache.strip().lower() == "auto" else Path(f.cache)
    # rank 0 embeds (or reads) first; the other ranks then read its cache
    if dist.enabled and not dist.is_main:
        barrier()
    embed = fast_embedding(backbone, device, len(tail.block_names) if tail is not None else 0)
    feats = embed_dataset(embed, identity, data, plan, root, batch_size=f.batch_size, device=device,
                          progress=cfg.train.progress and dist.is_main)
    if dist.enabled and dist.is_main:
        barrier()
    return feats


def backbone_features(cfg: Config, data: PreparedData, dist: DistInfo, device: torch.device,
                      views: int) -> tuple[ImageClassifier, CachedFeatures]:
    """The pretrained backbone ``cfg.model`` names, and the cached features of ``data`` under it (the images as
    they are, and ``views`` weak and strong views of each training image): embedded once, then read by every
    later run, ``semivit probe`` included (data/features.py)."""
    backbone = _pretrained_backbone(cfg, data, dist, device)
    return backbone, _cached_features(cfg, data, dist, device, backbone, views)


def frozen_backbone_inputs(cfg: Config, data: PreparedData, dist: DistInfo,
                           device: torch.device) -> tuple[FeatureInputs, nn.Module]:
    """``features.frozen``: the backbone's cached features as the stage's inputs and a head on them; with
    ``features.train_blocks`` N, the cached activation before the backbone's last N blocks and those blocks with
    the head (:class:`~semivit.models.tail.BackboneTail`). In a recipe's later stage the head starts from the
    classifier the previous stage exported (and the tail from its blocks, which that export holds)."""
    f = cfg.features
    backbone = _pretrained_backbone(cfg, data, dist, device)
    tail = BackboneTail(backbone, f.train_blocks, f.tail_lr).to(device) if f.train_blocks else None
    feats = _cached_features(cfg, data, dist, device, backbone, f.views, tail)
    # standardised by every training image's features (no labels involved): 20 labeled images give a noisy σ
    if tail is not None:
        head = tail.attach_head(feats.train["none"].to(device), data.train.num_classes)
    else:
        head = FeatureHead(feats.train["none"], data.train.num_classes)
    local = pretrained_source(cfg.model.name, cfg.model.pretrained)[1]
    if local and (read_export_meta(local) or {}).get("classifier_trained"):
        # a recipe's later stage: the head the previous stage trained (folded into the classifier it exported)
        unfold_feature_head(backbone.classifier(), head)
        if dist.is_main:
            log.info("the head starts from the classifier %s was exported with", local)
    return FeatureInputs(data, feats, backbone, device), (tail if tail is not None else head)
