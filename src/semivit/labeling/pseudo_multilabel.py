"""``semivit pseudolabels`` of a multi-label run: each unlabeled image's label set, for a person to review.

Each class is a yes/no question. A class is *settled* when the teacher's probability is at least τ⁺ (the run's
``method.threshold``: a confident 'yes') or at most τ⁻ (``multilabel.negative_threshold``: a confident 'no'),
as the run's own pseudo-labels are (UPS, :mod:`semivit.methods.multilabel`); the others are *unsure*. The CSV
(least confident first) holds ``path, labels, unsure, confidence, passes, keep``: ``labels`` is the set at the
model's decision thresholds (chosen on validation), ``unsure`` the classes a person should look at, ``passes``
whether every class is settled, and ``keep`` starts as ``yes`` for those. ``--accept`` reads ``labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semivit.labeling.merge import merged_name
from semivit.labeling.pool import Pool, run_teacher_probs, write_table
from semivit.labeling.suggest import display_names, teacher_of
from semivit.report.runs import run_config


@dataclass
class MultiLabelPseudo:
    """The teacher's probabilities for each candidate (rows in ``indices`` order, least confident first)."""

    indices: np.ndarray
    probs: np.ndarray
    decision: np.ndarray  # each class's decision threshold
    positive: float  # τ⁺
    negative: float  # τ⁻

    @property
    def present(self) -> np.ndarray:
        return self.probs >= self.decision

    @property
    def unsure(self) -> np.ndarray:
        return (self.probs < self.positive) & (self.probs > self.negative)

    @property
    def passes(self) -> np.ndarray:
        return ~self.unsure.any(1)

    @property
    def confidence(self) -> np.ndarray:
        """The image's least settled class: min over classes of |2p − 1|."""
        return np.abs(2 * self.probs - 1).min(1)


def multilabel_pseudo_labels(pool: Pool, threshold: float | None, device: str) -> MultiLabelPseudo:
    """Predict every candidate with the run's teacher; ``threshold`` overrides τ⁺."""
    from semivit.labeling.pseudo import DEFAULT_THRESHOLD, run_threshold

    teacher = teacher_of(pool)
    assert teacher is not None and pool.run_dir is not None
    tau = threshold if threshold is not None else run_threshold(pool)
    probs = run_teacher_probs(pool, teacher, device)[pool.candidates]
    out = MultiLabelPseudo(pool.candidates, probs, np.array(teacher.spec.decision_thresholds()),
                           DEFAULT_THRESHOLD if tau is None else float(tau),
                           run_config(pool.run_dir).multilabel.negative_threshold)
    order = np.argsort(out.confidence, kind="stable")  # least confident first: where review pays off
    return MultiLabelPseudo(out.indices[order], probs[order], out.decision, out.positive, out.negative)


def write_multilabel_csv(pool: Pool, p: MultiLabelPseudo, path: str | Path) -> Path:
    """``path,labels,unsure,confidence,passes,keep``, least confident first."""
    names, present, unsure, passes, conf = display_names(pool), p.present, p.unsure, p.passes, p.confidence
    return write_table(path, ["path", "labels", "unsure", "confidence", "passes", "keep"], (
        [names[i], pool.set_name(present[n]), pool.set_name(unsure[n]), f"{conf[n]:.4f}",
         "yes" if passes[n] else "no", "yes" if passes[n] else ""] for n, i in enumerate(p.indices)))


def multilabel_review_summary(pool: Pool, p: MultiLabelPseudo) -> dict[str, float] | None:
    """Against hidden labels (a simulation on a labeled set): the share of images whose whole set is right, of
    those that pass, and the accuracy of the settled (image, class) answers. None without hidden labels."""
    truth = pool.train.labels[torch.from_numpy(p.indices)].numpy()
    if len(truth) == 0 or (truth < 0).any():
        return None
    exact = (p.present == (truth == 1)).all(1)
    settled = ~p.unsure
    right = (p.probs >= p.positive) == (truth == 1)
    out = {"set_accuracy": float(exact.mean()), "passing": float(p.passes.mean()),
           "settled_share": float(settled.mean())}
    if settled.any():
        out["settled_accuracy"] = float(right[settled].mean())
    if p.passes.any():
        out["passing_set_accuracy"] = float(exact[p.passes].mean())
    return out


def write_multilabel_sheet(pool: Pool, p: MultiLabelPseudo, path: str | Path, per_class: int = 120) -> Path:
    """An HTML contact sheet, one section per class with the images predicted to show it, least confident first
    (an image appears under each of its classes); images with an unsure class are framed in amber."""
    from semivit.labeling.pseudo import sheet_page
    from semivit.report.html import esc, png_data_uri, tile

    names = display_names(pool)
    present, unsure, passes = p.present, p.unsure, p.passes
    sections = []
    for c in range(pool.train.num_classes):
        rows = np.nonzero(present[:, c])[0]
        if len(rows) == 0:
            continue
        shown = rows[:per_class]
        images = pool.train.get(torch.from_numpy(p.indices[shown]))
        tiles = [tile(png_data_uri(images[k]), f"{esc(Path(names[p.indices[n]]).name)}<br>p {p.probs[n, c]:.2f} · "
                      f"{esc(pool.set_name(present[n]))}" + (f"<br>unsure: {esc(pool.set_name(unsure[n]))}"
                                                            if unsure[n].any() else ""),
                      "" if passes[n] else "warn", title=names[p.indices[n]]) for k, n in enumerate(shown)]
        name = pool.class_name(c)
        sections.append((f"class-{c}", name, len(rows), f"{esc(name)}: {len(rows)} images, "
                         f"{int(passes[rows].sum())} with every class settled", tiles))
    intro = (f"<p>{len(p.indices)} unlabeled images with several labels each; {int(passes.sum())} have every class "
             f"settled (p ≥ τ⁺ = {p.positive:g} or ≤ τ⁻ = {p.negative:g}; amber frames: some class unsure). Correct "
             "<code>labels</code> (<code>a|b</code>) or set <code>keep</code> in the CSV, then <code>semivit "
             f"pseudolabels RUN --accept reviewed.csv -o {merged_name(pool)}</code>.</p>")
    return sheet_page(pool, path, intro, sections)
