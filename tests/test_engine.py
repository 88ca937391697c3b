import math
import os

import pytest
import torch

from semivit.config import OptimConfig
from semivit.engine.checkpoint import load_checkpoint, save_checkpoint
from semivit.engine.ema import ModelEMA
from semivit.engine.evaluate import classification_report, expected_calibration_error, roc_auc, summary_line
from semivit.engine.optim import build_optimizer, lr_at
from semivit.errors import SemivitError
from semivit.methods.supervised import Supervised, SupervisedParams
from semivit.models.factory import create_model


def test_cosine_schedule_with_warmup():
    assert lr_at(0, 100, 1.0, 10, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 0.1, 0.01) == pytest.approx(0.01)


def test_layer_decay_groups():
    model = create_model("vit_nano", 10, 1, 8, depth=3)
    method = Supervised(model, SupervisedParams(), 10, 10)
    opt = build_optimizer(method, OptimConfig(layer_decay=0.5, weight_decay=0.05))
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    bb = model.backbone
    assert scale_of[id(bb.head.weight)] == 1.0
    assert scale_of[id(bb.blocks[2].attn.qkv.weight)] == 0.5
    assert scale_of[id(bb.blocks[0].attn.qkv.weight)] == 0.125
    assert scale_of[id(bb.patch_embed.proj.weight)] == 0.0625
    assert wd_of[id(bb.pos_embed)] == 0.0 and wd_of[id(bb.blocks[0].norm1.weight)] == 0.0
    assert wd_of[id(bb.blocks[0].attn.qkv.weight)] == 0.05


def test_ema_update_rule():
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(SemivitError, match="disk full.*previous last.pt is intact"):  # one line, not a traceback
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SemivitError, match="may be incomplete"):
        load_checkpoint(path)
    assert os.path.exists(path)


def test_report_metrics():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.1, 0.0]])
    labels = torch.tensor([0, 1, 0, 2])
    report = classification_report(logits, labels, ["a", "b", "c"])
    assert report["top1"] == 0.5 and "top5" not in report  # 1.0 by construction at 3 classes
    ranks = torch.arange(6.0).repeat(7, 1)  # every image ranks class 0 last and class 5 first
    six = classification_report(ranks, torch.tensor([0, 5, 5, 4, 3, 2, 1]), list("abcdef"))
    assert six["top5"] == pytest.approx(6 / 7) and six["top1"] == pytest.approx(2 / 7)
    assert "top-5 0.8571" in summary_line(six)
    assert report["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert report["confusion"][0] == [1, 0, 1]
    probs = logits.softmax(1)
    conf = probs.max(1).values
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # all four confidences fall into one 15-bin bucket here: ECE = |mean acc − mean conf|
    assert expected_calibration_error(probs, labels) == pytest.approx(abs(correct.mean() - conf.mean()).item(),
                                                                      abs=1e-6)


def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    # pairs (pos, neg): (0.35, 0.1) ✓, (0.35, 0.4) ✗, (0.8, 0.1) ✓, (0.8, 0.4) ✓, a tie counts half
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([False, True])) == 0.5
    assert math.isnan(roc_auc(torch.tensor([0.2, 0.9]), torch.tensor([True, True])))  # one class: undefined
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(200, generator=g)
    positives = torch.rand(200, generator=g) < scores
    two = classification_report(torch.stack([-scores, scores], 1), positives.long(), ["neg", "pos"])
    assert "roc_auc" in two and "top5" not in two
    assert "ROC AUC" in summary_line(two) and "top-5" not in summary_line(two)


def test_knn_and_linear_probe_on_separable_features():
    from semivit.engine.evaluate import knn_top1, linear_probe_top1

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 5
    bank_y = torch.arange(3).repeat(10)
    bank = centers[bank_y] + torch.randn(30, 8, generator=g)
    query_y = torch.arange(3).repeat(5)
    queries = centers[query_y] + torch.randn(15, 8, generator=g)
    assert knn_top1(bank, bank_y, queries, query_y, k=5) == 1.0
    assert linear_probe_top1(bank, bank_y, queries, query_y) == 1.0
    assert knn_top1(bank, bank_y, queries, (query_y + 1) % 3, k=5) == 0.0
