"""A pretrained backbone cut after a block: the frozen part before the cut embeds each image once (its output is
cached, data/features.py), and the part after it — the last N blocks, the layers after them and a head — trains
on those cached activations in the one loop, as a head alone does on pooled features.

Why: a frozen backbone tops out where its pooled features do (EfficientNet-Lite0 at 96 px on CIFAR-10: 0.747
with all 50,000 labels, benchmarks/RESULTS.md); fine-tuning the whole network on a CPU costs a backbone forward
and backward per view and step. The last blocks hold a small share of the FLOPs at a small spatial size
(Lite0's last block runs on a 3×3 map at 96 px), so training them on cached inputs costs little more than a
head, and adapts the features the head reads ("partial fine-tuning": Yosinski et al. 2014 on transferring the
later layers; Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?").

Supported families (timm's layouts): EfficientNet / MobileNet (``conv_stem``, ``blocks`` of stages), ResNet
(``layer1``..``layer4``) and ViT (``patch_embed``, ``blocks``); a block is one MBConv / bottleneck / transformer
block. Other networks are refused with a one-line error.

Examples:
    >>> import timm
    >>> from semivit.models.factory import wrap_module
    >>> net = wrap_module(timm.create_model("test_efficientnet", num_classes=4), 4, 3, 32)
    >>> prefix, tail = split_backbone(net, blocks=2)
    >>> h = prefix(torch.rand(2, 3, 32, 32))          # what the cache holds
    >>> tail.pooled(h).shape == net.features(torch.rand(2, 3, 32, 32)).shape
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from semivit.errors import SemivitError
from semivit.models.factory import ImageClassifier
from semivit.models.heads import FeatureHead, fold_feature_head


def backbone_blocks(model: ImageClassifier) -> tuple[str, list[str], list[str]]:
    """``(family, block names, names of the layers between the last block and the pooling)`` of ``model``'s
    backbone, each name a path inside ``model.backbone`` (``blocks.5.3``, ``layer4.1``, ``norm``)."""
    b = model.backbone
    if all(hasattr(b, a) for a in ("patch_embed", "_pos_embed", "norm_pre", "norm")) and \
            isinstance(getattr(b, "blocks", None), nn.Sequential):
        return "vit", [f"blocks.{i}" for i in range(len(b.blocks))], ["norm"]
    if hasattr(b, "conv_stem") and isinstance(getattr(b, "blocks", None), nn.Sequential):
        names = [f"blocks.{i}.{j}" for i, stage in enumerate(b.blocks) for j in range(len(stage))]
        # EfficientNet ends its features with conv_head + bn2; MobileNetV3 has them in its forward_head
        after = ["conv_head", "bn2"] if hasattr(b, "bn2") else []
        return "efficientnet", names, after
    if all(hasattr(b, f"layer{i}") for i in range(1, 5)):
        names = [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(b, f"layer{i}")))]
        return "resnet", names, []
    raise SemivitError(f"features.train_blocks cuts EfficientNet/MobileNet, ResNet and ViT backbones, and "
                       f"'{model.spec.name}' ({type(b).__name__}) is none of them: use features.train_blocks=0 "
                       f"(a head on the pooled features)")


def cut_point(model: ImageClassifier, blocks: int) -> tuple[str, list[str], list[str]]:
    """:func:`backbone_blocks`, checked that the model has ``blocks`` blocks to train (1 to all of them)."""
    family, names, after = backbone_blocks(model)
    if not 1 <= blocks <= len(names):
        raise SemivitError(f"features.train_blocks must be between 1 and {len(names)} (the blocks of "
                           f"'{model.spec.name}'), got {blocks}")
    return family, names, after


class BackboneTail(nn.Module):
    """The part of a backbone after the cut — its last blocks, the layers after them, the pooling, any kept
    projection-head layers — and a :class:`~semivit.models.heads.FeatureHead` on the pooled features. Its
    input is the cut's activation (what the frozen prefix gives); its output, logits.

    ``net`` is a copy of the whole classifier whose prefix blocks are replaced by ``nn.Identity`` and whose
    other prefix weights (stem, embeddings) are frozen: :meth:`exported` writes the trained weights back into a
    copy of the original backbone and folds the head into its classifier, so the export is a plain network.
    The trained blocks' parameters carry ``lr_scale`` (``features.tail_lr``) that the optimizer's groups read:
    pretrained blocks take a smaller step than the fresh head."""

    def __init__(self, model: ImageClassifier, blocks: int, lr_scale: float = 1.0) -> None:
        super().__init__()
        family, names, after = cut_point(model, blocks)
        self.family, self.cut = family, len(names) - blocks
        self.net = copy.deepcopy(model)
        backbone = self.net.backbone
        for name in names[:self.cut]:  # the prefix's blocks never run here: drop their weights
            parent, _, leaf = name.rpartition(".")
            setattr(backbone.get_submodule(parent), leaf, nn.Identity())
        self.net.embedding = None
        self.net.requires_grad_(False)
        self.block_names = names[self.cut:]
        self.blocks = [backbone.get_submodule(n) for n in self.block_names]
        self.after = [backbone.get_submodule(n) for n in after]
        trained = [*self.blocks, *self.after, *self._head_modules()]
        for module in trained:
            module.requires_grad_(True)
        for module in self.blocks:
            for p in module.parameters():
                p.lr_scale = lr_scale  # read by engine.optim.param_groups
        self.trained_names = [n for n, m in self.net.named_modules() if any(m is t for t in trained)]
        self.head: FeatureHead | None = None

    def _head_modules(self) -> list[nn.Module]:
        """Modules after the pooling that the backbone's forward_head uses (ViT's fc_norm, MobileNetV3's conv
        head), and the kept projection-head layers: trained with the blocks."""
        b = self.net.backbone
        used = [getattr(b, n, None) for n in ("fc_norm", "conv_head", "norm_head")]
        return [m for m in used if isinstance(m, nn.Module) and all(m is not a for a in self.after)] \
            + self.net.head_layers()

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """The cut's activation → the features the classifier reads (pooled, after kept head layers)."""
        for block in self.blocks:
            h = block(h)
        for layer in self.after:
            h = layer(h)
        h = self.net.backbone.forward_head(h, pre_logits=True)
        for layer in self.net.head_layers():
            h = layer(h)
        return h

    @torch.no_grad()
    def attach_head(self, cut_activations: torch.Tensor, num_classes: int, batch: int = 1024) -> FeatureHead:
        """A :class:`FeatureHead` standardised by the pooled features of ``cut_activations`` (every training
        image's, through the untrained tail in eval mode)."""
        was = self.training
        self.eval()
        feats = torch.cat([self.pooled(cut_activations[i:i + batch].float()) for i in range(0, len(cut_activations),
                                                                                             batch)])
        self.train(was)
        self.head = FeatureHead(feats, num_classes)
        return self.head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        assert self.head is not None, "attach_head first"
        return self.head(self.pooled(h.float()))

    @torch.no_grad()
    def exported(self, original: ImageClassifier) -> ImageClassifier:
        """A copy of ``original`` with this tail's trained weights (blocks, layers after them, BatchNorm
        statistics) and the head folded into its classifier: images in, the tail's logits out."""
        assert self.head is not None, "attach_head first"
        model = copy.deepcopy(original).cpu()
        mine = self.net.state_dict()
        for name in self.trained_names:
            prefix = f"{name}."
            state = {k[len(prefix):]: v.cpu() for k, v in mine.items() if k.startswith(prefix)}
            model.get_submodule(name).load_state_dict(state)
        fold_feature_head(model.classifier(), copy.deepcopy(self.head).cpu())
        return model

    def extra_repr(self) -> str:
        return f"family={self.family}, trained blocks={self.block_names}"


def prefix_of(model: ImageClassifier, blocks: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation before ``model``'s last ``blocks`` blocks, from images as float [0, 1] (normalised and
    resized as the model does). It runs on ``model`` itself: keep it in eval mode."""
    family, names, _ = cut_point(model, blocks)
    b = model.backbone
    prefix_blocks = [b.get_submodule(n) for n in names[:len(names) - blocks]]

    def prefix(x: torch.Tensor) -> torch.Tensor:
        x = model.normalize(x)
        if family == "vit":
            x = b.norm_pre(b.patch_drop(b._pos_embed(b.patch_embed(x))))
        elif family == "efficientnet":
            x = b.bn1(b.conv_stem(x))
        else:
            x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        for block in prefix_blocks:
            x = block(x)
        return x

    return prefix


def split_backbone(model: ImageClassifier, blocks: int,
                   lr_scale: float = 1.0) -> tuple[Callable[[torch.Tensor], torch.Tensor], BackboneTail]:
    """``(prefix, tail)``: :func:`prefix_of` and a :class:`BackboneTail` of the last ``blocks`` blocks, so that
    ``tail.pooled(prefix(x))`` equals ``model.features(x)``."""
    return prefix_of(model, blocks), BackboneTail(model, blocks, lr_scale)
