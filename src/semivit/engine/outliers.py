"""Outlier scores by nearest neighbours: how far each image's features lie from the labeled images' (deep k-NN,
Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022).

With L2-normalised features z, an image's distance is one minus the cosine similarity to its k-th nearest labeled
image, d_k(x) = 1 − ⟨z(x), z_(k)⟩ (the paper's ‖z − z_(k)‖ up to a monotone map); larger = less like any labeled
image. k follows the paper's k = 50 for CIFAR-10's 50,000 training images, scaled with the number of labeled images
(:func:`default_k`: 1 below 1,500 labels). The threshold is the paper's: the distance under which 95% of the
in-distribution images fall, here the labeled images' own leave-one-out distances (τ); the saved score is
s = min(1, ½ · d_k / τ), so s ≥ 0.5 (the labeling loop's "looks like none of your classes") means d_k ≥ τ.

Why beside OpenMatch's one-vs-all scores: on a frozen ImageNet backbone's features those ranked CIFAR-10's unknown
vehicles as *more* familiar than the known animals (AUROC 0.15), while this score on the same cached features
separated them (AUROC ≈ 0.85; benchmarks/RESULTS.md, issue 28). It needs no training and no unknown images: a run
on cached features writes it for every method (``train.outliers``).

Examples:
    >>> import torch
    >>> bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> d = knn_distance(bank, torch.tensor([[1.0, 0.05], [-1.0, -1.0]]), k=1)
    >>> [round(float(v), 3) for v in d]  # near the first pair; opposite to everything
    [0.001, 1.707]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semivit.core.io import atomic_write_json
from semivit.models.outlier import scored_parts, write_scores

log = logging.getLogger("semivit")

#: the in-distribution share under the threshold (Sun et al.: 95% of in-distribution images kept)
KEEP = 0.95


def default_k(bank_size: int) -> int:
    """Sun et al.'s k = 50 for 50,000 training images, scaled to the bank: at least 1."""
    return max(1, round(50 * bank_size / 50_000))


def knn_distance(bank: torch.Tensor, queries: torch.Tensor, k: int, exclude_self: bool = False,
                 chunk: int = 4096) -> torch.Tensor:
    """1 − cosine similarity of each query to its k-th nearest bank vector (``exclude_self``: the queries are the
    bank, and each skips itself: leave-one-out)."""
    z_bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank) - int(exclude_self))
    out = []
    for start in range(0, len(queries), chunk):
        sim = F.normalize(queries[start:start + chunk].float(), dim=1) @ z_bank.T
        if exclude_self:
            sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0
        out.append(1 - sim.topk(k, dim=1).values[:, -1])
    return torch.cat(out) if out else torch.zeros(0)


def knn_scorer(bank: torch.Tensor, k: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Queries → scores in [0, 1] with 0.5 at the distance 95% of the bank's own (leave-one-out) distances stay
    under (see the module docstring); the threshold is computed here, once for every part scored."""
    k = k or default_k(len(bank))
    own = knn_distance(bank, bank, k, exclude_self=True)
    tau = max(float(torch.quantile(own, KEEP)) if len(own) else 1.0, 1e-8)
    return lambda queries: (0.5 * knn_distance(bank, queries, k) / tau).clamp(0, 1)


def knn_outlier_scores(bank: torch.Tensor, queries: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """:func:`knn_scorer` of ``bank`` applied to ``queries``."""
    return knn_scorer(bank, k)(queries)


def write_knn_outlier_scores(inputs: Any, net: Any, run_dir: Path, name: str = "outlier_scores.csv") -> dict[str, Any]:
    """Score every unlabeled image (``name``) and test image (``test_`` + ``name``) by :func:`knn_outlier_scores`
    against the labeled images' embeddings; with unknown classes in the test set (label −1), return
    ``test_openset_auroc_knn`` (unknown against known), also added to the run's results.json."""
    from semivit.engine.evaluate import roc_auc

    data = inputs.data
    bank = inputs.embeddings(net, "labeled")
    k = default_k(len(bank))
    score = knn_scorer(bank, k)
    metrics: dict[str, Any] = {}
    for part, filename, images, idx in scored_parts(data, name):
        if not len(idx):
            continue
        scores = score(inputs.embeddings(net, part))
        write_scores(run_dir / filename, images, idx, scores, inputs.logits(net, part).argmax(1))
        labels = images.labels[idx]
        if part == "test" and bool((labels < 0).any()) and bool((labels >= 0).any()):
            metrics["test_openset_auroc_knn"] = float(roc_auc(scores, labels < 0))
    results = run_dir / "results.json"
    if metrics and results.is_file():
        atomic_write_json(results, {**json.loads(results.read_text()), **metrics})
    auroc = metrics.get("test_openset_auroc_knn")
    log.info("k-NN outlier scores (k = %d against %d labeled images) of %d unlabeled images: %s%s", k, len(bank),
             len(data.split.unlabeled), run_dir / name,
             f"; open-set AUROC on the test set {auroc:.4f}" if auroc is not None else "")
    return metrics
