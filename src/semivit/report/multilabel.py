"""The test section of a multi-label run's report: mAP and F1, each class's AP, F1 and threshold, and the test
images with their predicted and true label sets (read from the run's ``test_report.json``, never predicted
again)."""

from __future__ import annotations

from typing import Any

import torch

from semivit.data.imageset import ImageSet
from semivit.engine.multilabel_eval import summary_line
from semivit.report.html import esc, figure_data_uri, grid, plot_img, png_data_uri, table, tile
from semivit.report.plots import per_class_figure


def _names(row: torch.Tensor, classes: list[str]) -> str:
    return ", ".join(esc(classes[c]) for c in torch.nonzero(row).flatten().tolist()) or "none"


def multilabel_section(saved: dict[str, Any] | None, test: ImageSet, images_shown: int) -> str:
    """HTML for a multi-label test part: ``saved`` is the run's test report (None: the run has not written one)."""
    probs = (saved or {}).get("predictions", {}).get("probs")
    if saved is None or not saved.get("multilabel") or probs is None or len(probs) != len(test):
        return "<p class='note'>No multi-label test_report.json for this test part: run the training again.</p>"
    classes = list(saved["per_class"])
    per_class = saved["per_class"]
    figure = per_class_figure({c: v["ap"] or 0.0 for c, v in per_class.items()}, ylabel="test AP",
                              title="per-class average precision")
    rows = [(esc(c), "–" if v["ap"] is None else f"{v['ap']:.3f}", f"{v['f1']:.3f}", f"{v['threshold']:.3f}",
             v["positives"]) for c, v in per_class.items()]
    chosen = torch.tensor(probs) >= torch.tensor(saved["thresholds"]).view(1, -1)
    truth, known = test.labels == 1, test.labels >= 0
    wrong = ((chosen != truth) & known).sum(1)
    # images with the most wrong labels first: the ones worth a look; then right ones
    order = sorted(range(len(test)), key=lambda i: -int(wrong[i]))[:images_shown]
    pictures = test.get(torch.tensor(order))
    tiles = [tile(png_data_uri(pictures[n]), f"pred <b>{_names(chosen[i], classes)}</b><br>true "
                  f"{_names(truth[i], classes)}", "bad" if wrong[i] else "", title=test.ids[i])
             for n, i in enumerate(order)]
    mistakes = int((wrong > 0).sum())
    return (f"<p>test {esc(summary_line(saved))}; thresholds chosen on the validation split</p>"
            f"<div class='plots'>{plot_img(figure_data_uri(figure), 'per-class AP')}</div>"
            + table(["class", "AP", "F1", "threshold", "positives"], rows)
            + f"<h3>test images ({mistakes} of {len(test)} with a wrong label; most wrong first, red frames)</h3>"
            + grid(tiles))
