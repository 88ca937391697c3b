"""``semivit pseudolabels``: the run's teacher's label for every unlabeled image, for a person to review.

The CSV (least confident first) holds ``path, label, confidence, margin, passes, keep``: ``passes`` says
whether the confidence reaches the run's pseudo-label threshold τ (``method.threshold``, as FixMatch and
EMA-Teacher apply it), and ``keep`` starts as ``yes`` for those rows. A reviewer corrects ``label``, sets
``keep`` to yes or no, and ``--accept`` turns the kept rows into labels (:mod:`semivit.labeling.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semivit.errors import SemivitError
from semivit.labeling.merge import merged_name
from semivit.labeling.pool import Pool, run_teacher_probs, write_table
from semivit.labeling.suggest import OUTLIER_CUTOFF, display_names, outlier_scores, teacher_of
from semivit.report.runs import run_config

#: τ for runs whose method has no threshold (supervised, …): FixMatch's (Sohn et al. 2020)
DEFAULT_THRESHOLD = 0.95


@dataclass
class PseudoLabels:
    """The teacher's prediction for each candidate, least confident first."""

    indices: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    threshold: float
    #: each candidate's outlier score (an openmatch run), else None; ≥ 0.5 = looks like none of the classes
    outlier: np.ndarray | None = None

    @property
    def passes(self) -> np.ndarray:
        ok = self.confidence >= self.threshold
        return ok if self.outlier is None else ok & ~self.outside

    @property
    def outside(self) -> np.ndarray:
        """The candidates that look like none of the classes (all False without outlier scores)."""
        if self.outlier is None:
            return np.zeros(len(self.indices), dtype=bool)
        return self.outlier >= OUTLIER_CUTOFF


def run_threshold(pool: Pool) -> float | None:
    """The run's pseudo-label confidence threshold τ (``method.threshold``), or None when its method has
    none."""
    from semivit.methods import method_params

    assert pool.run_dir is not None
    cfg = run_config(pool.run_dir)
    params = method_params(cfg.train.method, cfg.method)
    value = getattr(params, "threshold", None)
    return float(value) if value is not None else None


def pseudo_labels(pool: Pool, threshold: float | None = None, device: str = "cpu") -> PseudoLabels:
    """Predict every candidate with the run's teacher; ``threshold`` overrides the run's τ."""
    teacher = teacher_of(pool)
    if teacher is None:
        raise SemivitError(f"'{pool.run_dir}' has no trained classifier (a pre-training run): pass a run of a "
                           "method that trains one (supervised, fixmatch, ema_teacher, ...)")
    tau = threshold if threshold is not None else run_threshold(pool)
    tau = DEFAULT_THRESHOLD if tau is None else tau
    probs = torch.from_numpy(run_teacher_probs(pool, teacher, device)[pool.candidates])
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    conf, label = probs.max(1)
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    order = np.argsort(conf.numpy(), kind="stable")  # least confident first: where review pays off
    scores = outlier_scores(pool)  # an openmatch run: its pseudo-labels are for the images it calls inliers
    outlier = None if scores is None else np.nan_to_num(scores[pool.candidates][order], nan=0.0)
    return PseudoLabels(pool.candidates[order], label.numpy()[order], conf.numpy()[order], margin.numpy()[order],
                        float(tau), outlier)


def review_summary(pool: Pool, p: PseudoLabels) -> dict[str, float] | None:
    """Against hidden labels (a simulation on a labeled set): accuracy of all pseudo-labels, of those that
    pass τ, and of the least and most confident tenth — whether the ordering points a reviewer at the
    mistakes. None when the candidates have no hidden labels."""
    truth = pool.train.labels[torch.from_numpy(p.indices)].numpy()
    if len(truth) == 0 or (truth < 0).any():
        return None
    right = truth == p.labels
    tenth = max(1, len(right) // 10)
    out = {"accuracy": float(right.mean()), "least_confident_tenth": float(right[:tenth].mean()),
           "most_confident_tenth": float(right[-tenth:].mean()), "passing": float(p.passes.mean())}
    if p.passes.any():
        out["passing_accuracy"] = float(right[p.passes].mean())
    return out


def write_csv(pool: Pool, p: PseudoLabels, path: str | Path) -> Path:
    """``path,label,confidence,margin,passes,keep``, least confident first."""
    names = display_names(pool)
    return write_table(path, ["path", "label", "confidence", "margin", "passes", "keep"], (
        [names[i], pool.class_name(int(p.labels[n])), f"{p.confidence[n]:.4f}", f"{p.margin[n]:.4f}",
         "yes" if p.passes[n] else "no", "yes" if p.passes[n] else ""] for n, i in enumerate(p.indices)))


def write_sheet(pool: Pool, p: PseudoLabels, path: str | Path, per_class: int = 120) -> Path:
    """An HTML contact sheet, one section per predicted class, least confident first (at most
    ``per_class`` images each; the CSV lists them all). Images under τ are framed in amber."""
    from semivit.report.html import esc, png_data_uri, tile

    names = display_names(pool)
    sections = []
    far = np.nonzero(p.outside)[0]
    if len(far):  # an openmatch run: its own sheet, most unfamiliar first, kept out of the class sections
        assert p.outlier is not None
        far = far[np.argsort(-p.outlier[far], kind="stable")]
        shown = far[:per_class]
        images = pool.train.get(torch.from_numpy(p.indices[shown]))
        tiles = [tile(png_data_uri(images[k]), f"{esc(Path(names[p.indices[n]]).name)}<br>outlier "
                      f"{p.outlier[n]:.2f} · guess {esc(pool.class_name(int(p.labels[n])))}", "warn",
                      title=names[p.indices[n]]) for k, n in enumerate(shown)]
        sections.append(("none", "none of your classes", len(far), f"images that look like none of your classes: "
                         f"{len(far)} (outlier score ≥ {OUTLIER_CUTOFF:g}; none passes)", tiles))
    for c in range(pool.train.num_classes):
        rows = np.nonzero((p.labels == c) & ~p.outside)[0]
        if len(rows) == 0:
            continue
        shown = rows[:per_class]
        images = pool.train.get(torch.from_numpy(p.indices[shown]))
        tiles = [tile(png_data_uri(images[k]),
                      f"{esc(Path(names[p.indices[n]]).name)}<br>conf {p.confidence[n]:.2f} · margin {p.margin[n]:.2f}",
                      "" if p.passes[n] else "warn", title=names[p.indices[n]]) for k, n in enumerate(shown)]
        name = pool.class_name(c)
        more = f" <span class='note'>(the {len(rows) - len(shown)} most confident are in the CSV only)</span>" \
            if len(rows) > len(shown) else ""
        sections.append((f"class-{c}", name, len(rows), f"{esc(name)}: {len(rows)} images, "
                         f"{int(p.passes[rows].sum())} pass τ{more}", tiles))
    intro = (f"<p>{len(p.indices)} unlabeled images, {int(p.passes.sum())} with confidence ≥ τ = {p.threshold:g} "
             "(amber frames: below τ). Least confident first in each class. Correct the <code>label</code> or set "
             "<code>keep</code> in the CSV, then <code>semivit pseudolabels RUN --accept reviewed.csv -o "
             f"{merged_name(pool)}</code>.</p>")
    return sheet_page(pool, path, intro, sections)


def sheet_page(pool: Pool, path: str | Path, intro: str, sections: list[tuple[str, str, int, str, list[str]]]) -> Path:
    """Write a pseudo-label contact sheet: ``intro``, a table of contents and its ``sections``, each (anchor,
    name, image count, heading HTML, tiles)."""
    from semivit.report.html import esc, grid, page

    title = f"pseudo-labels of {pool.run_dir}"
    toc = " · ".join(f"<a href='#{anchor}'>{esc(name)}</a> ({count})" for anchor, name, count, _, _ in sections)
    body = "".join(f"<h2 id='{anchor}'>{heading}</h2>" + grid(tiles) for anchor, _, _, heading, tiles in sections)
    path = Path(path)
    path.write_text(page(title, f"<h1>{esc(title)}</h1>{intro}<p>{toc}</p>{body}"))
    return path
