"""``semivit probe``: the baselines a practitioner tries first on a pretrained backbone — frozen features,
k-NN and a linear probe fitted on the labels alone — reported beside the semi-supervised rows.

Recent studies find these hard to beat on strong backbones, so every table that fine-tunes a pretrained
backbone should show them. The features are the backbone's pooled pre-logit features (or the embedding a
pre-training run exported, e.g. PAWS's projector); the split is the same seeded split ``train`` makes for
the same ``--data --labels --seed`` (or ``--split``), so the labels are the same images. Validation labels
are not used: nothing is tuned (k = 20, T = 0.07; logistic regression with scikit-learn's defaults).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from semivit.config import Config
from semivit.errors import SemivitError

log = logging.getLogger("semivit")


def _model_for(cfg: Config, data: Any, run: str | None) -> Any:
    from semivit.core.device import resolve_device
    from semivit.core.distributed import DistInfo
    from semivit.engine.checkpoint import load_model
    from semivit.engine.stage import build_model

    train = data.train
    if run:
        model, _ = load_model(run)
        if model.spec.in_chans != train.channels or model.spec.image_size != train.image_size[0]:
            raise SemivitError(f"the data is {train.channels}×{train.image_size[0]} px but '{run}' takes "
                               f"{model.spec.in_chans}×{model.spec.image_size} px: probe it on the data it was "
                               f"trained on, or set data.image_size")
        return model
    _require_pretrained(cfg)
    # the model a training run would start from: the same weights, normalisation and resolution rules
    return build_model(cfg, data, DistInfo(), resolve_device(cfg.train.device)).eval()


def _require_pretrained(cfg: Config) -> None:
    from semivit.models.pretrained import pretrained_source

    if pretrained_source(cfg.model.name, cfg.model.pretrained) == (False, None):
        raise SemivitError(f"model '{cfg.model.name}' has no pretrained weights to probe: pass a tagged timm name, "
                           f"hf-hub:ORG/NAME, local-dir:FOLDER, --pretrained hub|PATH, or a run folder")


def run_probe(cfg: Config, run: str | None = None, out: str | Path | None = None,
              semi: bool = False) -> dict[str, Any]:
    """k-NN and linear-probe top-1 on the test part of ``cfg.data`` from frozen features (with ``semi``, also
    label spreading and self-training over the unlabeled images); returns the metrics (and writes them as
    JSON to ``out``). A pretrained backbone's features come from the feature cache (data/features.py)."""
    from semivit.core.device import resolve_device
    from semivit.data import prepare_data
    from semivit.engine.evaluate import extract_features, knn_top1, linear_probe_top1

    data = prepare_data(cfg.data, cfg.train.seed)
    if data.test is None or not len(data.test):
        raise SemivitError(f"'{cfg.data.source}' has no test part to report on: pass --test PATH")
    labeled = data.split.labeled
    if len(labeled) == 0:
        raise SemivitError("no labeled images in the split: use --labels with at least 1 per class")
    device = resolve_device(cfg.train.device)
    start = time.perf_counter()
    pool = None
    if run:  # a trained model: the embedding it was trained for (e.g. PAWS's projector output)
        model = _model_for(cfg, data, run).to(device)
        with torch.no_grad():
            bank = extract_features(model, data.train, labeled, device=device)
            test = extract_features(model, data.test, device=device)
    else:  # a pretrained backbone: its cached features, shared with training runs (features.frozen)
        _require_pretrained(cfg)
        from semivit.core.distributed import DistInfo
        from semivit.engine.inputs import backbone_features

        _, feats = backbone_features(cfg, data, DistInfo(), device, views=0)
        pool, test = feats.train["none"].float(), feats.test.float()  # type: ignore[union-attr]
        bank = pool[labeled]
    seconds = time.perf_counter() - start
    bank_y, test_y = data.train.labels[labeled], data.test.labels
    if data.train.multilabel:
        metrics = _multilabel_probe(bank, bank_y, test, test_y, semi)
        metrics.update({"model": run or cfg.model.name, "features_seconds": seconds, **data.split.label_counts()})
        return _finish(metrics, out)
    metrics: dict[str, Any] = {
        "method": "probe", "model": run or cfg.model.name,
        "test_knn_top1": knn_top1(bank, bank_y, test, test_y),
        "test_linear_top1": linear_probe_top1(bank, bank_y, test, test_y),
        "feature_dim": int(bank.shape[1]), "features_seconds": seconds,
        **data.split.label_counts(),
    }
    if semi and pool is not None:  # the classic semi-supervised baselines on the same features
        from semivit.engine.evaluate import label_spreading_top1, self_training_top1

        pool_y = torch.full_like(data.train.labels, -1)
        pool_y[labeled] = bank_y  # validation images stay unlabeled: the probe reads no validation label
        metrics["test_label_spreading_top1"] = label_spreading_top1(pool, pool_y, test, test_y)
        metrics["test_self_training_top1"] = self_training_top1(pool, pool_y, test, test_y)
    return _finish(metrics, out)


def _multilabel_probe(bank: torch.Tensor, bank_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor,
                      semi: bool) -> dict[str, Any]:
    """The same two baselines for several labels per image, judged by test mAP: k-NN label shares and one
    logistic regression per class."""
    from semivit.engine.multilabel_eval import knn_scores, linear_probe_scores, mean_ap

    if semi:
        raise SemivitError("probe --semi (label spreading, self-training) takes one class per image; this data has "
                           "several: drop --semi")
    return {"method": "probe", "test_knn_map": mean_ap(knn_scores(bank, bank_y, test), test_y),
            "test_linear_map": mean_ap(linear_probe_scores(bank, bank_y, test), test_y),
            "feature_dim": int(bank.shape[1])}


def _finish(metrics: dict[str, Any], out: str | Path | None) -> dict[str, Any]:
    # the probe reads no validation label: only the training labels count as consumed
    metrics.update(val_labeled=0, labels_total=metrics["labeled"], val_from="none")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(metrics, indent=2))
    return metrics
