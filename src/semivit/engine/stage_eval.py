"""A stage's judgements: validation during training, the method's own validation hook, and the one final
pass over the test set that writes ``results.json`` and ``test_report.json`` (the report and ``semivit
evaluate`` read that file instead of predicting the test set again).

Models that train a classifier are judged by their top-1; pre-training methods (no trained classifier) by
the k-NN top-1 of their frozen features, with the labeled images as the memory bank.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semivit.core.distributed import DistInfo, barrier
from semivit.core.io import atomic_write_json
from semivit.engine.checkpoint import export_weights
from semivit.engine.evaluate import classification_report, knn_top1, linear_probe_top1, snn_top1, top1
from semivit.engine.inputs import StageInputs, has_test
from semivit.engine.logger import RunLogger
from semivit.engine.multilabel_eval import choose_thresholds, mean_ap, multilabel_report
from semivit.errors import SemivitError


class StageEvaluation:
    """Validation and the final test pass of one stage; rank 0 writes, every rank waits for it."""

    def __init__(self, inputs: StageInputs, dist: DistInfo, ckpt_dir: Path, pretraining: bool,
                 export_meta: dict[str, Any], complete: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.inputs, self.dist, self.ckpt_dir = inputs, dist, ckpt_dir
        self.complete = complete  # the method's additions to an exported model (Method.complete_export)
        self.pretraining, self.export_meta = pretraining, export_meta
        self.split = inputs.data.split
        # multi-label data: judged by mAP, and each class's threshold chosen on the validation split
        self.multilabel = inputs.data.train.multilabel
        self.score = "map" if self.multilabel else "top1"
        self.thresholds: list[float] = [0.5] * inputs.data.train.num_classes if self.multilabel else []
        self._last_val: tuple[torch.Tensor, torch.Tensor] | None = None  # multi-label: the latest validation pass

    def exported(self, net: nn.Module) -> nn.Module:
        """The model to save (or hand back) for ``net``; a multi-label one carries the decision thresholds chosen on
        the latest validation pass (predict and ONNX apply them), computed here, when a model is exported."""
        model = self.inputs.exportable(net)
        if self.complete is not None:
            model = self.complete(model)
        if self.multilabel:
            if self._last_val is not None:
                self.thresholds, self._last_val = choose_thresholds(*self._last_val), None
            model.spec.thresholds = list(self.thresholds)
        return model

    def _export(self, net: nn.Module, name: str) -> None:
        model = self.exported(net)
        export_weights(model, self.ckpt_dir / name, model.spec.to_dict(), self.export_meta)

    def _score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1, or on multi-label data the mAP (the logits are kept for the thresholds of the next export)."""
        if not self.multilabel:
            return top1(logits, labels)
        self._last_val = (logits, labels)
        return mean_ap(logits, labels)

    def validate(self, net: nn.Module, step: int, progress: dict, logger: RunLogger) -> float | None:
        """Top-1 on the validation split (rank 0); keeps the best weights as best.safetensors."""
        return self._validate(net, step, progress, logger)[0]

    def _validate(self, net: nn.Module, step: int, progress: dict,
                  logger: RunLogger) -> tuple[float | None, dict[str, torch.Tensor]]:
        """:meth:`validate`, also returning each head's validation logits (one pass gives all heads)."""
        heads: dict[str, torch.Tensor] = {}
        if not self.dist.is_main or len(self.split.val) == 0:
            barrier()
            return None, heads
        if self.pretraining:
            acc, _ = self.knn(net, "val")
            logger.log(step, {"knn_top1": acc}, prefix="val")
        else:
            heads = self.inputs.head_logits(net, "val")
            acc = self._score(next(iter(heads.values())), self.inputs.labels("val"))
            logger.log(step, {self.score: acc}, prefix="val")
        if acc > progress["best_val"]:
            progress["best_val"], progress["best_step"] = acc, step
            self._export(net, "best.safetensors")
        barrier()
        return acc, heads

    def method_validation(self, method: Any, step: int, logger: RunLogger) -> None:
        """Hand the method its model's logits on the validation split (every rank computes them, so a
        decision such as SSMAE's gate is the same everywhere). The test set is never used here."""
        if len(self.split.val) == 0:
            raise SemivitError(f"method '{method.name}' decides on a validation split, but it is empty: "
                               f"set data.val (e.g. 5-per-class)")
        values = method.on_validation(step, self.inputs.logits(method.eval_model(), "val"), self.inputs.labels("val"))
        if values:
            logger.log(step, values, prefix="gate")

    def knn(self, net: nn.Module, part: str, probe: bool = False) -> tuple[float, dict[str, float]]:
        """k-NN top-1 of ``part`` with the labeled set as the bank; with ``probe`` also a linear probe's and
        the soft nearest-neighbour classifier's (PAWS's) top-1. All read the embedding the method trained
        (``net.embed``: PAWS's projector output, as the reference's ``snn_eval.py``; the pooled features for
        methods without one)."""
        bank, feats = self.inputs.embeddings(net, "labeled"), self.inputs.embeddings(net, part)
        bank_y, query_y = self.inputs.labels("labeled"), self.inputs.labels(part)
        extra = ({"linear_top1": linear_probe_top1(bank, bank_y, feats, query_y),
                  "snn_top1": snn_top1(bank, bank_y, feats, query_y)} if probe else {})
        return knn_top1(bank, bank_y, feats, query_y), extra

    def _multilabel_test(self, net: nn.Module, step: int, metrics: dict[str, Any],
                          logger: RunLogger, run_dir: Path) -> None:
        """The test pass of a multi-label classifier: mAP, micro/macro F1 at the validation thresholds, per class."""
        logits, labels = self.inputs.logits(net, "test"), self.inputs.labels("test")
        report = multilabel_report(logits, labels, self.inputs.data.test.classes, self.thresholds)  # type: ignore
        report["predictions"] = {"probs": [[round(float(p), 4) for p in row] for row in logits.float().sigmoid()]}
        metrics.update(test_map=report["map"], test_micro_f1=report["micro_f1"], test_macro_f1=report["macro_f1"],
                       thresholds_from="validation" if len(self.split.val) else "0.5 (no validation split)")
        logger.log(step, {k: report[k] for k in ("map", "micro_f1", "macro_f1")}, prefix="test")
        atomic_write_json(run_dir / "test_report.json", report)

    def finish(self, net: nn.Module, step: int, progress: dict, logger: RunLogger, method: str,
               extra: dict[str, Any]) -> dict[str, Any]:
        """The last validation, the exported model, and one pass over the test set: ``results.json`` (the
        headline numbers) and ``test_report.json`` (per class, confusion, calibration, each head)."""
        val, heads = self._validate(net, step, progress, logger)
        best = progress["best_val"] if progress["best_val"] >= 0 else None
        metrics: dict[str, Any] = {"method": method, "steps": step,
                                   # labels training and validation each used (validation may add labels)
                                   **self.split.label_counts(), f"val_{self.score}": val,
                                   f"best_val_{self.score}": best,
                                   "best_step": progress.get("best_step"), "train_seconds": progress["seconds"],
                                   "images_per_sec": progress["images"] / max(progress["seconds"], 1e-9), **extra}
        if not self.dist.is_main:
            return metrics
        self._export(net, "model.safetensors")
        run_dir = self.ckpt_dir.parent
        if len(heads) > 1:  # a dual-stream model (Semiformer): each validation head alone, and fused
            labels = self.inputs.labels("val")
            accs = {k: top1(v, labels) for k, v in heads.items()}
            metrics.update({f"val_top1_{k}": v for k, v in accs.items()})
            logger.log(step, {f"top1_{k}": v for k, v in accs.items()}, prefix="val")
        if has_test(self.inputs) and self.multilabel:
            self._multilabel_test(net, step, metrics, logger, run_dir)
        elif has_test(self.inputs):
            heads = self.inputs.head_logits(net, "test")
            labels, classes = self.inputs.labels("test"), self.inputs.data.test.classes  # type: ignore[union-attr]
            main = next(iter(heads.values()))
            report = classification_report(main, labels, classes)
            report["predictions"] = predictions(main)
            # balanced accuracy and macro-F1 beside top-1 when the test classes are skewed (evaluate.is_skewed)
            skew = ("balanced_accuracy", "macro_f1") if report["skewed"] else ()
            metrics.update(test_top1=report["top1"], test_ece=report["ece"],
                           **{f"test_{k}": report[k] for k in ("top5", "roc_auc", *skew) if k in report})
            logger.log(step, {"top1": report["top1"], **{k: report[k] for k in skew}}, prefix="test")
            if len(heads) > 1:
                accs = {k: top1(v, labels) for k, v in heads.items()}
                report["heads"] = accs
                metrics.update({f"test_top1_{k}": v for k, v in accs.items()})
                logger.log(step, {f"top1_{k}": v for k, v in accs.items()}, prefix="test")
            if self.pretraining:  # representation quality: k-NN and a linear probe fitted on the labels
                knn, more = self.knn(net, "test", probe=True)
                metrics.update(test_knn_top1=knn, **{f"test_{k}": v for k, v in more.items()})
                report.update(knn_top1=knn, **more)
                logger.log(step, {"knn_top1": knn, **more}, prefix="test")
            atomic_write_json(run_dir / "test_report.json", report)
        (run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def predictions(logits: torch.Tensor) -> dict[str, list]:
    """Each test image's predicted class and its probability (and, with two classes, the probability of the
    second, for the ROC curve), in test-set order: what the HTML report draws without predicting again."""
    probs = logits.float().softmax(1)
    conf, pred = probs.max(1)
    out: dict[str, list] = {"pred": pred.tolist(), "confidence": [round(float(c), 5) for c in conf]}
    if probs.shape[1] == 2:
        out["positive"] = [round(float(c), 5) for c in probs[:, 1]]
    return out


def test_report_of(run_dir: Path) -> dict[str, Any] | None:
    """The test report a finished stage wrote (None for runs without a test set, or from older versions)."""
    path = Path(run_dir) / "test_report.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
