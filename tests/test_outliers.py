"""Nearest-neighbour outlier scores (deep k-NN, Sun et al. 2022; issue 28): the distance and the calibrated score
by hand, and a run on cached features writing them for the labeling loop, with the open-set AUROC."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from semivit.engine.inputs import FeatureInputs
from semivit.engine.outliers import default_k, knn_distance, knn_outlier_scores
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.models.heads import FeatureHead
from tests.conftest import tiny_config
from tests.test_openmatch import _clusters


def test_the_distance_and_the_calibrated_score_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # to (1, 0): cosines 1, 0, 0.707 → 2nd nearest 0.707 → 1 − 0.707
    assert float(knn_distance(bank, torch.tensor([[2.0, 0.0]]), k=2)) == pytest.approx(1 - 2 ** -0.5, abs=1e-6)
    # leave-one-out: (1, 0)'s nearest other is (1, 1)
    own = knn_distance(bank, bank, k=1, exclude_self=True)
    assert own.tolist() == pytest.approx([1 - 2 ** -0.5, 1 - 2 ** -0.5, 1 - 2 ** -0.5], abs=1e-6)
    # 0.5 at the labeled images' own (95th-percentile) distance, 0 on a labeled image, capped at 1
    scores = knn_outlier_scores(bank, torch.tensor([[1.0, 0.0], [-1.0, -1.0]]), k=1)
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[1] == 1.0
    probe = torch.tensor([[1.0, 0.0]]) @ torch.tensor([[2 ** -0.5, -(2 ** -0.5)], [2 ** -0.5, 2 ** -0.5]])
    assert float(knn_outlier_scores(bank, probe, k=1)) == pytest.approx(0.5, abs=1e-5)  # 45° from the nearest
    assert [default_k(n) for n in (10, 300, 1500, 50_000)] == [1, 1, 2, 50]


def _frozen_run(tmp_path, method, **settings):
    data, feats, backbone = _clusters(tmp_path)
    run = tiny_config(tmp_path, **{"data.source": str(tmp_path / "pts.npz"), "data.labels": "10-per-class",
                                   "data.val": "0", "train.method": method, "train.steps": 40,
                                   "train.batch_size": 8, "train.eval_every": 0, "optim.lr": 0.05,
                                   "optim.scale_lr": False,
                                   "method": {"mu": 2.0} if method != "supervised" else {}, **settings})
    head = FeatureHead(feats.train["none"], 3)
    return data, Trainer(run, model=head, inputs=FeatureInputs(data, feats, backbone, torch.device("cpu"))).fit()


def test_a_run_on_cached_features_scores_every_unlabeled_and_test_image(tmp_path):
    # (the synthetic cached features are handed to the Trainer, so the config does not say features.frozen, which
    # train.outliers=auto reads: knn asks for the scores anyway)
    data, result = _frozen_run(tmp_path, "supervised", **{"train.outliers": "knn"})
    assert result.metrics["test_openset_auroc_knn"] > 0.95  # the unknown cluster, far from every labeled image
    assert json.loads((result.run_dir / "results.json").read_text())["test_openset_auroc_knn"] == \
        result.metrics["test_openset_auroc_knn"]
    with open(result.run_dir / "outlier_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [data.train.ids[i] for i in data.split.unlabeled.tolist()]
    unknown = {data.train.ids[i] for i in data.split.unlabeled.tolist() if data.train.labels[i] < 0}
    flagged = {r["id"] for r in rows if float(r["outlier_score"]) >= 0.5}
    assert len(flagged & unknown) > 0.9 * len(unknown) and len(flagged - unknown) < 0.15 * len(rows)
    # the labeling loop reads them: suggest can skip the pool's unknowns
    from semivit.labeling.pool import pool_from_run
    from semivit.labeling.suggest import suggest

    pool = pool_from_run(result.run_dir)
    picked = suggest(pool, 20, strategy="random", outliers="skip")
    assert not {pool.train.ids[i] for i in picked.indices.tolist()} & flagged


def test_openmatch_keeps_its_own_scores_and_the_neighbours_go_beside_them(tmp_path):
    _, result = _frozen_run(tmp_path, "openmatch", **{"train.outliers": "knn"})
    assert (result.run_dir / "outlier_scores.csv").is_file() and (result.run_dir / "knn_outlier_scores.csv").is_file()
    assert {"test_openset_auroc", "test_openset_auroc_knn"} <= set(result.metrics)


def test_outlier_scores_are_on_for_cached_features_can_be_turned_off_and_the_choice_is_checked(tmp_path):
    from tests.conftest import frozen_config

    cfg = frozen_config(tmp_path, **{"train.steps": 2, "train.eval_every": 0})
    assert (Trainer(cfg).fit().run_dir / "outlier_scores.csv").is_file()  # auto: on cached features
    assert not (Trainer(tiny_config(tmp_path, **{"train.steps": 2, "train.name": "images"})).fit().run_dir /
                "outlier_scores.csv").exists()  # auto: not on images (a pass over the pool)
    _, result = _frozen_run(tmp_path, "supervised", **{"train.outliers": "off", "train.name": "off"})
    assert not (result.run_dir / "outlier_scores.csv").exists() and "test_openset_auroc_knn" not in result.metrics
    with pytest.raises(SemivitError, match="train.outliers"):
        tiny_config(tmp_path, **{"train.outliers": "always"})
