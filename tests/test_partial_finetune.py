"""Partial fine-tuning on a CPU (issue 25): a pretrained backbone is cut before its last N blocks, the part before
the cut embeds each image once (cached), and the last blocks train with the head in the one loop. The cut is
exact for every supported family, the export is a plain network that gives the run's answers on images, a later
stage reads the same cache, and the teacher of the EMA-Teacher averages BatchNorm statistics too."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from semivit.core.ema import ModelEMA
from semivit.data import prepare_data
from semivit.engine.checkpoint import load_model
from semivit.engine.evaluate import predict_logits, top1
from semivit.engine.optim import build_optimizer
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.models.factory import create_model, wrap_module
from semivit.models.tail import BackboneTail, split_backbone
from tests.conftest import frozen_config, tiny_config

ARCH = "test_efficientnet"


@pytest.mark.parametrize("arch,size", [("test_efficientnet", 32), ("mobilenetv3_small_050", 32), ("resnet18", 32),
                                       ("test_vit", 160)])
@pytest.mark.parametrize("blocks", [1, 3])
def test_the_cut_backbone_gives_the_whole_backbones_features_and_exports_its_logits(arch, size, blocks):
    torch.manual_seed(0)
    net = wrap_module(timm.create_model(arch, num_classes=4), 4, 3, size).eval()
    x = torch.rand(3, 3, size, size)
    prefix, tail = split_backbone(net, blocks)
    tail.eval()
    with torch.no_grad():
        h = prefix(x)
        assert torch.allclose(tail.pooled(h), net.features(x), atol=1e-5)
        tail.attach_head(torch.randn(20, *h.shape[1:]), 4)
        torch.nn.init.normal_(tail.head.linear.weight)
        for block in tail.blocks:  # as if trained: the export must carry the tail's own weights
            for p in block.parameters():
                p.add_(0.01 * torch.randn_like(p))
        exported = tail.exported(net).eval()
        assert torch.allclose(exported(x), tail(h), atol=1e-4)
    trained = {n for n, p in tail.named_parameters() if p.requires_grad}
    assert trained and all(not n.startswith(("net.backbone.conv_stem", "net.backbone.patch_embed",
                                             "net.backbone.conv1")) for n in trained)


def test_the_trained_blocks_take_the_tail_learning_rate():
    net = wrap_module(timm.create_model(ARCH, num_classes=4), 4, 3, 32)
    tail = BackboneTail(net, 2, lr_scale=0.1)
    tail.attach_head(torch.randn(8, 32, 4, 4), 4)
    method = torch.nn.Module()
    method.model = tail
    optimizer = build_optimizer(method, tiny_config(".").optim)
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert {scale[id(p)] for p in tail.blocks[0].parameters()} == {0.1}
    assert {scale[id(p)] for p in tail.head.parameters()} == {1.0}
    assert sum(p.numel() for p in tail.parameters() if p.requires_grad) == sum(len(g["params"]) and sum(
        p.numel() for p in g["params"]) for g in optimizer.param_groups)


def _partial(tmp_path, **settings):
    return frozen_config(tmp_path, **{"features.train_blocks": 2, **settings})


@pytest.mark.slow
def test_a_partial_run_exports_a_network_that_answers_as_the_run_reported_and_a_later_stage_reads_its_cache(
        tmp_path):
    trainer = Trainer(_partial(tmp_path, **{"train.method": "supervised", "train.steps": 30}))
    result = trainer.fit()
    assert trainer.inputs.feats.computed > 0
    assert trainer.inputs.feats.train["none"].ndim == 4  # the cut's activation maps, not pooled vectors
    model, _ = load_model(result.run_dir / "checkpoints" / "model.safetensors")
    data = prepare_data(_partial(tmp_path).data, 0)
    assert abs(top1(predict_logits(model, data.test), data.test.labels) - result.metrics["test_top1"]) < 1e-6
    start = {f"backbone.{k}": v for k, v in load_file(_partial(tmp_path).model.pretrained).items()}
    changed = {k for k, v in model.state_dict().items()
               if k in start and v.shape == start[k].shape and v.is_floating_point() and not torch.equal(v, start[k])}
    # (the stem's RGB weights are summed for the grey digits: another shape, not a trained change)
    tail = tuple(f"{n}." for n in BackboneTail(model, 2).trained_names) + ("backbone.classifier.",)
    assert tail == ("backbone.blocks.3.0.", "backbone.blocks.4.0.", "backbone.conv_head.", "backbone.bn2.",
                    "backbone.classifier.")
    assert changed and all(k.startswith(tail) for k in changed), changed  # the prefix is frozen
    # a recipe's next stage starts from that export: its trained tail is not part of the cache's key
    again = Trainer(_partial(tmp_path, **{"train.method": "fixmatch", "train.name": "stage2"}))
    again.cfg.model.pretrained = str(result.run_dir / "checkpoints" / "model.safetensors")  # as run_recipe does
    again = Trainer(again.cfg)
    assert again.inputs.feats.computed == 0
    start = again.inputs.logits(again.given_model, "test")  # the tail and head it starts from: stage 1's
    assert abs(top1(start, data.test.labels) - result.metrics["test_top1"]) < 1e-6
    assert again.fit().metrics["steps"] == 12


def test_partial_fine_tuning_settings_that_cannot_apply_are_refused(tmp_path):
    with pytest.raises(SemivitError, match="set features.frozen=true"):
        Trainer(_partial(tmp_path, **{"features.frozen": False})).fit()
    with pytest.raises(SemivitError, match="between 1 and"):
        Trainer(_partial(tmp_path, **{"features.train_blocks": 99})).fit()
    with pytest.raises(SemivitError, match="features.tail_lr"):
        Trainer(_partial(tmp_path, **{"features.tail_lr": 0})).fit()
    with pytest.raises(SemivitError, match="is none of them"):
        from semivit.models.semiformer import create_semiformer  # noqa: F401 - registers the family

        BackboneTail(create_model("semiformer_tiny", 4, 3, 32), 1)


def test_the_ema_teacher_averages_batchnorm_statistics_with_its_weights():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    teacher = ModelEMA(student, 0.9, buffers="ema")
    copying = ModelEMA(student, 0.9)
    student.train()(torch.randn(16, 4) + 5)
    teacher.update(student)
    copying.update(student)
    bn, t_bn = student[1], teacher.module[1]
    assert torch.allclose(t_bn.running_mean, 0.1 * bn.running_mean)  # 0.9·0 + 0.1·μ
    assert torch.allclose(t_bn.running_var, 0.9 + 0.1 * bn.running_var)  # started at 1
    assert t_bn.num_batches_tracked == bn.num_batches_tracked  # integers are copied
    assert torch.equal(copying.module[1].running_mean, bn.running_mean)  # the evaluation EMA copies them
