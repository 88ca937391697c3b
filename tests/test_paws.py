"""PAWS pieces against their definitions (Assran et al. 2021), the support sampler, and a short run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semivit.data.loaders import BalancedIndexStream
from semivit.engine.trainer import train
from semivit.methods.losses import mean_entropy, paws_loss, sharpen, smooth_one_hot, snn
from semivit.models.factory import create_model
from tests.conftest import tiny_config
from tests.test_ddp import torchrun_two_gloo_ranks


def test_snn_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    q, s = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    y = smooth_one_hot(torch.tensor([0, 1, 1, 2, 0]), 3, 0.1)
    out = snn(q, s, y, tau=0.1)
    for i in range(3):
        sims = torch.tensor([float(q[i] @ s[j] / (q[i].norm() * s[j].norm())) for j in range(5)])
        weights = torch.exp(sims / 0.1) / torch.exp(sims / 0.1).sum()
        assert torch.allclose(out[i], (weights[:, None] * y).sum(0), atol=1e-5)
    assert torch.allclose(out.sum(1), torch.ones(3))


def test_smoothing_sharpening_and_mean_entropy_match_their_formulas():
    assert torch.allclose(smooth_one_hot(torch.tensor([1]), 4, 0.1), torch.tensor([[0.025, 0.925, 0.025, 0.025]]))
    p = torch.tensor([[0.5, 0.3, 0.2]])
    expected = p ** 4 / (p ** 4).sum()
    assert torch.allclose(sharpen(p, 0.25), expected)
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    assert float(mean_entropy(probs)) == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))


def test_paws_loss_is_cross_entropy_minus_me_max_and_never_trains_the_targets():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.randn(4, 3).softmax(-1).requires_grad_(True)
    probs = logits.softmax(-1)
    loss, entropy = paws_loss(probs, targets, me_max=True, sharpen_temperature=0.25)
    ce = -(targets * probs.log()).sum(-1).mean()
    assert float(loss) == pytest.approx(float(ce - mean_entropy(sharpen(probs, 0.25))), rel=1e-5)
    assert float(entropy) == pytest.approx(float(mean_entropy(sharpen(probs, 0.25))), rel=1e-5)
    loss.backward()
    assert targets.grad is None and logits.grad is not None  # the targets get zero gradient
    no_me_max, zero = paws_loss(probs, targets, me_max=False)
    assert float(no_me_max) == pytest.approx(float(ce)) and float(zero) == 0


def test_balanced_sampler_draws_equal_classes_and_resumes():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 7 + [-1] * 4)
    pool = torch.arange(14)
    stream = BalancedIndexStream(pool, labels, classes_per_batch=None, per_class=3, seed=0, key=1)
    for _ in range(5):
        batch = stream.next()
        assert batch.tolist() and torch.bincount(labels[batch], minlength=3).tolist() == [3, 3, 3]
    two = BalancedIndexStream(pool, labels, classes_per_batch=2, per_class=2, seed=0, key=1)
    counts = torch.bincount(labels[two.next()], minlength=3)
    assert sorted(counts.tolist()) == [0, 2, 2]
    state = two.state_dict()
    expected = two.next()
    again = BalancedIndexStream(pool, labels, classes_per_batch=2, per_class=2, seed=0, key=1)
    again.load_state_dict(state)
    assert torch.equal(again.next(), expected)
    other_rank = BalancedIndexStream(pool, labels, classes_per_batch=2, per_class=2, seed=0, key=1, rank=1)
    other_rank.load_state_dict(state)
    assert not torch.equal(other_rank.next(), expected)  # each rank draws its own supports


def test_vit_features_take_smaller_multicrop_views():
    model = create_model("vit_nano", 10, 3, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    full = model.features(x)
    model.spec.image_size = 0  # force the any-size path at the native size: it must be the same network
    assert torch.allclose(model.features(x), full, atol=1e-6)
    model.spec.image_size = 32
    assert model.features(torch.rand(3, 3, 16, 16)).shape == (3, model.num_features)
    with pytest.raises(ValueError, match="patch"):
        model.features(torch.rand(1, 3, 18, 18))


def test_paws_trains_and_reports_snn(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.method": "paws", "train.batch_size": 8, "method.multicrop": 2,
                                   "method.images_per_class": 2, "train.steps": 6})
    result = train(cfg)
    metrics = json.loads((result.run_dir / "results.json").read_text())
    for key in ("test_knn_top1", "test_snn_top1", "test_linear_top1"):
        assert 0 <= metrics[key] <= 1
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/snn_acc" in header and "train/me_max_entropy" in header


@pytest.mark.slow
def test_paws_loss_over_two_ranks_equals_one_process(tmp_path):
    ranks = torchrun_two_gloo_ranks("paws_worker.py", tmp_path, 29519)
    g = torch.Generator().manual_seed(0)
    supports = torch.randn(8, 6, generator=g).requires_grad_(True)
    anchors = torch.randn(8, 6, generator=g).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    targets = torch.randn(8, 3, generator=g).softmax(-1)
    loss, _ = paws_loss(snn(anchors, supports, smooth_one_hot(labels, 3, 0.1), tau=0.1), targets)
    loss.backward()
    assert torch.equal(ranks[0]["labels"], labels)  # supports and labels gathered in rank order
    assert float(ranks[0]["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert torch.allclose(torch.cat([r["grad_s"] for r in ranks]), supports.grad, atol=1e-5)
    assert torch.allclose(torch.cat([r["grad_a"] for r in ranks]), anchors.grad, atol=1e-5)
