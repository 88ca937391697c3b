"""``semivit suggest``: the unlabeled images to label next, as a CSV and a contact sheet.

Cold start — no run, a run whose head is untrained (pre-training), or fewer than :data:`COLD_PER_CLASS`
labels per class — embeds the pool with a self-supervised encoder and picks typical, diverse images
(TypiClust, or ProbCover). Later rounds combine the run's teacher uncertainty with diversity. See
:mod:`semivit.labeling.select` for the rules and the papers they follow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import semivit.labeling.select as select
from semivit.errors import SemivitError
from semivit.labeling.pool import Pool, image_files, pool_embedding, run_teacher_probs, write_table
from semivit.report.runs import resolve_device, run_config, trains_classifier

log = logging.getLogger("semivit")

STRATEGIES = ("auto", "typiclust", "probcover", "uncertainty", "random")
UNCERTAINTIES = ("margin", "entropy")
DIVERSITIES = ("kmeans++", "kcenter")
#: below this many labels per class a teacher's uncertainty is not yet worth much: TypiClust's low-budget
#: regime (Hacohen et al. 2022, Fig. 1) holds to a few labels per class
COLD_PER_CLASS = 3


@dataclass
class Suggestion:
    """The chosen images in choice order: pool indices, what chose them, and the teacher's guesses."""

    indices: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    strategy: str
    guesses: list[str] | None = None
    confidences: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)


OUTLIERS = ("keep", "skip", "target")
#: an image is "like none of your classes" from this outlier score on (OpenMatch's inlier cut-off)
OUTLIER_CUTOFF = 0.5


def outlier_scores(pool: Pool) -> np.ndarray | None:
    """Each training image's outlier score from the run's ``outlier_scores.csv`` (an ``openmatch`` run writes
    one for every unlabeled image, and so does any run on cached features: ``train.outliers``; NaN for images it
    does not list), or None when the run has none."""
    import csv

    path = pool.run_dir / "outlier_scores.csv" if pool.run_dir is not None else None
    if path is None or not path.is_file():
        return None
    index = {image_id: i for i, image_id in enumerate(pool.train.ids)}
    out = np.full(len(pool.train), np.nan)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["id"] in index:
                out[index[row["id"]]] = float(row["outlier_score"])
    return out


def _outlier_candidates(pool: Pool, outliers: str) -> Pool:
    """``pool`` with its candidates narrowed: ``skip`` drops the images that look like none of the classes
    (outlier score ≥ 0.5), ``target`` keeps only those (to label what the classes miss: a new class?)."""
    from dataclasses import replace

    if outliers not in OUTLIERS:
        raise SemivitError(f"unknown outliers '{outliers}': use one of {', '.join(OUTLIERS)}")
    if outliers == "keep":
        return pool
    scores = outlier_scores(pool)
    if scores is None:
        raise SemivitError(f"outliers={outliers} needs a run's outlier scores (outlier_scores.csv in the run folder: "
                           f"an openmatch run, or any run on cached features); '{pool.run_dir}' has none")
    score = scores[pool.candidates]
    far = score >= OUTLIER_CUTOFF
    kept = pool.candidates[far if outliers == "target" else ~far]
    if outliers == "target":  # most unfamiliar first
        kept = kept[np.argsort(-scores[kept], kind="stable")]
    log.info("suggest: outliers=%s leaves %d of %d unlabeled images", outliers, len(kept), len(pool.candidates))
    if len(kept) == 0:
        raise SemivitError(f"outliers={outliers}: no unlabeled image is left to choose from")
    return replace(pool, candidates=np.sort(kept))


def teacher_of(pool: Pool) -> Any:
    """The run's evaluation model when it has a trained classifier (None for a data pool or a pre-training
    run, whose head was never trained)."""
    if pool.run_dir is None or not trains_classifier(run_config(pool.run_dir).train.method):
        return None
    from semivit.engine.checkpoint import load_model

    model, _ = load_model(pool.run_dir)
    return model.eval()


def suggest(pool: Pool, budget: int, *, strategy: str = "auto", encoder: str | None = None,
            uncertainty: str = "margin", diversity: str = "kmeans++", seed: int = 0, device: str = "cpu",
            min_distance: float | None = None, embedding: np.ndarray | None = None,
            outliers: str = "keep") -> Suggestion:
    """Choose ``budget`` images of ``pool.candidates`` to label next (distinct, unlabeled, no near-duplicate
    of a labeled image; the same seed gives the same images). ``embedding``: the pool's training images
    already embedded (one L2-normalised row per image of ``pool.train``, as :func:`embed` gives), so that a
    loop asking one pool many times embeds it once. ``outliers`` (a run of ``openmatch``): ``keep`` every
    candidate, ``skip`` the images that look like none of the classes, or ``target`` only those."""
    pool = _outlier_candidates(pool, outliers)
    if embedding is not None and len(embedding) != len(pool.train):
        raise SemivitError(f"the embedding has {len(embedding)} rows for {len(pool.train)} images: embed "
                           "the pool's own training images")
    if budget < 1:
        raise SemivitError(f"--budget is {budget}: ask for at least 1 image")
    for value, allowed, what in ((strategy, STRATEGIES, "--strategy"), (uncertainty, UNCERTAINTIES, "--uncertainty"),
                                 (diversity, DIVERSITIES, "--diversity")):
        if value not in allowed:
            raise SemivitError(f"unknown {what} '{value}': use one of {', '.join(allowed)}")
    budget = min(budget, len(pool.candidates))
    device = resolve_device(device)
    teacher = teacher_of(pool)
    probs = run_teacher_probs(pool, teacher, device) if teacher is not None else None
    labeled = pool.labeled
    if strategy == "auto":
        # training labels only: a run's validation labels never taught the teacher anything
        few = len(labeled) - len(pool.val) < COLD_PER_CLASS * max(1, pool.train.num_classes)
        strategy = "typiclust" if teacher is None or few else "uncertainty"
    if strategy == "uncertainty" and probs is None:
        raise SemivitError("--strategy uncertainty needs a run whose classifier was trained: pass a run of "
                           "supervised/fixmatch/ema_teacher/..., or use --strategy typiclust")
    if strategy == "random":
        chosen, scores, clusters = select.random_choice(labeled, pool.candidates, budget, seed)
    else:
        emb = embedding
        if emb is None:
            if encoder == "pixels":
                _warn_pixels(pool)
            own = strategy == "uncertainty" and encoder is None
            emb = pool_embedding(pool, encoder, teacher if own else None, device, seed)
        radius = select.duplicate_radius(emb, seed) if min_distance is None else float(min_distance)
        log.info("suggest: %s over %d unlabeled images (%d labeled); near-duplicates: closer than %.4g",
                 strategy, len(pool.candidates), len(labeled), radius)
        if strategy == "typiclust":
            chosen, scores, clusters = select.typiclust(emb, labeled, pool.candidates, budget, seed, radius)
        elif strategy == "probcover":
            k = pool.train.num_classes or budget
            delta = select.probcover_delta(emb, k, seed)
            log.info("suggest: ProbCover ball radius δ = %.4g (purity %.2f over %d k-means clusters)",
                     delta, select.PURITY, k)
            chosen, scores, clusters = select.probcover(emb, labeled, pool.candidates, budget, delta, radius)
        else:
            u = (select.multilabel_uncertainty(probs, uncertainty) if pool.train.multilabel  # type: ignore
                 else select.uncertainty(probs, uncertainty))  # type: ignore[arg-type]
            if diversity == "kmeans++":
                chosen, scores, clusters = select.weighted_kmeanspp(emb, labeled, pool.candidates, budget, u,
                                                                    seed, radius)
            else:
                chosen, scores, clusters = select.kcenter_greedy(emb, labeled, pool.candidates, budget, u,
                                                                 radius=radius)
            strategy = f"uncertainty ({uncertainty}) + {diversity}"
    out = Suggestion(chosen, scores, clusters, strategy)
    if probs is not None and pool.train.multilabel:  # the label set at the model's thresholds; the surest share
        assert teacher is not None
        p = probs[chosen]
        present = p >= np.array(teacher.spec.decision_thresholds())
        out.guesses = [pool.set_name(row) or "none" for row in present]
        out.confidences = 1.0 - select.multilabel_uncertainty(p, "margin")
    elif probs is not None:
        p = torch.from_numpy(probs[chosen])
        out.guesses = [pool.class_name(int(c)) for c in p.argmax(1)]
        out.confidences = p.max(1).values.numpy()
    return out


def _warn_pixels(pool: Pool) -> None:
    """Raw pixels cluster tiny grey images by content, larger or colour ones by colour and layout."""
    c, h, w = pool.train.get(torch.arange(1)).shape[1:]
    if c > 1 or max(h, w) > 28:
        log.warning("suggest: raw pixels group %dx%d %s images by colour and layout more than by content "
                    "(on CIFAR-10, TypiClust over pixels covered 5.3 of 10 classes with 10 picks, random 7.7): "
                    "pass --encoder with a self-supervised run or a pretrained backbone",
                    h, w, "colour" if c > 1 else "grey")


def hidden_coverage(pool: Pool, s: Suggestion) -> tuple[int, int] | None:
    """How many classes the chosen images cover by the data's hidden labels, of how many (a simulation on
    a labeled set only; None otherwise)."""
    truth = pool.train.labels[torch.from_numpy(s.indices)]
    if len(truth) == 0 or (truth < 0).any():
        return None
    if pool.train.multilabel:  # a class is covered when some chosen image shows it
        return int((truth == 1).any(0).sum()), pool.train.num_classes
    return len(set(truth.tolist())), pool.train.num_classes


def display_names(pool: Pool) -> list[str]:
    """What the CSV's ``path`` column shows for each image: its file, else its id."""
    return [str(f) if f is not None else pool.train.ids[i]
            for i, f in enumerate(image_files(pool.cfg, pool.train))]


def write_csv(pool: Pool, s: Suggestion, path: str | Path) -> Path:
    """``path,label,cluster,score,guess,confidence``: ``label`` is empty for a person to fill in (multi-label data:
    ``labels``, to fill with ``a|b``)."""
    names = display_names(pool)
    column = "labels" if pool.train.multilabel else "label"
    return write_table(path, ["path", column, "cluster", "score", "guess", "confidence"], (
        [names[i], "", int(s.clusters[n]) if s.clusters[n] >= 0 else "", f"{s.scores[n]:.6g}",
         s.guesses[n] if s.guesses else "", f"{s.confidences[n]:.4f}" if s.confidences is not None else ""]
        for n, i in enumerate(s.indices)))


def write_sheet(pool: Pool, s: Suggestion, path: str | Path, title: str = "images to label") -> Path:
    """A self-contained HTML contact sheet of the chosen images, in choice order."""
    from semivit.report.html import esc, grid, page, png_data_uri, tile

    path = Path(path)
    names = display_names(pool)
    images = pool.train.get(torch.from_numpy(s.indices)) if len(s) else []
    tiles = []
    for n, i in enumerate(s.indices):
        caption = f"#{n + 1} {esc(Path(names[i]).name)}"
        if s.clusters[n] >= 0:
            caption += f"<br>cluster {int(s.clusters[n])}"
        caption += f"<br>score {s.scores[n]:.3g}"
        if s.guesses:
            caption += f"<br>guess <b>{esc(s.guesses[n])}</b> {s.confidences[n]:.2f}"  # type: ignore[index]
        tiles.append(tile(png_data_uri(images[n]), caption, title=names[i]))
    body = (f"<h1>{esc(title)}</h1><p>{len(s)} images chosen by {esc(s.strategy)} from {len(pool.candidates)} "
            f"unlabeled ({len(pool.known)} labeled) of {esc(pool.cfg.data.source)}. Write each one's class into "
            "the <code>label</code> column of the CSV beside this page, then merge it with "
            "<code>semivit suggest … --accept</code>.</p>" + grid(tiles))
    path.write_text(page(title, body))
    return path
