"""SimCLRv2 pieces against their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.engine.checkpoint import export_weights
from semivit.methods.distill import Distill, DistillParams
from semivit.methods.losses import distillation_loss, nt_xent
from semivit.methods.simclr import SimCLR, SimCLRParams
from semivit.models.factory import create_model
from semivit.models.heads import ProjectionHead


def nt_xent_by_hand(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / sum(sims))
    return total / (2 * n)


def test_nt_xent_matches_the_definition_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    loss, _ = nt_xent(z1, z2, 0.3)
    assert float(loss) == pytest.approx(nt_xent_by_hand(z1, z2, 0.3), rel=1e-5)
    assert float(nt_xent(z2, z1, 0.3)[0]) == pytest.approx(float(loss), rel=1e-6)


def test_nt_xent_is_low_for_matching_views():
    z = torch.randn(6, 16)
    matched, hit = nt_xent(z, z + 0.01 * torch.randn(6, 16), 0.1)
    shuffled, _ = nt_xent(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.1)
    assert float(matched) < float(shuffled) and float(hit) == 1.0


def test_projection_head_layers():
    head = ProjectionHead(32, 64, 16, num_layers=3)
    assert len(head.blocks) == 3 and head(torch.randn(4, 32)).shape == (4, 16)
    assert isinstance(head.blocks[0][-1], torch.nn.ReLU) and not isinstance(head.blocks[2][-1], torch.nn.ReLU)


def test_simclr_gradient_reaches_the_encoder():
    model = create_model("vit_nano", 10, 3, 16, depth=1, patch_size=4)
    method = SimCLR(model, SimCLRParams(), 10, 10)
    x = torch.rand(6, 3, 16, 16)
    out = method.training_step(Batch(u={"contrastive": x, "contrastive:2": x.flip(-1)}), 0)
    out.loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_distillation_loss_is_kl_plus_teacher_entropy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    tau = 2.0
    p_t = F.softmax(t / tau, -1)
    kl = F.kl_div(F.log_softmax(s / tau, -1), p_t, reduction="batchmean")
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    assert float(distillation_loss(s, t, tau)) == pytest.approx(float(kl + entropy), rel=1e-5)
    assert float(distillation_loss(t, t, tau)) == pytest.approx(float(entropy), rel=1e-5)  # minimum at S = T


def test_distill_student_learns_from_a_frozen_teacher(tmp_path):
    teacher = create_model("vit_nano", 3, 1, 8, depth=2)
    export_weights(teacher, tmp_path / "t.safetensors", teacher.spec.to_dict())
    student = create_model("vit_nano", 3, 1, 8, depth=1, embed_dim=48, num_heads=2)  # big-to-small
    method = Distill(student, DistillParams(teacher=str(tmp_path / "t.safetensors"), labeled_weight=0.5), 3, 10)
    x = torch.rand(4, 1, 8, 8)
    batch = Batch(x={"weak": x}, y=torch.tensor([0, 1, 2, 0]), u={"weak": torch.rand(8, 1, 8, 8)})
    method.train()
    assert not method.teacher.training
    out = method.training_step(batch, 0)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert student.backbone.head.weight.grad is not None and "loss_x" in out.metrics


def test_finetuning_keeps_the_first_projection_layer(tmp_path):
    from semivit.config import Config, apply_overrides
    from semivit.engine.trainer import train

    base = {"data.labels": "2-per-class", "model.name": "vit_nano", "model.depth": 1, "train.batch_size": 16,
            "train.steps": 2, "train.eval_every": 0, "train.out": str(tmp_path), "train.progress": False,
            "train.tensorboard": False}
    pre = train(apply_overrides(Config(), {**base, "train.method": "simclr", "train.name": "pre",
                                           "method.finetune_layer": 1}))
    assert pre.model.spec.kwargs["head_layers"] == 1
    exported = pre.run_dir / "checkpoints" / "model.safetensors"
    fine = train(apply_overrides(Config(), {**base, "train.name": "fine", "model.pretrained": str(exported)}))
    head = fine.model.backbone.head
    assert isinstance(head, torch.nn.Sequential) and len(head) == 2  # projection layer 1 + new classifier
    pre_w = pre.model.backbone.head[0][0].weight
    # started from the pre-trained layer: two small steps away from it, far from any fresh initialisation
    assert (head[0][0].weight - pre_w).abs().max() < 0.1 * pre_w.abs().max()
    from semivit.engine.checkpoint import load_model

    again, _ = load_model(fine.run_dir / "checkpoints" / "model.safetensors")  # rebuilt from the spec
    assert isinstance(again.backbone.head, torch.nn.Sequential)


def test_distill_student_can_start_from_its_teacher(tmp_path):
    """model.pretrained=teacher: the student starts as a copy of its teacher (kept projection-head layers
    included), so at lr 0 it classifies exactly as the teacher; without a teacher it is a clear error."""
    from semivit.config import Config, apply_overrides
    from semivit.engine.trainer import train
    from semivit.errors import SemivitError

    base = {"data.labels": "5-per-class", "model.name": "vit_nano", "model.depth": 1, "train.batch_size": 16,
            "train.eval_every": 0, "train.out": str(tmp_path), "train.progress": False,
            "train.tensorboard": False, "model.drop_path": 0.0}
    pre = train(apply_overrides(Config(), {**base, "train.method": "simclr", "train.name": "pre", "train.steps": 2,
                                           "method.finetune_layer": 1}))
    fine = train(apply_overrides(Config(), {**base, "train.name": "fine", "train.steps": 20,
                                            "model.pretrained": str(pre.run_dir)}))
    teacher = str(fine.run_dir / "checkpoints" / "model.safetensors")
    student = train(apply_overrides(Config(), {**base, "train.method": "distill", "train.name": "student",
                                               "train.steps": 1, "optim.lr": 0.0, "method.teacher": teacher,
                                               "model.pretrained": "teacher"}))
    # a run folder as model.pretrained keeps the projection-head layer, as its model.safetensors does
    assert fine.model.spec.kwargs["head_layers"] == 1 and student.model.spec.kwargs["head_layers"] == 1
    assert student.metrics["test_top1"] == pytest.approx(fine.metrics["test_top1"], abs=1e-9)
    with pytest.raises(SemivitError, match="model.pretrained=teacher"):
        train(apply_overrides(Config(), {**base, "train.name": "bad", "train.steps": 1, "model.pretrained": "teacher"}))
    # method.teacher_init_below: a stage shorter than it starts from the teacher (config.yaml says so) …
    short = train(apply_overrides(Config(), {**base, "train.method": "distill", "train.name": "short",
                                             "train.steps": 1, "optim.lr": 0.0, "method.teacher": teacher,
                                             "method.teacher_init_below": 2}))
    assert short.metrics["test_top1"] == pytest.approx(fine.metrics["test_top1"], abs=1e-9)
    assert (short.run_dir / "config.yaml").read_text().count(f"pretrained: {teacher}") == 1
    # … and one at least that long starts from random weights, as the paper's student does
    long = train(apply_overrides(Config(), {**base, "train.method": "distill", "train.name": "long",
                                            "train.steps": 1, "optim.lr": 0.0, "method.teacher": teacher,
                                            "method.teacher_init_below": 1}))
    assert "pretrained: auto" in (long.run_dir / "config.yaml").read_text()
    assert long.metrics["test_top1"] != pytest.approx(fine.metrics["test_top1"], abs=1e-9)
