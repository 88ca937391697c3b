"""Evaluation: logits over an image set, and the report users read (top-1/5, per class, calibration)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from semivit.data.augment import to_float
from semivit.data.imageset import ImageSet


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], Any], model: nn.Module, images: ImageSet, indices: torch.Tensor | None,
             device: torch.device | str, batch_size: int, amp_dtype: torch.dtype | None = None) -> list[Any]:
    """``fn(chunk)`` for float image chunks of ``images[indices]`` (all when None), with ``model`` in eval mode
    (restored afterwards) and under autocast ``amp_dtype`` when given: the one inference loop."""
    was_training = model.training
    model.eval()
    idx = torch.arange(len(images)) if indices is None else indices
    device = torch.device(device)
    out = []
    for start in range(0, len(idx), batch_size):
        chunk = to_float(images.get(idx[start:start + batch_size]).to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out.append(fn(chunk))
    model.train(was_training)
    return out


def predict_logits(model: nn.Module, images: ImageSet, indices: torch.Tensor | None = None, *,
                   device: torch.device | str = "cpu", batch_size: int = 512,
                   amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` for ``images[indices]`` (all when None)."""
    out = _batched(lambda x: model(x).float().cpu(), model, images, indices, device, batch_size, amp_dtype)
    return torch.cat(out) if out else torch.zeros(0, 0)


def predict_heads(model: nn.Module, images: ImageSet, indices: torch.Tensor | None = None, *,
                  device: torch.device | str = "cpu", batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Each prediction head's logits (float32, CPU) for ``images[indices]`` (all when None), keyed as the
    model's ``heads`` (:meth:`~semivit.models.factory.ImageClassifier.heads`), the main head first."""
    out = _batched(lambda x: {k: v.float().cpu() for k, v in model.heads(x).items()},  # type: ignore[operator]
                   model, images, indices, device, batch_size)
    return {name: torch.cat([o[name] for o in out]) for name in (out[0] if out else {})}


def heads_top1(model: nn.Module, images: ImageSet, indices: torch.Tensor | None = None, *,
               device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1 of each prediction head (:func:`predict_heads`): ``{"fused": …, "conv": …, …}``."""
    labels = images.labels if indices is None else images.labels[indices]
    return {name: top1(logits, labels)
            for name, logits in predict_heads(model, images, indices, device=device).items()}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over equal-width confidence bins."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return float(ece)


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``: ties count half); NaN when only one class
    is present."""
    from sklearn.metrics import roc_auc_score

    if bool(positives.all()) or not bool(positives.any()):
        return float("nan")
    return float(roc_auc_score(positives.numpy(), scores.float().numpy()))


#: test labels are skewed when their largest class holds at least this many times the images of their smallest
#: (classes with no test image left out): summaries then show balanced accuracy and macro-F1 beside top-1,
#: because top-1 alone rewards leaning towards the majority class
SKEW_RATIO = 1.5


def is_skewed(labels: torch.Tensor, ratio: float = SKEW_RATIO) -> bool:
    """Whether the largest class of ``labels`` (−1: unknown, left out) has ≥ ``ratio`` × the smallest's images.

    Examples:
        >>> is_skewed(torch.tensor([0, 0, 0, 0, 1, 1, 1])), is_skewed(torch.tensor([0, 0, 0, 1, 1]))  # 4:3, 3:2
        (False, True)
    """
    counts = torch.bincount(labels[labels >= 0])
    counts = counts[counts > 0]
    return bool(len(counts) > 1 and counts.max() >= ratio * counts.min())


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean of the per-class recalls over the classes present in ``labels`` (scikit-learn's
    ``balanced_accuracy_score``; Brodersen et al. 2010).

    Examples:
        >>> balanced_accuracy(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 1, 1, 1]))  # (0/1 + 3/3) / 2
        0.5
    """
    k = int(max(pred.max(), labels.max())) + 1 if len(labels) else 0
    support = torch.bincount(labels, minlength=k)
    hits = torch.bincount(labels[pred == labels], minlength=k)
    present = support > 0
    return float((hits[present].float() / support[present]).mean()) if present.any() else float("nan")


def macro_f1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The unweighted mean of the per-class F1 = 2TP / (2TP + FP + FN) over the classes in ``labels`` or
    ``pred`` (scikit-learn's ``f1_score(average="macro")``, a class with no true positive counting 0).

    Examples:
        >>> round(macro_f1(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 1, 1, 1])), 4)  # (0 + 6/7) / 2
        0.4286
    """
    if not len(labels):
        return float("nan")
    k = int(max(pred.max(), labels.max())) + 1
    tp = torch.bincount(labels[pred == labels], minlength=k).float()
    true, predicted = torch.bincount(labels, minlength=k).float(), torch.bincount(pred, minlength=k).float()
    seen = (true + predicted) > 0
    return float((2 * tp[seen] / (true[seen] + predicted[seen])).mean())


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """top-1, balanced accuracy, macro-F1, per-class accuracy, confusion matrix, ECE; top-5 above five classes
    (at five or fewer it is 1.0 by construction) and ROC AUC for two classes (it reads the scores, not only
    their argmax). ``skewed``: whether the labels are (:func:`is_skewed`): summaries then show the balanced
    accuracy and macro-F1 beside top-1."""
    k = logits.shape[1]
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    n = len(labels)
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    per_class_total = confusion.sum(1).clamp_min(1)
    report: dict[str, Any] = {
        "n": n,
        "top1": float((pred == labels).float().mean()) if n else float("nan"),
        "balanced_accuracy": balanced_accuracy(pred, labels),
        "macro_f1": macro_f1(pred, labels),
        "skewed": is_skewed(labels),
        "per_class": {classes[c] if c < len(classes) else str(c): float(confusion[c, c] / per_class_total[c])
                      for c in range(k)},
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(probs, labels) if n else float("nan"),
    }
    if k > 5:
        top5 = logits.topk(5, dim=1).indices
        report["top5"] = float((top5 == labels.view(-1, 1)).any(1).float().mean()) if n else float("nan")
    if k == 2:
        report["roc_auc"] = roc_auc(probs[:, 1], labels == 1)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line of a :func:`classification_report`: top-1, balanced accuracy and macro-F1 when the labels are
    skewed, then top-5 or ROC AUC where they apply, ECE, n."""
    parts = [f"top-1 {report['top1']:.4f}"]
    if report.get("skewed"):
        parts += [f"balanced acc {report['balanced_accuracy']:.4f}", f"macro-F1 {report['macro_f1']:.4f}"]
    parts += [f"{name} {report[key]:.4f}" for key, name in (("top5", "top-5"), ("roc_auc", "ROC AUC"))
              if key in report]
    return "  ".join([*parts, f"ECE {report['ece']:.4f}", f"n={report['n']}"])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    keep = labels >= 0
    return float((logits[keep].argmax(1) == labels[keep]).float().mean()) if keep.any() else float("nan")


def extract_features(model: nn.Module, images: ImageSet, indices: torch.Tensor | None = None, *,
                     device: torch.device | str = "cpu", batch_size: int = 512, embedding: bool = True) -> torch.Tensor:
    """Representations of ``images[indices]``, float32 on the CPU: the embedding the model carries
    (``model.embed``: a pre-training method's own, e.g. PAWS's projector output, as the reference's
    ``snn_eval.py`` classifies) when ``embedding`` is set and the model has one, else the pooled features
    (``model.features``)."""
    fn = getattr(model, "embed", None) if embedding else None
    fn = fn or model.features  # type: ignore[operator]
    out = _batched(lambda x: fn(x).float().cpu(), model, images, indices, device, batch_size)  # type: ignore[operator]
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-nearest-neighbour accuracy on frozen features (Wu et al. 2018; as used by DINO):
    cosine similarity, the k most similar bank samples vote with weight exp(sim / T)."""
    bank = torch.nn.functional.normalize(bank, dim=1)
    queries = torch.nn.functional.normalize(queries, dim=1)
    num_classes = int(bank_labels.max()) + 1
    k = min(k, len(bank))
    sims, idx = (queries @ bank.T).topk(k, dim=1)
    votes = torch.zeros(len(queries), num_classes).scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == query_labels).float().mean())


def snn_probs(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
              tau: float = 0.1, chunk: int = 4096) -> torch.Tensor:
    """Soft nearest-neighbour class probabilities over a labeled bank (PAWS, Assran et al. 2021, Eq. 1):
    π(z) = Σ_i softmax_i(cos(z, z_i) / τ) · onehot(y_i). Used to evaluate and to predict after PAWS."""
    from semivit.methods.losses import snn

    onehot = torch.nn.functional.one_hot(bank_labels, num_classes).float()
    return torch.cat([snn(queries[i:i + chunk], bank, onehot, tau) for i in range(0, len(queries), chunk)])


def snn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             tau: float = 0.1) -> float:
    """Accuracy of the soft nearest-neighbour classifier (:func:`snn_probs`) on frozen features."""
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    probs = snn_probs(bank, bank_labels, queries, num_classes, tau)
    return float((probs.argmax(1) == query_labels).float().mean())


def linear_probe_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                      test_y: torch.Tensor) -> float:
    """Accuracy of a logistic-regression classifier fitted on frozen, standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(((train_x - mean) / std).numpy(), train_y.numpy())
    return float(clf.score(((test_x - mean) / std).numpy(), test_y.numpy()))


def standardised(train_x: torch.Tensor, *others: torch.Tensor) -> list[Any]:
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    return [((x - mean) / std).numpy() for x in (train_x, *others)]


def label_spreading_top1(pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                         neighbours: int = 10, alpha: float = 0.2) -> float:
    """Label spreading (Zhou et al. 2004) over a k-NN graph of frozen features: ``pool_y`` is −1 for the
    unlabeled images; the spread labels then classify the test images (scikit-learn's ``LabelSpreading``,
    its k-NN kernel). A transductive semi-supervised baseline for heads on cached features."""
    from sklearn.semi_supervised import LabelSpreading

    pool, test = standardised(pool_x.float(), test_x.float())
    model = LabelSpreading(kernel="knn", n_neighbors=neighbours, alpha=alpha, max_iter=100)
    model.fit(pool, pool_y.numpy())
    return float((torch.from_numpy(model.predict(test)) == test_y).float().mean())


def self_training_top1(pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       threshold: float = 0.9, max_iter: int = 5) -> float:
    """Self-training (Yarowsky 1995; scikit-learn's ``SelfTrainingClassifier``) of a logistic regression on
    frozen features: fit on the labels, add the unlabeled images predicted with probability ≥ ``threshold``
    as labels, refit, ``max_iter`` rounds. ``pool_y`` is −1 for the unlabeled images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    pool, test = standardised(pool_x.float(), test_x.float())
    model = SelfTrainingClassifier(LogisticRegression(max_iter=300), threshold=threshold, max_iter=max_iter)
    model.fit(pool, pool_y.numpy())
    return float((torch.from_numpy(model.predict(test)) == test_y).float().mean())
