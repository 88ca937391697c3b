"""Heads that sit on a backbone's pooled features."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SimCLRv2's deep projection head (Chen et al. 2020b, Sec. 2.1): ``num_layers`` linear layers, each
    followed by BatchNorm, with ReLU between them (none after the last). ``blocks[:k]`` is what fine-tuning
    "from the k-th layer of the projection head" keeps.

    ``last_bn=False`` makes the last layer a plain Linear (with bias, no BatchNorm): PAWS's projector
    (facebookresearch/suncet ``src/paws_train.py`` ``init_model``: fc1–bn1–relu1–fc2–bn2–relu2–fc3).
    SimCLRv2 keeps BatchNorm on its last layer (the default)."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, num_layers: int = 3,
                 last_bn: bool = True) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        blocks = []
        for i in range(num_layers):
            last = i == num_layers - 1
            layer: list[nn.Module]
            if last and not last_bn:
                layer = [nn.Linear(dims[i], dims[i + 1])]
            else:  # a bias before BatchNorm would be cancelled by its mean subtraction
                layer = [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1])]
            if not last:
                layer.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layer))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class MLPHead(nn.Module):
    """An MLP with a linear output: ``num_layers`` linear layers, BatchNorm and ReLU after each but the last.

    BYOL's projector and predictor (Grill et al. 2020, Sec. 3.3: Linear–BN–ReLU–Linear, ``num_layers`` = 2)
    and SimReg's deep prediction head on a distilled student (Navaneet et al. 2022: 4 layers) are this
    module. Unlike :class:`ProjectionHead` the output has a bias and no BatchNorm."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP head needs at least 1 layer, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def imprint_classifier(classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor,
                       temperature: float = 0.1) -> int:
    """Weight imprinting (Qi, Brown & Lowe 2018, "Low-Shot Learning with Imprinted Weights", Eq. 2–4):
    each class's weight row is the normalised mean of its labeled images' normalised features,
    w_c = normalize(Σ_{i: y_i = c} h_i / ‖h_i‖), and the bias is 0, so the untrained classifier is the
    nearest class mean by cosine — on a pre-trained embedding close to the soft nearest-neighbour classifier
    PAWS trains (benchmarks/RESULTS.md). The rows are scaled by 1 / (temperature · median ‖h‖): the logits
    of a typical image are its cosines / temperature, a softmax neither flat nor saturated. Classes without
    a labeled image keep their rows. Returns the number of classes imprinted."""
    if features.ndim != 2 or len(features) != len(labels) or features.shape[1] != classifier.in_features:
        raise ValueError(f"features {tuple(features.shape)} and {len(labels)} labels do not fit a "
                         f"{classifier.in_features}-input classifier")
    unit = nn.functional.normalize(features.float(), dim=1)
    scale = 1.0 / (temperature * features.float().norm(dim=1).median().clamp_min(1e-6))
    imprinted = 0
    for c in range(classifier.out_features):
        mine = labels == c
        if mine.any():
            row = nn.functional.normalize(unit[mine].mean(0), dim=0) * scale
            classifier.weight[c].copy_(row.to(classifier.weight))
            imprinted += 1
    if classifier.bias is not None:
        classifier.bias.zero_()
    return imprinted


class FeatureHead(nn.Module):
    """A linear classifier on a frozen backbone's cached features, standardised by the training images'
    feature mean and standard deviation: logits = W·(h − μ)/σ + b. Standardising makes one learning rate fit
    every backbone (pooled CNN features range over orders of magnitude), and it folds into the backbone's own
    linear classifier at export (:func:`fold_feature_head`), so the exported model is the plain backbone.

    Examples:
        >>> head = FeatureHead(torch.randn(100, 16) * 5 + 3, num_classes=10)
        >>> head(torch.randn(4, 16)).shape
        torch.Size([4, 10])
    """

    def __init__(self, features: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        feats = features.float()
        self.register_buffer("mean", feats.mean(0))
        self.register_buffer("std", feats.std(0).clamp_min(1e-6))
        self.linear = nn.Linear(feats.shape[1], num_classes)

    def standardize(self, h: torch.Tensor) -> torch.Tensor:
        """(h − μ)/σ: what the linear layer reads."""
        return (h.float() - self.mean) / self.std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(h))


@torch.no_grad()
def fold_feature_head(classifier: nn.Linear, head: FeatureHead) -> None:
    """Write ``head`` into the backbone's ``classifier`` (same input features): W' = W/σ, b' = b − W'·μ, so
    ``classifier(h) == head(h)`` and backbone + classifier is the trained model."""
    if classifier.weight.shape != head.linear.weight.shape:
        raise ValueError(f"the head is {tuple(head.linear.weight.shape)}, the classifier "
                         f"{tuple(classifier.weight.shape)}: they must see the same features")
    weight = head.linear.weight / head.std
    classifier.weight.copy_(weight)
    if classifier.bias is None:
        raise ValueError("the backbone's classifier has no bias to hold the head's")
    classifier.bias.copy_(head.linear.bias - weight @ head.mean)


@torch.no_grad()
def unfold_feature_head(classifier: nn.Linear, head: FeatureHead) -> None:
    """The inverse of :func:`fold_feature_head`: set ``head``'s linear layer (with its own μ, σ) so that
    ``head(h) == classifier(h)``: W = W'·σ, b = b' + W'·μ. A later stage of a frozen-backbone recipe starts
    its head from the classifier the previous stage exported."""
    head.linear.weight.copy_(classifier.weight * head.std)
    head.linear.bias.copy_(classifier.bias + classifier.weight @ head.mean)
