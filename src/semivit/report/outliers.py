"""The report's "images that look like none of your classes" sheet: the unlabeled images a run scored as outliers
(its ``outlier_scores.csv``: OpenMatch's one-vs-all scores, or the nearest-neighbour scores any run on cached
features writes), most unfamiliar first — what the pool holds that no class covers."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from semivit.data.imageset import ImageSet
from semivit.report.html import esc, grid, png_data_uri, tile

#: an image is "like none of your classes" from this outlier score on (OpenMatch's inlier cut-off)
CUTOFF = 0.5


def outlier_section(run_dir: Path, train: ImageSet | None, images_shown: int) -> str:
    """HTML for the run's outliers, or "" when the run wrote no outlier scores (every method but openmatch)."""
    path = run_dir / "outlier_scores.csv"
    if not path.is_file():
        return ""
    with open(path, newline="") as f:
        rows = [(r["id"], float(r["outlier_score"]), r["predicted"]) for r in csv.DictReader(f)]
    far = sorted((r for r in rows if r[1] >= CUTOFF), key=lambda r: -r[1])
    head = (f"<p>{len(far)} of {len(rows)} unlabeled images score ≥ {CUTOFF:g} (OpenMatch's outlier score: they look "
            "like none of your classes; FixMatch did not learn from them). Most unfamiliar first; "
            "<code>semivit suggest RUN --outliers target</code> picks among them, <code>--outliers skip</code> "
            "leaves them out.</p>")
    if not far or train is None:
        return head
    index = {image_id: i for i, image_id in enumerate(train.ids)}
    shown = [r for r in far if r[0] in index][:images_shown]
    if not shown:
        return head
    pictures = train.get(torch.tensor([index[r[0]] for r in shown]))
    tiles = [tile(png_data_uri(pictures[n]), f"outlier {score:.2f}<br>guess {esc(guess)}", "warn", title=image_id)
             for n, (image_id, score, guess) in enumerate(shown)]
    return head + grid(tiles)
