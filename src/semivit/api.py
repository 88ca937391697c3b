"""The Python surface: train, load, predict, evaluate, suggest, find label issues and export from a script or a
notebook, with the same settings, checks and run folders as the command line.

Examples:
    >>> import semivit
    >>> run = semivit.fit("digits", method="fixmatch", labels="4-per-class", steps=200)  # doctest: +SKIP
    >>> run.metrics["test_top1"]  # doctest: +SKIP
    >>> probs = run.predict(images)  # uint8 N×H×W(×C) or N×C×H×W, or float in [0, 1]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semivit.config import Config, apply_overrides
from semivit.errors import SemivitError

#: keyword arguments of :func:`fit` and the settings they stand for (any other setting: ``settings={...}``)
SHORTCUTS = {"labels": "data.labels", "test": "data.test", "unlabeled": "data.unlabeled", "val": "data.val",
             "split": "data.split", "steps": "train.steps", "epochs": "train.epochs", "batch_size": "train.batch_size",
             "seed": "train.seed", "device": "train.device", "out": "train.out", "name": "train.name",
             "resume": "train.resume", "overwrite": "train.overwrite", "progress": "train.progress",
             "lr": "optim.lr", "frozen": "features.frozen", "pretrained": "model.pretrained",
             "resolution": "model.resolution"}


@dataclass
class Run:
    """A finished training run: its folder, its results (``results.json``) and its evaluation model."""

    folder: Path
    metrics: dict[str, Any]
    model: nn.Module

    def predict(self, images: Any) -> torch.Tensor:
        return predict(self.model, images)


def _settings(method: str | None, model: Any, kwargs: dict[str, Any], settings: dict[str, Any] | None) -> dict:
    unknown = sorted(set(kwargs) - set(SHORTCUTS))
    if unknown:
        raise SemivitError(f"unknown argument(s) {', '.join(unknown)}: use {', '.join(SHORTCUTS)}, or "
                           f"settings={{'section.key': value}} for any other setting")
    out = {SHORTCUTS[k]: v for k, v in kwargs.items()}
    if method:
        out["train.method"] = method
    if isinstance(model, str):
        out["model.name"] = model
    return {**out, **(settings or {})}


def _data(data: Any, cfg: Config) -> Any:
    """A prepared data set from a source name or path, or from arrays: (x, y), (x, y, x_test, y_test) or a
    dict with x, y (or x_train, y_train) and optionally x_test, y_test, classes."""
    from semivit.data import prepare_data
    from semivit.data.sources.arrays import bundle_from_arrays

    if isinstance(data, (str, Path)):
        return None
    if isinstance(data, dict):
        x, y = data.get("x", data.get("x_train")), data.get("y", data.get("y_train"))
        bundle = bundle_from_arrays(x, y, data.get("x_test"), data.get("y_test"), data.get("classes"))
    elif isinstance(data, (tuple, list)) and len(data) in (2, 4):
        bundle = bundle_from_arrays(*data)
    else:
        raise SemivitError("data must be a source (a name, folder or file), (x, y), (x, y, x_test, y_test) or a "
                           "dict of arrays")
    return prepare_data(cfg.data, cfg.train.seed, bundle=bundle)


def fit(data: Any = "digits", method: str = "supervised", model: str | nn.Module | None = None, *,
        recipe: str | Path | dict | None = None, settings: dict[str, Any] | None = None,
        callbacks: tuple = (), budget: str | float | None = None, **kwargs: Any) -> Run:
    """Train ``method`` (or every stage of ``recipe``) on ``data`` and return the :class:`Run`.

    ``model``: a name (``vit_nano``, a timm name, ``local-dir:FOLDER``) or your own ``nn.Module`` mapping float
    images in [0, 1] (N×C×H×W) to logits, trained as it is. ``kwargs``: the shortcuts in :data:`SHORTCUTS`
    (``labels="4-per-class"``, ``steps=500``, ``frozen=True``, …); ``settings``: any other setting by its dotted
    key (``{"method.threshold": 0.8}``). ``callbacks``: :class:`~semivit.engine.callbacks.Callback` objects.
    ``budget`` (``"30m"`` or seconds): the steps planned to fit that wall-clock time, as ``--budget`` does;
    ``recipe="auto"`` with a pretrained ``model`` and a budget chooses the path and resolution
    (:mod:`semivit.path_choice`)."""
    import time

    from semivit.engine.trainer import Trainer

    start = time.perf_counter()
    seconds = None
    if budget is not None:
        from semivit.planning import parse_budget

        seconds = parse_budget(budget)
    values = _settings(None if recipe is not None else method, model, kwargs, settings)
    if isinstance(data, (str, Path)):
        values["data.source"] = str(data)
    if recipe is not None and isinstance(model, nn.Module):
        raise SemivitError("a recipe builds its models stage by stage: pass model as a name, or train your "
                           "module with fit(method=...)")
    if recipe == "auto":
        from semivit.path_choice import recipe_configs, run_auto

        result = run_auto(values, seconds, data=_data(data, recipe_configs("frozen-fixmatch", values)[0]))
        return Run(result.run_dir, result.metrics, result.model)
    if recipe is not None:
        from semivit.config import load_yaml
        from semivit.pipeline import find_recipe, run_stages, stage_configs

        spec = recipe if isinstance(recipe, dict) else load_yaml(find_recipe(recipe))
        name, configs = stage_configs(spec, values)
        prepared = _data(data, configs[0])
        root = Path(configs[0].train.out) / (configs[0].train.name or name)
        result = run_stages(configs, root, data=prepared, budget=seconds, start=start)
        return Run(result.run_dir, result.metrics, result.model)
    cfg = apply_overrides(Config(), values)
    prepared = _data(data, cfg)
    if seconds is not None:  # one stage, planned like a recipe's
        from semivit.planning import plan_one_stage

        cfg, prepared = plan_one_stage(cfg, prepared, seconds, start)
    own = None
    if isinstance(model, nn.Module):  # wrapping needs the data's classes, channels and size: load it now
        from semivit.data import prepare_data
        from semivit.models.factory import wrap_module

        prepared = prepared or prepare_data(cfg.data, cfg.train.seed)
        train = prepared.train
        own = wrap_module(model, train.num_classes, train.channels, train.image_size[0], train.classes)
    result = Trainer(cfg, prepared, model=own, callbacks=callbacks).fit()
    return Run(result.run_dir, result.metrics, result.model)


def load(path: str | Path) -> nn.Module:
    """The classifier of a run folder, a ``model.safetensors`` or a hub folder, in eval mode."""
    from semivit.export import find_model_file
    from semivit.models.hub_folder import is_hub_folder
    from semivit.models.io import load_model

    p = Path(path)
    model, _ = load_model(p if is_hub_folder(p) or p.is_file() else find_model_file(p))
    return model


def _float_images(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        x = images
    else:
        from semivit.data.sources.arrays import _images

        x = torch.from_numpy(np.ascontiguousarray(_images(np.asarray(images), "images", Path("<images>"))))
        x = x.float() / 255
    return x if x.dim() == 4 else x.unsqueeze(1)


@torch.no_grad()
def predict(model: nn.Module, images: Any, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N×K) of ``images``: uint8 N×H×W, N×H×W×C or N×C×H×W, or float N×C×H×W in [0, 1]. A
    multi-label model gives each class's own probability (sigmoid); ``model.spec.decision_thresholds()`` says
    where each class counts as present."""
    logits = _logits(model, images, batch_size)
    return logits.sigmoid() if _multilabel(model) else logits.softmax(1)


@torch.no_grad()
def outlier_scores(model: nn.Module, images: Any, batch_size: int = 256) -> torch.Tensor:
    """Each image's outlier score (N), from a model an ``openmatch`` run exported: 1 − p⁺ of the predicted class's
    one-vs-all head; ≥ 0.5 looks like none of the model's classes (:mod:`semivit.models.outlier`)."""
    from semivit.models.outlier import model_outlier_scores

    return _batched(lambda x: model_outlier_scores(model, x)[1], model, images, batch_size)


@torch.no_grad()
def _logits(model: nn.Module, images: Any, batch_size: int = 256) -> torch.Tensor:
    return _batched(model, model, images, batch_size)


def _batched(fn: Any, model: nn.Module, images: Any, batch_size: int) -> torch.Tensor:
    """``fn`` over ``images`` in batches, ``model`` in eval mode meanwhile (its mode restored after)."""
    x = _float_images(images)
    was = model.training
    model.eval()
    try:
        return torch.cat([fn(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def _multilabel(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "spec", None), "multilabel", False))


def evaluate(model: nn.Module | str | Path, images: Any, labels: Any) -> dict[str, Any]:
    """The classification report (top-1, per class, confusion, ECE; top-5 / ROC AUC where they apply) of a
    model (or a run folder) on arrays of images and labels."""
    from semivit.engine.evaluate import classification_report

    net = load(model) if isinstance(model, (str, Path)) else model
    logits = _logits(net, images)
    classes = list(getattr(getattr(net, "spec", None), "classes", None) or [str(i) for i in range(logits.shape[1])])
    if _multilabel(net):  # labels N×C of 0/1: mAP and F1 at the model's thresholds
        from semivit.engine.multilabel_eval import multilabel_report

        return multilabel_report(logits, torch.as_tensor(np.asarray(labels)), classes, net.spec.decision_thresholds())
    return classification_report(logits, torch.as_tensor(np.asarray(labels)).long(), classes)


def suggest(data: str = "digits", budget: int = 10, *, labels: str = "0", run: str | None = None,
            strategy: str = "auto", seed: int = 0) -> list[str]:
    """The ``budget`` images of ``data`` to label next (their ids, in choice order), as ``semivit suggest``."""
    from semivit.labeling.pool import pool_from_data, pool_from_run
    from semivit.labeling.suggest import suggest as choose

    cfg = apply_overrides(Config(), {"data.source": str(data), "train.seed": seed})
    pool = pool_from_run(run) if run else pool_from_data(cfg, labels=labels)
    chosen = choose(pool, budget, strategy=strategy, seed=seed)
    return [pool.train.ids[int(i)] for i in chosen.indices]


def find_label_issues(data: str | None = "digits", *, run: str | Path | None = None, labels: str = "all",
               split: str | None = None, model: str | None = None, encoder: str | None = None, probs: str = "kfold",
               folds: int = 5, seed: int = 0, out: str | Path | None = None, settings: dict[str, Any] | None = None,
               **options: Any) -> Any:
    """The labeled images of ``data`` (or of the finished ``run``) whose given label is most likely wrong, as
    ``semivit labelcheck``: confident learning (Northcutt et al. 2021, through Cleanlab) on out-of-sample
    probabilities (``probs``: ``kfold`` over the labeled set on the features of ``model`` (a pretrained backbone),
    ``encoder`` (a run or hub folder, ``pixels``) or by default the run's model, else raw pixels; ``teacher``:
    the run's teacher on its validation images). Returns a :class:`~semivit.labelcheck.LabelIssues` (``ids``,
    ``indices``, ``given``, ``suggested``, ``quality``, worst first); with ``out``, also writes the CSV that
    ``semivit labelcheck --accept`` merges and its contact sheet. ``options``: ``rank_by``, ``filter_by``,
    ``device``.

    Examples:
        >>> issues = semivit.find_label_issues("digits", labels="all", seed=0)  # doctest: +SKIP
        >>> issues.ids[:3], issues.quality[:3]  # doctest: +SKIP
    """
    from semivit.labelcheck.output import write_csv, write_sheet
    from semivit.labelcheck.sources import check_labels, labeled_pool

    values: dict[str, Any] = {"data.labels": labels, "data.split": split, "train.seed": seed}
    if data is not None and not run:
        values["data.source"] = str(data)
    cfg = apply_overrides(Config(), {**{k: v for k, v in values.items() if v is not None}, **(settings or {})})
    pool, prepared = labeled_pool(cfg, str(run) if run else None)
    issues = check_labels(pool, prepared, probs=probs, model=model, encoder=encoder, folds=folds, seed=seed,
                          **options)
    if out is not None:
        write_sheet(pool, issues, Path(write_csv(pool, issues, out)).with_suffix(".html"))
    return issues


def compare(data: str, labels: str | None = None, *, model: str, budget: str | float | None = "30m",
            steps: int | None = None, seeds: list[int] | None = None, jobs: int = 1, **options: Any) -> dict[str, Any]:
    """``semivit compare``: the linear probe and fine-tuning on the labels alone against the semi-supervised
    paths, on ``data`` with the backbone ``model`` at one budget. ``options``: ``split``, ``test``, ``val``,
    ``resolution``, ``rows``, ``settings`` (``{"model.pretrained": FILE}``), ``out``, ``name``. Returns the
    folder, the markdown table and the one-line recommendation (read from validation accuracy only)."""
    from semivit.comparison import compare_suite, run_compare

    suite = compare_suite(str(data), labels, model=model, budget=budget, steps=steps, seeds=seeds, **options)
    folder, table, line = run_compare(suite, jobs=jobs)
    return {"folder": folder, "table": table, "recommendation": line}


def export(run: str | Path, fmt: str = "hub", out: str | Path | None = None) -> Path:
    """Export a run's classifier: ``hub`` (a timm-layout folder), ``onnx`` or ``torchscript``."""
    from semivit.export import export_run

    return export_run(run, fmt, out)[0]


def list_methods() -> list[str]:
    """The registered methods' names."""
    from semivit.methods import METHODS

    return sorted(METHODS)
