"""``runs/NAME/report.html``: what a person reads after a run — learning curves, per-class accuracy, the
confusion matrix, a reliability diagram with ECE, a ROC curve for two classes, test images with their
predictions (mistakes first), the resolved config and the labels used. One file, images inline, no
network: it opens from disk. A recipe's folder gets one section per stage."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from semivit.engine.evaluate import summary_line
from semivit.errors import SemivitError
from semivit.report.html import esc, figure_data_uri, grid, page, plot_img, png_data_uri, table, tile
from semivit.report.multilabel import multilabel_section
from semivit.report.outliers import outlier_section
from semivit.report.plots import (
    confusion_figure,
    curve_figures,
    per_class_figure,
    read_metrics,
    reliability_figure,
    roc_figure,
)

__all__ = ["render_sections", "run_section", "write_report", "write_report_or_warn"]

log = logging.getLogger("semivit")

#: at most this many test images in the grid (mistakes first)
GRID_IMAGES = 48
#: results.json entries shown in a run's summary table, in this order
SUMMARY_KEYS = ("method", "steps", "test_top1", "test_map", "test_micro_f1", "test_balanced_accuracy",
                "test_macro_f1", "test_top5", "test_ece", "test_roc_auc", "test_knn_top1", "test_linear_top1",
                "test_snn_top1", "val_top1", "best_val_top1", "val_map", "best_val_map", "best_step",
                "train_seconds", "images_per_sec")


def _run_dirs(root: Path) -> list[Path]:
    from semivit.report.runs import stage_folders

    if (root / "config.yaml").is_file():
        return [root]
    stages = stage_folders(root)
    if not stages:
        raise SemivitError(f"'{root}' is not a run folder (no config.yaml, no stage folders): pass runs/NAME")
    return stages


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class _Data:
    """Test parts loaded once per data setting (a recipe's stages share their data)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def bundle(self, cfg: Any) -> Any:
        from semivit.data.sources import load_source

        d = cfg.data
        key = json.dumps([d.source, d.test, d.unlabeled, d.image_size, d.root])
        if key not in self._cache:
            self._cache[key] = load_source(d.source, test=d.test, unlabeled=d.unlabeled, root=d.root, download=False,
                                           image_size=d.image_size, on_corrupt="skip")
        return self._cache[key]

    def test_part(self, cfg: Any) -> Any:
        return self.bundle(cfg).test


def _evaluation(run_dir: Path, cfg: Any, data: _Data, device: str) -> str:
    """Per-class accuracy, confusion matrix, reliability diagram (ECE), ROC (two classes) and the grid of
    test images with predictions, from the run's final model on its test part."""
    from semivit.engine.checkpoint import load_model, read_spec
    from semivit.engine.evaluate import classification_report, predict_logits
    from semivit.engine.stage_eval import test_report_of
    from semivit.report.runs import check_model_fits, trains_classifier

    if not trains_classifier(cfg.train.method):
        return ("<p class='note'>A pre-training stage: its classifier head is untrained, so it is judged by the "
                "k-NN / linear-probe / soft nearest-neighbour top-1 of its frozen features above.</p>")
    model_file = run_dir / "checkpoints" / "model.safetensors"
    if not model_file.is_file():
        return "<p class='note'>No checkpoints/model.safetensors: the run has not finished.</p>"
    test = data.test_part(cfg)
    if test is None or len(test) == 0 or not bool((test.labels >= 0).any()):
        return "<p class='note'>The data has no labeled test part (pass --test to train), so no test evaluation.</p>"
    saved = test_report_of(run_dir)
    if test.multilabel:
        return multilabel_section(saved, test, GRID_IMAGES)
    keep = torch.nonzero(test.labels >= 0).flatten()
    if saved is not None and len(saved.get("predictions", {}).get("pred", [])) == len(test):
        # the one test pass the run made (engine/stage_eval.py): read, not predicted again
        rep, shown = saved, saved["predictions"]
        classes = list((read_spec(str(model_file)) or {}).get("classes") or test.classes)
        conf, pred = torch.tensor(shown["confidence"])[keep], torch.tensor(shown["pred"])[keep]
        positive = torch.tensor(shown["positive"])[keep] if "positive" in shown else None
    else:  # a run from before test_report.json held predictions
        model, _ = load_model(model_file)
        check_model_fits(model, test, str(run_dir))
        logits = predict_logits(model, test, device=device)
        classes = list(model.spec.classes or test.classes)
        rep = classification_report(logits, test.labels, classes)
        probs = logits[keep].softmax(1)
        conf, pred = probs.max(1)
        positive = probs[:, 1] if probs.shape[1] == 2 else None
    truth = test.labels[keep]
    correct = (pred == truth).numpy()
    figs = [("per-class accuracy", per_class_figure(rep["per_class"])),
            ("confusion matrix", confusion_figure(rep["confusion"], classes)),
            ("reliability diagram", reliability_figure(conf.numpy(), correct, rep["ece"]))]
    if "roc_auc" in rep:
        assert positive is not None
        figs.append(("ROC curve", roc_figure(positive.numpy(), (truth == 1).numpy(), rep["roc_auc"], classes[1])))
    plots = "".join(plot_img(figure_data_uri(fig), title) for title, fig in figs)
    line = f"<p>test {esc(summary_line(rep))}</p>"
    # mistakes first (most confident mistakes first: the ones worth a look), then right answers; at most
    # two thirds of the grid are mistakes, so a weak model's page still shows what it gets right
    ranked = sorted(range(len(keep)), key=lambda i: (bool(correct[i]), -float(conf[i])))
    n_wrong = int((~correct.astype(bool)).sum())
    shown_wrong = min(n_wrong, GRID_IMAGES * 2 // 3)
    right = ranked[n_wrong:n_wrong + GRID_IMAGES - shown_wrong]
    # few right answers: further mistakes fill the grid
    order = ranked[:min(n_wrong, GRID_IMAGES - len(right))] + right
    images = test.get(keep[order])
    tiles = [tile(png_data_uri(images[n]), f"pred <b>{esc(classes[int(pred[i])])}</b> {float(conf[i]):.2f}"
                  f"<br>true {esc(classes[int(truth[i])])}", "" if correct[i] else "bad", title=test.ids[int(keep[i])])
             for n, i in enumerate(order)]
    return (line + f"<div class='plots'>{plots}</div>"
            + f"<h3>test images ({n_wrong} mistakes of {len(correct)}; mistakes first, red frames)</h3>" + grid(tiles))


def run_section(run_dir: Path, title: str | None = None, data: Any = None, device: str = "cpu",
                level: int = 2) -> str:
    """The HTML section of one run folder (``config.yaml``, ``metrics.csv``, ``results.json``,
    ``split.json``, ``checkpoints/model.safetensors``)."""
    from semivit.data.splits import describe_label_counts
    from semivit.report.runs import run_config

    data = data or _Data()
    cfg = run_config(run_dir)
    results_file, split_file = run_dir / "results.json", run_dir / "split.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    h, sub = f"h{level}", f"h{level + 1}"
    parts = [f"<{h} class='run'>{esc(title or run_dir.name)}</{h}>",
             f"<p class='note'>{esc(run_dir)} · method {esc(cfg.train.method)} · data {esc(cfg.data.source)} · "
             f"model {esc(cfg.model.name)}</p>"]
    counts = results if "labels_total" in results else split if "labels_total" in split else None
    if counts:
        parts.append(f"<p>{esc(describe_label_counts(counts))}; {split.get('num_train', '?')} training images, "
                     f"the rest unlabeled for the method.</p>")
    shown = [(k, _fmt(results[k])) for k in SUMMARY_KEYS if results.get(k) is not None]
    parts.append(f"<{sub}>summary</{sub}>" + (table(["metric", "value"], shown) if shown
                                                else "<p class='note'>No results.json: the run has not finished.</p>"))
    rows = read_metrics(run_dir / "metrics.csv")
    curves = "".join(plot_img(figure_data_uri(fig), t) for t, fig in curve_figures(rows))
    parts.append(f"<{sub}>learning curves</{sub}>"
                 + (f"<div class='plots'>{curves}</div>" if curves else "<p class='note'>No metrics logged.</p>"))
    parts.append(f"<{sub}>test evaluation</{sub}>" + _evaluation(run_dir, cfg, data, device))
    if (run_dir / "outlier_scores.csv").is_file():  # an openmatch run: what the pool holds beyond the classes
        parts.append(f"<{sub}>images that look like none of your classes</{sub}>"
                     + outlier_section(run_dir, data.bundle(cfg).train, GRID_IMAGES))
    config_text = (run_dir / "config.yaml").read_text()
    parts.append(f"<{sub}>resolved config</{sub}><pre>{esc(config_text)}</pre>")
    return f"<section class='run-section'>{''.join(parts)}</section>"


def render_sections(root: Path, device: str = "cpu", data: Any = None) -> str:
    """The body of ``root``'s report: one section, or for a recipe a stage table and one section per stage."""
    dirs = _run_dirs(root)
    data = data or _Data()
    if len(dirs) == 1 and dirs[0] == root:
        return run_section(root, data=data, device=device)
    rows = []
    for d in dirs:
        r = json.loads((d / "results.json").read_text()) if (d / "results.json").is_file() else {}
        rows.append([d.name, r.get("steps", ""), _fmt(r["test_top1"]) if r.get("test_top1") is not None else "",
                     _fmt(r["best_val_top1"]) if r.get("best_val_top1") is not None else ""])
    body = ["<h2>stages</h2>" + table(["stage", "steps", "test top-1", "best val top-1"], rows)]
    body += [run_section(d, title=f"stage {k}: {d.name}", data=data, device=device) for k, d in enumerate(dirs, 1)]
    return "".join(body)


def write_report(run: str | Path, out: str | Path | None = None, device: str | None = "cpu") -> Path:
    """Render ``run``'s report (a run folder or a recipe's) to ``out`` (default ``RUN/report.html``)."""
    from semivit.report.runs import resolve_device

    root = Path(run).expanduser()
    if not root.is_dir():
        raise SemivitError(f"run '{run}' not found: pass a run folder (runs/NAME)")
    dirs = _run_dirs(root)
    if device is None:  # at the end of a run: where it trained
        from semivit.report.runs import run_config

        device = run_config(dirs[-1]).train.device
    body = render_sections(root, resolve_device(device))
    path = Path(out) if out else root / "report.html"
    path.write_text(page(f"semivit report: {root.name}", f"<h1>semivit report: {esc(root.name)}</h1>{body}"))
    return path


def write_report_or_warn(run_dir: Path) -> Path | None:
    """:func:`write_report` at the end of ``train``/``run`` (rank 0 only); a failure is a warning, never an
    error: the run's results are already saved."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    root = run_dir.parent if run_dir.name.startswith("stage") and not (run_dir.parent / "config.yaml").exists() \
        else run_dir
    try:
        path = write_report(root, device=None)
    except Exception as e:  # noqa: BLE001 - a report must never fail a finished run
        log.warning("semivit: could not write the report for %s (%s: %s); retry with: semivit report %s",
                    root, type(e).__name__, e, root)
        return None
    log.info("report: %s", path)
    return path


