"""Where ``semivit labelcheck`` gets the labeled set and the out-of-sample probabilities it judges it by.

The labeled set is every label a run would consume: the training labels and the validation labels of the
same seeded split ``train`` makes for the same ``--data --labels --seed`` (or ``--split``), or a finished
run's ``split.json``. Its probabilities come from one of:

- ``kfold`` (the default): a logistic regression cross-validated over the labeled set
  (:func:`~semivit.labelcheck.check.out_of_sample_probs`) on the features of a pretrained backbone
  (``--model``: the feature cache ``semivit probe`` and ``features.frozen`` share), of a model
  (``--encoder`` RUN or hub folder; by default a RUN's own model), or of raw pixels (the default for a data
  source: tiny images only). A run's features were shaped by the very labels checked (its training labels
  taught them), so a mistake the run memorised can hide in them: a backbone that never saw these labels is
  the more honest choice where there is one;
- ``teacher``: a finished run's evaluation model (its EMA teacher where there is one) on the labeled images
  it never trained on — its validation split. Only those labels are checked.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from semivit.config import Config, apply_overrides
from semivit.errors import SemivitError
from semivit.labelcheck.check import (
    LabelIssues,
    find_issues,
    find_multilabel_issues,
    out_of_sample_multilabel_probs,
    out_of_sample_probs,
)
from semivit.labelcheck.choices import PROBS
from semivit.labeling.pool import Pool, label_of, load_encoder, pretrained_features
from semivit.labeling.select import normalize

log = logging.getLogger("semivit")

#: raw pixels as features only for images this small (8×8 digits, 28×28 grey): larger or colour images
#: group by colour and layout (see semivit.labeling.suggest)
PIXEL_SIDE = 28


def labeled_pool(cfg: Config, run: str | None = None) -> tuple[Pool, Any]:
    """The labeled set of ``cfg.data`` (or of the finished ``run``, read from its ``split.json``) as a
    :class:`~semivit.labeling.pool.Pool` whose ``known`` labels are the ones to check, and the prepared
    data (for the feature cache)."""
    from semivit.data import prepare_data
    from semivit.report.runs import run_config, run_folder

    run_dir = None
    if run:
        run_dir = run_folder(run)
        split = run_dir / "split.json"
        if not split.is_file():
            raise SemivitError(f"'{run_dir}' has no split.json: pass a finished run folder")
        # the run's data and split; the model settings are the command line's (e.g. model.resolution for
        # --model), not the run's: the run's own model is read from its checkpoint, never built from them
        defaults = {f"model.{k}": v for k, v in vars(Config().model).items()}
        cfg = apply_overrides(run_config(run_dir), {"data.split": str(split), **defaults, **_model_settings(cfg)})
    data = prepare_data(cfg.data, cfg.train.seed)
    known_idx = torch.cat([data.split.labeled, data.split.val])
    if len(known_idx) == 0:
        raise SemivitError("the split has no labeled images to check: pass --labels all (or N-per-class) or a "
                           "--split naming labeled images")
    known = {int(i): label_of(data.train, int(i)) for i in known_idx}
    everything = np.arange(len(data.train))
    candidates = everything[~np.isin(everything, known_idx.numpy())]
    pool = Pool(cfg, data.train, known, candidates, run_dir, data.test, val=data.split.val.numpy().astype(np.int64),
                val_from=data.split.val_from)
    return pool, data


def _model_settings(cfg: Config) -> dict[str, Any]:
    """The model settings the command line gave (``--model``, ``--set model.*``), to apply over a run's."""
    default = Config().model
    return {f"model.{k}": v for k, v in vars(cfg.model).items() if getattr(default, k) != v}


def labeled_features(pool: Pool, data: Any, *, model: str | None = None, encoder: str | None = None,
                     device: str = "cpu") -> tuple[np.ndarray, str]:
    """Features of the labeled images (rows in ``pool.labeled`` order) and what made them: the pretrained
    backbone ``model`` (cached), the model ``encoder`` (a run or hub folder, or ``pixels``), or by default
    the pool's run's model, else raw pixels."""
    idx = torch.from_numpy(pool.labeled)
    if model and model != "auto":
        from semivit.report.runs import resolve_device

        feats = pretrained_features(pool, model, resolve_device(device), data)
        return feats[idx].numpy(), f"{model} features (cached)"
    if encoder == "pixels" or (encoder is None and pool.run_dir is None):
        return pixel_features(pool, idx), "raw pixels"
    from semivit.engine.evaluate import extract_features

    net = load_encoder(pool, encoder)  # a run or hub folder, or by default the pool's run
    feats = extract_features(net, pool.train, idx, device=device, embedding=True).numpy()
    return normalize(feats), f"features of {encoder or pool.run_dir}"


def pixel_features(pool: Pool, idx: torch.Tensor) -> np.ndarray:
    """Raw pixels of the labeled images, one flat row each (:func:`out_of_sample_probs` standardises them).
    No PCA: the cross-validated regularisation copes with the dimensions, and on Fashion-MNIST's 100 labels
    (10% flipped) PCA to 50 dimensions cost 5–10 points of out-of-sample accuracy (raw 0.63–0.72)."""
    x = pool.train.get(idx)
    c, h, w = x.shape[1:]
    if c > 1 or max(h, w) > PIXEL_SIDE:
        log.warning("labelcheck: raw pixels of %dx%d %s images group them by colour and layout more than by "
                    "content: pass --model with a pretrained backbone (or --encoder RUN)", h, w,
                    "colour" if c > 1 else "grey")
    return x.reshape(len(idx), -1).float().numpy()


def check_labels(pool: Pool, data: Any, *, probs: str = "kfold", model: str | None = None,
                 encoder: str | None = None, folds: int = 5, seed: int = 0, rank_by: str = "self_confidence",
                 filter_by: str = "prune_by_noise_rate", device: str = "cpu") -> LabelIssues:
    """Flag the labeled images of ``pool`` whose given label is likely wrong: confident learning (Northcutt
    et al. 2021, through Cleanlab) on out-of-sample probabilities (see the module docstring for ``probs``);
    ``indices`` of the result are training-image indices, the same for the same ``seed``.

    Examples:
        >>> from semivit.config import Config, apply_overrides
        >>> pool, data = labeled_pool(apply_overrides(Config(), {"data.source": "digits"}))  # doctest: +SKIP
        >>> issues = check_labels(pool, data, encoder="pixels", seed=0)  # doctest: +SKIP
        >>> issues.ids[:3], issues.quality[:3]  # doctest: +SKIP
    """
    if probs not in PROBS:
        raise SemivitError(f"unknown --probs '{probs}': use {' or '.join(PROBS)}")
    rows, p, source = _teacher_probs(pool, device) if probs == "teacher" else (pool.labeled, None, "")
    multilabel = pool.train.multilabel
    given = [pool.known[int(i)] for i in rows] if multilabel else np.array([pool.known[int(i)] for i in rows])
    if p is None:  # k-fold: each label judged by a model fitted on the other folds
        x, what = labeled_features(pool, data, model=model, encoder=encoder, device=device)
        if multilabel:  # one logistic regression per class
            targets = (pool.train.labels[torch.from_numpy(np.asarray(rows))] == 1).numpy()
            p = out_of_sample_multilabel_probs(x, targets, folds, seed)
        else:
            p = out_of_sample_probs(x, given, folds, seed, num_classes=pool.train.num_classes)
        source = f"{folds}-fold logistic regression on {what}"
    log.info("labelcheck: %d labels, probabilities from %s", len(rows), source)
    find = find_multilabel_issues if multilabel else find_issues
    issues = find(given, p, rank_by=rank_by, filter_by=filter_by, source=source)  # type: ignore[operator]
    issues.indices = rows[issues.indices]
    issues.ids = [pool.train.ids[int(i)] for i in issues.indices]
    return issues


def _teacher_probs(pool: Pool, device: str) -> tuple[np.ndarray, np.ndarray, str]:
    from semivit.engine.evaluate import predict_logits
    from semivit.labeling.suggest import teacher_of

    if pool.run_dir is None:
        raise SemivitError("--probs teacher needs a finished run (its teacher on its validation images): pass "
                           "RUN, or use --probs kfold with --data")
    if len(pool.val) == 0:
        raise SemivitError(f"'{pool.run_dir}' has no validation images, the only labels its teacher did not "
                           "train on: use --probs kfold")
    teacher = teacher_of(pool)
    if teacher is None:
        raise SemivitError(f"'{pool.run_dir}' has no trained classifier (a pre-training run): use --probs kfold")
    rows = np.sort(pool.val)
    logits = predict_logits(teacher, pool.train, torch.from_numpy(rows), device=device)
    p = (logits.sigmoid() if teacher.spec.multilabel else logits.softmax(1)).numpy()
    return rows, p, f"the teacher of {pool.run_dir} on its {len(rows)} validation images"
