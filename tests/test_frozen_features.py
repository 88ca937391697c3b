"""A frozen backbone's cached features in the one training loop (issue 25): the cache is reused (a second run
computes nothing) and resumes at its first missing chunk; a head trained with FixMatch on cached features
beats the labels-only head where unlabeled data helps; the export is the backbone with the head folded in."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from semivit.data import prepare_data
from semivit.data.features import CachedFeatures
from semivit.engine.checkpoint import load_model
from semivit.engine.evaluate import predict_logits, top1
from semivit.engine.inputs import FeatureInputs
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.models.factory import create_model
from semivit.models.heads import FeatureHead, fold_feature_head
from tests.conftest import frozen_config, tiny_config

ARCH = "test_efficientnet"


def _frozen(tmp_path, **settings):
    return frozen_config(tmp_path, **settings)


def _count_backbone_calls(monkeypatch):
    calls = {"images": 0}
    real = timm.models.efficientnet.EfficientNet.forward_features

    def counted(self, x):
        calls["images"] += len(x)
        return real(self, x)

    monkeypatch.setattr(timm.models.efficientnet.EfficientNet, "forward_features", counted)
    return calls


def test_the_feature_cache_is_reused_and_resumes_at_its_first_missing_chunk(tmp_path, monkeypatch):
    calls = _count_backbone_calls(monkeypatch)
    Trainer(_frozen(tmp_path, **{"train.method": "supervised"})).fit()
    n_train, n_test = len(prepare_data(_frozen(tmp_path).data, 0).train), 360
    assert calls["images"] == 3 * n_train + n_test  # the images as they are, 1 weak and 1 strong view; test
    calls["images"] = 0
    Trainer(_frozen(tmp_path, **{"train.method": "fixmatch", "train.name": "again"})).fit()
    assert calls["images"] == 0  # another method on the same backbone, data and views: nothing embedded
    folder = next((tmp_path / "cache").iterdir())
    next(folder.glob("strong-*/train-0-*.safetensors")).unlink()  # as if interrupted before that chunk
    Trainer(_frozen(tmp_path, **{"train.name": "third"})).fit()
    assert 0 < calls["images"] <= 2048
    calls["images"] = 0
    Trainer(_frozen(tmp_path, **{"train.name": "fourth", "features.views": 2})).fit()
    assert calls["images"] == 2 * n_train  # a second weak and strong view; the first ones and the images are kept
    calls["images"] = 0
    Trainer(_frozen(tmp_path, **{"train.name": "fifth", "data.strong_ops": 1})).fit()
    assert calls["images"] == n_train  # other strong views; the images' own features are kept


def test_the_export_is_the_backbone_with_the_head_folded_into_its_classifier(tmp_path):
    result = Trainer(_frozen(tmp_path, **{"train.method": "supervised", "train.steps": 30})).fit()
    model, _ = load_model(result.run_dir / "checkpoints" / "model.safetensors")
    data = prepare_data(_frozen(tmp_path).data, 0)
    logits = predict_logits(model, data.test)
    assert abs(top1(logits, data.test.labels) - result.metrics["test_top1"]) < 1e-6  # images in, same answers
    head = FeatureHead(torch.randn(50, 8) * 3 + 1, 4)
    classifier = torch.nn.Linear(8, 4)
    fold_feature_head(classifier, head)
    h = torch.randn(5, 8)
    assert torch.allclose(classifier(h), head(h), atol=1e-5)


def test_a_method_that_needs_views_the_cache_lacks_is_refused(tmp_path):
    with pytest.raises(SemivitError, match="cached features hold none"):
        Trainer(_frozen(tmp_path, **{"train.method": "fixmatch", "features.views": 0})).fit()
    with pytest.raises(SemivitError, match="pretrained backbone"):
        Trainer(tiny_config(tmp_path, **{"features.frozen": True})).fit()


def _moons_of_features(tmp_path):
    """Two elongated clusters (x = ±3, σ_x 0.5; σ_y 2) whose two labeled points per class sit at opposite
    ends (class 0 at y ≈ +3, class 1 at y ≈ −3): the labels alone tilt a linear boundary (≈ 80% right); the
    unlabeled points show it should be x = 0. Weak and strong views are the point plus noise."""
    g = np.random.default_rng(0)
    n, m = 400, 200
    np.savez(tmp_path / "pts.npz", x_train=g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
             y_train=np.arange(n) % 2, x_test=g.integers(0, 256, (m, 1, 8, 8), dtype=np.uint8), y_test=np.arange(m) % 2)
    cfg = tiny_config(tmp_path, **{"data.source": str(tmp_path / "pts.npz"), "data.labels": "2-per-class",
                                   "data.val": "0"})
    data = prepare_data(cfg.data, 0)

    def points(labels):
        x = torch.where(labels == 0, -3.0, 3.0) + 0.5 * torch.randn(len(labels))
        return torch.stack([x, 2 * torch.randn(len(labels))], 1)

    torch.manual_seed(0)
    train = points(data.train.labels)
    lab = data.split.labeled
    train[lab, 1] = torch.where(data.train.labels[lab] == 0, 3.0, -3.0) + 0.1 * torch.randn(len(lab))
    views = {"none": train, "weak": torch.stack([train + 0.1 * torch.randn_like(train) for _ in range(2)]),
             "strong": torch.stack([train + 0.4 * torch.randn_like(train) for _ in range(2)])}
    feats = CachedFeatures({k: v.half() for k, v in views.items()}, points(data.test.labels).half(), tmp_path, 0)
    backbone = create_model("vit_nano", 2, 1, 8, embed_dim=2, depth=1, num_heads=1, patch_size=4)
    return data, feats, backbone


@pytest.mark.parametrize("method", ["fixmatch", "ema_teacher"])
def test_a_head_trained_with_fixmatch_on_cached_features_beats_the_labels_only_head(tmp_path, method):
    """As the recipes do: the labels-only head first (the linear probe), then the method from it."""
    data, feats, backbone = _moons_of_features(tmp_path)

    def fit(name, head, **params):
        run = tiny_config(tmp_path, **{"data.val": "0", "train.method": name, "train.name": name, "train.steps": 400,
                                       "train.batch_size": 4, "optim.lr": 0.05, "optim.scale_lr": False,
                                       "optim.weight_decay": 0.0, "method": params})
        trainer = Trainer(run, model=head, inputs=FeatureInputs(data, feats, backbone, torch.device("cpu")))
        return trainer.fit().metrics["test_top1"], trainer.method.model

    labels_only, head = fit("supervised", FeatureHead(feats.train["none"], 2))
    semi, _ = fit(method, head, threshold=0.7, mu=16, lambda_u=1.0)
    assert labels_only < 0.9, labels_only  # the labels alone tilt the boundary
    assert semi > labels_only + 0.1, (semi, labels_only)


@pytest.mark.slow
def test_a_budget_plans_a_frozen_recipe_and_embeds_the_data_once(tmp_path, monkeypatch):
    """``--budget`` times the stages on the real backbone (the first timing fills the cache), then every stage
    reads the cache: the backbone sees each image and view once in the whole run."""
    import json

    from semivit import planning
    from semivit.pipeline import run_recipe

    # the planned steps are what this checks: the 1.5× time-limit guard would cut them on a loaded machine
    # (test_planning checks the guard itself)
    monkeypatch.setattr(planning, "TIME_LIMIT_GUARD", 100.0)
    calls = _count_backbone_calls(monkeypatch)
    cfg = _frozen(tmp_path)
    overrides = {"model.name": ARCH, "model.pretrained": cfg.model.pretrained, "model.resolution": "32",
                 "features.cache": cfg.features.cache, "train.out": str(tmp_path), "train.progress": False,
                 "train.tensorboard": False, "data.labels": "4-per-class"}
    result = run_recipe("frozen-fixmatch", overrides, run_name="budget", budget=20)
    plan = json.loads((tmp_path / "budget" / "plan.json").read_text())
    assert result.metrics["steps"] == plan["stages"][1]["steps"] >= 20
    n_train = len(prepare_data(cfg.data, 0).train)
    assert calls["images"] == 5 * n_train + 360  # the images, 2 weak and 2 strong views, the test images: once


@pytest.mark.slow
def test_pseudolabels_and_suggest_of_a_frozen_run_read_its_cached_features(tmp_path, monkeypatch):
    """The labeling loop on a frozen-feature run never runs the backbone over the pool again (issue 25), and
    the cached path gives the probabilities the exported model gives on the images."""
    from semivit.cli import main
    from semivit.labeling.pool import pool_from_run, run_teacher_probs, teacher_probs
    from semivit.labeling.suggest import teacher_of

    run = Trainer(_frozen(tmp_path, **{"train.method": "supervised"})).fit()
    pool = pool_from_run(run.run_dir)
    teacher = teacher_of(pool)
    direct = teacher_probs(teacher, pool.train)
    calls = _count_backbone_calls(monkeypatch)
    cached = run_teacher_probs(pool, teacher)  # the cache holds channels_last features (within ~3e-5)
    assert np.abs(cached - direct).max() < 2e-3 and (cached.argmax(1) == direct.argmax(1)).mean() > 0.99
    assert main(["pseudolabels", str(run.run_dir), "-o", str(tmp_path / "pseudo.csv")]) == 0
    assert main(["suggest", str(run.run_dir), "--budget", "5", "--strategy", "uncertainty",
                 "-o", str(tmp_path / "next.csv")]) == 0
    assert calls["images"] == 0


def test_a_cold_start_with_a_pretrained_encoder_shares_the_feature_cache(tmp_path, monkeypatch):
    """``suggest --data D --encoder BACKBONE`` embeds the pool through the feature cache (issue 25): after a
    frozen run on that backbone nothing is embedded, and a fresh cache gives the same embedding."""
    from semivit.cli import main
    from semivit.labeling.commands import make_pool
    from semivit.labeling.pool import pool_embedding

    cfg = _frozen(tmp_path, **{"train.method": "supervised"})
    Trainer(cfg).fit()
    settings = {"model.pretrained": cfg.model.pretrained, "model.resolution": "32",
                "features.cache": cfg.features.cache}
    calls = _count_backbone_calls(monkeypatch)
    emb = pool_embedding(make_pool(None, "digits", labels="0", settings=settings), ARCH)
    assert calls["images"] == 0
    sets = sum((["--set", f"{k}={v}"] for k, v in settings.items()), [])
    assert main(["suggest", "--data", "digits", "--labels", "0", "--encoder", ARCH, "--budget", "10",
                 "--strategy", "typiclust", "-o", str(tmp_path / "cold.csv"), *sets]) == 0
    assert calls["images"] == 0
    fresh = make_pool(None, "digits", labels="0", settings={**settings, "features.cache": str(tmp_path / "new")})
    again = pool_embedding(fresh, ARCH)
    assert calls["images"] == len(fresh.train) + 360  # the training images and the test part, once
    assert emb.shape == again.shape and np.abs(emb - again).max() < 1e-4
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
