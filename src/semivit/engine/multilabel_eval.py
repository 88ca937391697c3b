"""Judging a multi-label classifier: mean average precision, micro and macro F1, per-class AP, and each class's
decision threshold chosen on the validation split.

Targets are N×C of 1 (present), 0 (absent) and -1 (unknown, left out of every count). Average precision is
scikit-learn's (``average_precision_score``); a class without a positive among the known entries has no AP and
is left out of the mean, as torchmetrics and scikit-learn's own ``average=None`` callers do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score


def _known(targets: torch.Tensor) -> np.ndarray:
    return (targets >= 0).cpu().numpy()


def per_class_ap(logits: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    """Average precision of each class over its known entries (None for a class without a positive or a negative
    there: the ranking is then undefined)."""
    scores, y, known = logits.float().cpu().numpy(), targets.cpu().numpy(), _known(targets)
    out: list[float | None] = []
    for c in range(y.shape[1]):
        keep = known[:, c]
        positives = int((y[keep, c] == 1).sum())
        out.append(float(average_precision_score(y[keep, c], scores[keep, c]))
                   if 0 < positives < int(keep.sum()) else None)
    return out


def mean_ap(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP: the mean of :func:`per_class_ap` over the classes that have one (0.0 when none has).

    Examples:
        >>> round(mean_ap(torch.tensor([[2.0, -1.0], [-1.0, 1.0], [0.5, -2.0]]),
        ...               torch.tensor([[1, 0], [0, 1], [0, 1]])), 4)
        0.9167
    """
    return _mean(per_class_ap(logits, targets))


def _mean(aps: list[float | None]) -> float:
    valid = [a for a in aps if a is not None]
    return float(np.mean(valid)) if valid else 0.0


def choose_thresholds(logits: torch.Tensor, targets: torch.Tensor, default: float = 0.5) -> list[float]:
    """Each class's threshold on σ(z) with the best F1 on these (validation) images: the cut between two
    consecutive probabilities of the ranked known entries where F1 = 2·TP / (2·TP + FP + FN) peaks (``default``
    for a class without a positive there)."""
    probs, y, known = logits.float().sigmoid().cpu(), targets.cpu(), targets.cpu() >= 0
    out = []
    for c in range(y.shape[1]):
        p, t = probs[known[:, c], c], y[known[:, c], c] == 1
        if not t.any():
            out.append(default)
            continue
        order = torch.argsort(p, descending=True)
        p, t = p[order], t[order].float()
        tp = t.cumsum(0)
        fp = (1 - t).cumsum(0)
        f1 = 2 * tp / (2 * tp + fp + (t.sum() - tp))
        best = int(f1.argmax())
        below = float(p[best + 1]) if best + 1 < len(p) else 0.0
        out.append(round((float(p[best]) + below) / 2, 6))  # midway to the next, so the cut is not on an image
    return out


def f1_scores(logits: torch.Tensor, targets: torch.Tensor, thresholds: list[float]) -> dict[str, Any]:
    """Micro F1 (every known entry counted together), macro F1 (the mean over classes of each class's F1) and the
    per-class F1, with σ(z) ≥ threshold as 'present'."""
    pred = logits.float().sigmoid().cpu() >= torch.tensor(thresholds).view(1, -1)
    y, known = targets.cpu() == 1, targets.cpu() >= 0
    tp = (pred & y & known).sum(0).double()
    fp = (pred & ~y & known).sum(0).double()
    fn = (~pred & y & known).sum(0).double()
    denominator = 2 * tp + fp + fn
    per_class = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))
    micro = float(2 * tp.sum() / max(float(denominator.sum()), 1.0))
    return {"micro_f1": micro, "macro_f1": float(per_class.mean()), "per_class_f1": per_class.tolist()}


def multilabel_report(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                      thresholds: list[float]) -> dict[str, Any]:
    """The test report of a multi-label classifier: mAP, micro/macro F1 at ``thresholds`` (chosen on validation),
    and per class its AP, F1, threshold and number of positive images."""
    aps = per_class_ap(logits, targets)
    f1 = f1_scores(logits, targets, thresholds)
    positives = (targets == 1).sum(0).tolist()
    return {"multilabel": True, "samples": len(targets), "map": _mean(aps),
            "micro_f1": f1["micro_f1"], "macro_f1": f1["macro_f1"], "thresholds": list(thresholds),
            "per_class": {name: {"ap": None if ap is None else round(ap, 5),
                                 "f1": round(f, 5), "threshold": t, "positives": int(n)}
                          for name, ap, f, t, n in zip(classes, aps, f1["per_class_f1"], thresholds, positives)}}


def knn_scores(bank: torch.Tensor, bank_targets: torch.Tensor, queries: torch.Tensor, k: int = 20,
               temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN on frozen features for several labels per image: each class's score is the share of the k
    most similar bank images (cosine, weights exp(sim / T), as the single-label k-NN) that show it."""
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    queries = torch.nn.functional.normalize(queries.float(), dim=1)
    sims, idx = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    weights = (sims / temperature).softmax(1)
    return (weights.unsqueeze(2) * (bank_targets[idx] == 1).float()).sum(1)


def per_class_probs(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    """One logistic regression per class (scikit-learn's defaults) fitted on features ``x`` and 0/1 targets ``y``
    (N×C); each class's probability on ``x_eval``. A class ``y`` always (or never) shows gets 1 (or 0)."""
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(x_eval), y.shape[1]))
    for c in range(y.shape[1]):
        if y[:, c].min() == y[:, c].max():
            out[:, c] = float(y[0, c])
            continue
        out[:, c] = LogisticRegression(max_iter=2000).fit(x, y[:, c]).predict_proba(x_eval)[:, 1]
    return out


def linear_probe_scores(train_x: torch.Tensor, train_targets: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
    """The linear probe for several labels per image: :func:`per_class_probs` on frozen features standardised by
    the training rows; the test images' probabilities, each class's own."""
    from semivit.engine.evaluate import standardised

    x, xt = standardised(train_x.float(), test_x.float())
    return torch.from_numpy(per_class_probs(x, (train_targets == 1).numpy().astype(np.int64), xt)).float()


def summary_line(report: dict[str, Any]) -> str:
    """One line for a terminal: mAP and the two F1s."""
    return (f"mAP {report['map']:.4f}, micro-F1 {report['micro_f1']:.4f}, macro-F1 {report['macro_f1']:.4f} "
            f"on {report['samples']} images")
