"""An exported classifier's outlier head: OpenMatch's one-vs-all (OVA) heads (Saito et al., NeurIPS 2021) carried
by the model itself, so ``semivit predict``, the ONNX file and the Python API score new images as "like none of
your classes", not only the run's pool.

The head is one linear layer from the features the classifier reads to 2K logits, read as B×2×K (index 0 "not
class j", index 1 "class j"); p_j^+ is the softmax over head j's pair, and an image's outlier score is

    s(x) = 1 − p_ŷ^+(x),   ŷ = argmax of the classifier's logits        (OpenMatch, Sec. 3.2)

A head trained on standardised cached features, (h − μ)/σ, is folded into the raw features the exported model
computes (:func:`fold_standardization`), as the classifier head is (``heads.fold_feature_head``).

Examples:
    >>> import torch
    >>> open_logits = torch.tensor([[0.0, 0.0, 2.0, -2.0]])  # K = 2: head 0 at p+ = σ(2), head 1 at σ(−2)
    >>> [round(float(s), 4) for s in outlier_score(torch.tensor([[1.0, 0.0]]), open_logits)]  # ŷ = 0
    [0.1192]
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semivit.errors import SemivitError

#: the outlier head's weights in a hub folder (beside timm's model.safetensors, which holds the backbone only)
HUB_FILE = "outlier_head.safetensors"


def ova_probs(logits_open: torch.Tensor) -> torch.Tensor:
    """B×2K OVA logits → B×2×K probabilities (softmax over each head's pair; [:, 1] = inlier of class j)."""
    return logits_open.float().unflatten(1, (2, -1)).softmax(1)  # the batch stays symbolic in an ONNX trace


def outlier_score(logits: torch.Tensor, logits_open: torch.Tensor) -> torch.Tensor:
    """1 − p_ŷ^+: how little the OVA head of the predicted class ŷ = argmax logits believes the image is its."""
    pred = logits.argmax(1)
    return 1 - ova_probs(logits_open)[:, 1].gather(1, pred[:, None])[:, 0]


@torch.no_grad()
def fold_standardization(linear: nn.Linear, mean: torch.Tensor | None = None,
                         std: torch.Tensor | None = None) -> nn.Linear:
    """A new linear layer with a bias that gives ``linear((h − mean)/std)`` on raw ``h`` (W' = W/σ, b' = b − W'·μ);
    without ``mean``/``std``, a copy of ``linear`` with a bias (zero where it had none)."""
    weight = linear.weight.detach().float().cpu()
    bias = linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(len(weight))
    if mean is not None and std is not None:
        weight = weight / std.float().cpu()
        bias = bias - weight @ mean.float().cpu()
    out = nn.Linear(weight.shape[1], weight.shape[0])
    out.weight.copy_(weight)
    out.bias.copy_(bias)
    return out


def attach_outlier_head(model: Any, head: nn.Linear | None = None) -> nn.Linear:
    """Install ``head`` (2K outputs on the classifier's input features) as ``model.outlier_head`` and record it in
    the spec, so a saved model is rebuilt with it (``spec_check.model_from_spec``); without ``head``, a fresh one
    of that shape to load saved weights into."""
    width, k = int(model.classifier().in_features), int(model.spec.num_classes)
    if head is None:
        head = nn.Linear(width, 2 * k)
    if head.in_features != width or head.out_features != 2 * k:
        raise SemivitError(f"an outlier head for this model maps {width} features to {2 * k} logits, got "
                           f"{head.in_features} → {head.out_features}")
    model.outlier_head = head
    model.spec.kwargs["outlier_head"] = True
    return head


def model_outlier_scores(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, outlier scores) of a model that carries an outlier head, for a batch of float images (one pass:
    the classifier and the head read the same features)."""
    if getattr(model, "outlier_head", None) is None:
        raise SemivitError("this model has no outlier head: outlier scores come from a run trained with openmatch "
                           "(e.g. the frozen-openmatch or partial-openmatch recipe)")
    h = model.classifier_input(x)
    logits = model.classifier()(h)
    return logits, outlier_score(logits, model.outlier_head(h))


def scored_parts(data: Any, name: str) -> list[tuple[str, str, Any, torch.Tensor]]:
    """The parts a run scores — ``(part, file name, images, indices)``: the unlabeled pool as ``name``, the test
    set as ``test_`` + ``name`` when there is one."""
    parts = [("unlabeled", name, data.train, data.split.unlabeled)]
    if data.test is not None and len(data.test):
        parts.append(("test", f"test_{name}", data.test, torch.arange(len(data.test))))
    return parts


def write_scores(path: Path, images: Any, idx: torch.Tensor, scores: torch.Tensor, predicted: torch.Tensor) -> None:
    """``id,outlier_score,predicted`` rows, one per image of ``images[idx]``: the file the labeling loop and the
    run report read (``labeling/suggest.outlier_scores``)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "outlier_score", "predicted"])
        for i, s, c in zip(idx.tolist(), scores.tolist(), predicted.tolist()):
            w.writerow([images.ids[i], f"{s:.5f}", images.classes[c]])
