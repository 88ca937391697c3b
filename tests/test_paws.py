"""PAWS pieces against their definitions (Assran et al. 2021), the support sampler, and a short run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semivit.cli import main as cli_main
from semivit.data.loaders import BalancedIndexStream, Batch
from semivit.engine.checkpoint import export_weights, load_model
from semivit.engine.evaluate import extract_features
from semivit.engine.trainer import train
from semivit.methods.base import method_class, method_params
from semivit.methods.losses import mean_entropy, paws_loss, sharpen, smooth_one_hot, snn
from semivit.models.factory import create_model
from semivit.models.heads import ProjectionHead
from semivit.models.pretrained import load_pretrained
from tests.conftest import assert_reported_top1, tiny_config
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


def _paws(**params) -> object:
    model = create_model("vit_nano", 3, 3, 8, depth=1, embed_dim=32, num_heads=2)
    return method_class("paws")(model, method_params("paws", params), 3, 10)


def test_paws_projector_ends_in_a_plain_linear_and_simclr_keeps_its_batchnorm():
    """Reference (suncet src/paws_train.py init_model): fc1–bn1–relu1–fc2–bn2–relu2–fc3, fc3 a plain Linear;
    SimCLRv2's head keeps BatchNorm on its last layer."""
    last = list(_paws().projector)[-1]
    assert [type(m) for m in last] == [torch.nn.Linear] and last[0].bias is not None
    assert [type(m) for m in _paws(proj_last_bn=True).projector[-1]] == [torch.nn.Linear, torch.nn.BatchNorm1d]
    assert [type(m) for m in ProjectionHead(8, 8, 4).blocks[-1]] == [torch.nn.Linear, torch.nn.BatchNorm1d]
    simclr = method_class("simclr")(create_model("vit_nano", 3, 3, 8, depth=1, embed_dim=32, num_heads=2),
                                    method_params("simclr", {}), 3, 10)
    assert [type(m) for m in simclr.projector[-1]] == [torch.nn.Linear, torch.nn.BatchNorm1d]
    assert simclr.model.embedding is None  # SimCLR is still evaluated on the encoder's features


def test_paws_model_carries_its_embedding_through_export(tmp_path):
    """The exported model holds PAWS's projector: its ``embed`` is the projection the snn loss trained on,
    evaluation reads it, and ``load_model`` rebuilds it from the spec; the classifier is untouched."""
    method = _paws(finetune_layer=1, proj_dim=16).eval()
    x = torch.rand(5, 3, 8, 8)
    model = method.model
    z = method.project(x)
    assert z.shape == (5, 16) and torch.allclose(model.embed(x), z)
    assert not torch.allclose(model.embed(x)[:, :16], model.features(x)[:, :16])
    export_weights(model, tmp_path / "m.safetensors", model.spec.to_dict())
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert any(k.startswith("embedding.") for k in loaded.state_dict())
    assert torch.allclose(loaded.embed(x), z, atol=1e-6)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)

    class Images:  # the ImageSet interface extract_features needs
        def __len__(self) -> int:
            return len(x)

        def get(self, idx: torch.Tensor) -> torch.Tensor:
            return (x[idx] * 255).round().to(torch.uint8)

    feats = extract_features(loaded, Images())  # type: ignore[arg-type]
    assert feats.shape == (5, 16)
    assert extract_features(loaded, Images(), embedding=False).shape == (5, 32)  # type: ignore[arg-type]


def test_paws_supports_are_seen_in_support_views():
    """Each support image enters the snn classifier as ``support_views`` views (reference: 2)."""
    method = _paws(multicrop=1, support_views=2, min_small_patches=1)
    assert method.labeled_views == ("large", "large:2")
    sizes = []
    method.model.embedding.register_forward_hook(lambda m, i, o: sizes.append(len(o)))
    g = torch.Generator().manual_seed(0)
    batch = Batch()
    batch.x = {v: torch.rand(6, 3, 8, 8, generator=g) for v in method.labeled_views}
    batch.y = torch.tensor([0, 0, 1, 1, 2, 2])
    batch.u = {v: torch.rand(4, 3, 8 if v.startswith("large") else 4, 8 if v.startswith("large") else 4,
                             generator=g) for v in method.unlabeled_views}
    out = method.training_step(batch, 0)
    assert sizes == [2 * 6 + 2 * 4, 4] and torch.isfinite(out.loss)


def test_paws_switches_multicrop_off_when_small_views_would_be_one_patch():
    """On 8×8 images with 4-px patches a small view is a single patch (measured harmful on digits); on 16-px
    images with 2-px patches it is 4×4 patches and multi-crop stays."""
    tiny = _paws(multicrop=6)  # 8-px images, 4-px patches: 4-px small views
    assert tiny.unlabeled_views == ("large", "large:2") and tiny.effective_settings() == {"multicrop": 0}
    model = create_model("vit_nano", 3, 3, 16, depth=1, embed_dim=32, num_heads=2)
    wide = method_class("paws")(model, method_params("paws", {"multicrop": 6}), 3, 10)
    assert len(wide.unlabeled_views) == 8 and wide.effective_settings() == {}
    assert wide.view_options["small"]["out_size"] == 8


def test_paws_trains_reports_snn_on_its_embedding_and_evaluate_reproduces_it(tmp_path, capsys):
    cfg = tiny_config(tmp_path, **{"train.method": "paws", "train.batch_size": 8, "method.multicrop": 2,
                                   "method.min_small_patches": 1, "method.images_per_class": 2, "train.steps": 6,
                                   "method.proj_dim": 24})
    result = train(cfg)
    metrics = json.loads((result.run_dir / "results.json").read_text())
    for key in ("test_knn_top1", "test_snn_top1", "test_linear_top1"):
        assert 0 <= metrics[key] <= 1
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/snn_acc" in header and "train/me_max_entropy" in header
    exported, _ = load_model(result.run_dir)
    assert exported.embedding is not None and exported.embed(torch.rand(2, 1, 8, 8)).shape == (2, 24)
    # `semivit evaluate RUN --classifier snn` rebuilds the classifier the run reported
    assert cli_main(["evaluate", str(result.run_dir), "--data", "digits", "--classifier", "snn"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("top-1 "))
    assert float(line.split()[1]) == pytest.approx(metrics["test_snn_top1"], abs=1e-4)
    # fine-tuning from the export (the paws recipe's next stage): backbone and kept head layer load, the
    # embedding is left behind
    fresh = create_model("vit_nano", 10, 1, 8, depth=2, embed_dim=48, num_heads=2, head_layers=1, head_hidden=48)
    report = load_pretrained(fresh, result.run_dir, verbose=False)
    assert report["missing"] == [] and report["unexpected"]
    assert all(k.startswith("embedding.") for k in report["unexpected"])
    assert torch.equal(fresh.backbone.head[0][0].weight, exported.backbone.head[0][0].weight)
    fine = train(tiny_config(tmp_path, **{"train.method": "supervised", "train.steps": 2, "train.name": "fine",
                                          "model.pretrained": str(result.run_dir)}))
    assert fine.model.embedding is None
    assert_reported_top1(fine.model, fine.metrics["test_top1"])


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
