"""The neighbouring methods (issue 9) — BYOL, S4L, UDA, feature distillation, Noisy Student — checked
against their formulas on tiny tensors, and each shipped recipe run for a few steps end-to-end."""

import math

import pytest
import torch
import torch.nn.functional as F

from semivit.data.loaders import Batch
from semivit.engine.checkpoint import export_weights
from semivit.methods.byol import BYOL, BYOLParams, target_momentum
from semivit.methods.feature_distill import FeatureDistill, FeatureDistillParams
from semivit.methods.losses import (
    batch_hard_triplet,
    byol_loss,
    feature_regression_loss,
    tsa_cross_entropy,
    tsa_threshold,
    uda_consistency,
)
from semivit.methods.noisy_student import NoisyStudent, NoisyStudentParams
from semivit.methods.s4l import S4L, S4LParams, rotate_batch
from semivit.methods.uda import UDA, UDAParams
from semivit.models.factory import create_model, set_head_dropout
from semivit.models.heads import MLPHead
from tests.conftest import assert_reported_top1


def tiny_vit(classes: int = 3, **kwargs) -> torch.nn.Module:
    return create_model("vit_nano", classes, 1, 8, **{"depth": 1, "embed_dim": 32, "num_heads": 2, **kwargs})


def saved_teacher(tmp_path, classes: int = 3, **kwargs) -> str:
    teacher = tiny_vit(classes, **kwargs)
    path = tmp_path / "teacher.safetensors"
    export_weights(teacher, path, teacher.spec.to_dict())
    return str(path)


# ----------------------------------------------------------------------------------------------------- BYOL
def test_byol_loss_is_two_minus_two_cosine_with_stop_gradient():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 8, generator=g, requires_grad=True)
    z = torch.randn(5, 8, generator=g, requires_grad=True)
    loss = byol_loss(q, z)
    qd, zd = q.detach(), z.detach()
    by_hand = sum(2 - 2 * float(qd[i] @ zd[i]) / (float(qd[i].norm()) * float(zd[i].norm())) for i in range(5)) / 5
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    qn, zn = F.normalize(q, dim=-1), F.normalize(z, dim=-1)
    assert float(loss) == pytest.approx(float(((qn - zn) ** 2).sum(-1).mean()), rel=1e-5)  # ‖q̄ − z̄'‖²
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert z.grad is None  # sg(z'): the target branch gets no gradient
    assert float(byol_loss(z.detach(), 3 * z.detach())) == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_target_momentum_cosine_schedule():
    assert target_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert target_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert target_momentum(100, 100, 0.99) == pytest.approx(1.0)
    k = 25
    assert target_momentum(k, 100, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / 100) + 1) / 2)
    values = [target_momentum(s, 100, 0.99) for s in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # rises monotonically to 1


def test_byol_base_momentum_follows_the_stage_length():
    """τ_base declared for 600 steps: a 60-step stage starts at 0.99^10, so the target lags by the same share
    of the stage (the old code started every stage at 0.99); the run's config records the value used."""
    short = BYOL(tiny_vit(), BYOLParams(base_momentum=0.99, momentum_ref_steps=600, proj_dim=16), 3, 60)
    assert short.momentum(0) == pytest.approx(0.99 ** 10)
    assert short.momentum(60) == pytest.approx(1.0)
    assert short.effective_settings() == {"base_momentum": pytest.approx(0.99 ** 10), "momentum_ref_steps": 60}
    full = BYOL(tiny_vit(), BYOLParams(base_momentum=0.99, momentum_ref_steps=600, proj_dim=16), 3, 600)
    assert full.momentum(0) == pytest.approx(0.99)
    # the product of the schedule's momenta (the share of the start the target keeps) matches at both lengths
    keep_short = math.prod(short.momentum(k) for k in range(60))
    keep_full = math.prod(full.momentum(k) for k in range(600))
    assert keep_short == pytest.approx(keep_full, rel=0.05)


def _byol_batch(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return Batch(u={"contrastive": x, "contrastive:2": x.flip(-1)})


def test_byol_step_trains_online_only_and_target_follows_by_ema():
    model = tiny_vit()
    method = BYOL(model, BYOLParams(base_momentum=0.9, momentum_ref_steps=None, proj_dim=16, proj_hidden=32), 3, 10)
    target = method.target.module
    assert torch.equal(target.model.backbone.blocks[0].attn.qkv.weight, model.backbone.blocks[0].attn.qkv.weight)
    method.train()
    assert not target.model.training  # the target backbone runs in eval mode (no drop-path)
    out = method.training_step(_byol_batch(), 0)
    out.loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert method.predictor.net[0].weight.grad is not None and method.projector.net[0].weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in method.target.parameters())
    assert 0 < float(out.metrics["z_std"]) and float(out.metrics["tau"]) == pytest.approx(0.9)
    # ξ ← τ·ξ + (1 − τ)·θ with τ from the schedule, over backbone and projector
    old_b = target.model.backbone.blocks[0].attn.qkv.weight.clone()
    old_p = target.projector.net[0].weight.clone()
    with torch.no_grad():
        model.backbone.blocks[0].attn.qkv.weight.add_(1.0)
        method.projector.net[0].weight.add_(1.0)
    tau = method.momentum(4)
    method.on_step_end(4)
    assert torch.allclose(target.model.backbone.blocks[0].attn.qkv.weight,
                          tau * old_b + (1 - tau) * model.backbone.blocks[0].attn.qkv.weight, atol=1e-6)
    assert torch.allclose(target.projector.net[0].weight, tau * old_p + (1 - tau) * method.projector.net[0].weight,
                          atol=1e-6)
    assert method.export_model() is model  # the online backbone is what fine-tuning starts from


def test_byol_loss_symmetrised_over_views():
    model = tiny_vit()
    method = BYOL(model, BYOLParams(proj_dim=16, proj_hidden=32), 3, 10).eval()
    batch = _byol_batch(4)
    x = torch.cat([batch.u["contrastive"], batch.u["contrastive:2"]])
    with torch.no_grad():
        q = method.predictor(method.projector(model.features(x)))
        z_t = method.target.module(x)
        expected = byol_loss(q[:4], z_t[4:]) + byol_loss(q[4:], z_t[:4])
        assert float(method.training_step(batch, 0).loss) == pytest.approx(float(expected), rel=1e-5)


def test_mlp_head_shape():
    head = MLPHead(8, 16, 4, num_layers=3)
    assert head(torch.randn(5, 8)).shape == (5, 4)
    assert isinstance(head.net[-1], torch.nn.Linear) and head.net[-1].bias is not None
    with pytest.raises(ValueError):
        MLPHead(8, 16, 4, num_layers=0)


# ------------------------------------------------------------------------------------------------------ S4L
def test_rotate_batch_images_and_labels():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    x[1] += 10
    images, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(images[0], x[0]) and torch.equal(images[1], x[1])
    assert images[2, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]  # 90° counter-clockwise
    assert images[4, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]  # 180°
    assert images[6, 0].tolist() == [[3.0, 1.0], [4.0, 2.0]]  # 270°
    assert images[3, 0].tolist() == [[12.0, 14.0], [11.0, 13.0]]  # the second image, 90°
    for k in range(4):
        assert torch.equal(images[k * 2:(k + 1) * 2], torch.rot90(x, k, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(1, 1, 2, 3))


def _s4l_batch(views, n_l=3, n_u=4):
    g = torch.Generator().manual_seed(2)
    x = {v: torch.rand(n_l, 1, 8, 8, generator=g) for v in views}
    u = {v: torch.rand(n_u, 1, 8, 8, generator=g) for v in views}
    return Batch(x=x, y=torch.tensor([0, 1, 2][:n_l]), u=u)


@pytest.mark.parametrize("rotate_labeled", [True, False])
def test_s4l_rotation_losses_match_their_definition(rotate_labeled):
    torch.manual_seed(0)
    model = tiny_vit(drop_path=0.0)
    method = S4L(model, S4LParams(task="rotation", weight=0.5, rotate_labeled=rotate_labeled), 3, 10).eval()
    batch = _s4l_batch(("weak",))
    x_l, x_u, y = batch.x["weak"], batch.u["weak"], batch.y
    with torch.no_grad():
        out = method.training_step(batch, 0)
        rot_u, r_u = rotate_batch(x_u)
        rot_l, r_l = rotate_batch(x_l)
        ce_rot_u = F.cross_entropy(method.rotation_head(model.features(rot_u)), r_u)
        ce_rot_l = F.cross_entropy(method.rotation_head(model.features(rot_l)), r_l)
        ce_x = (F.cross_entropy(model(rot_l), y.repeat(4)) if rotate_labeled else F.cross_entropy(model(x_l), y))
    assert float(out.metrics["loss_self"]) == pytest.approx(float((ce_rot_u + ce_rot_l) / 2), rel=1e-4)
    assert float(out.metrics["loss_x"]) == pytest.approx(float(ce_x), rel=1e-4)
    assert float(out.loss) == pytest.approx(float(ce_x + 0.5 * (ce_rot_u + ce_rot_l) / 2), rel=1e-4)


def test_s4l_rotation_gradients_and_views():
    model = tiny_vit()
    method = S4L(model, S4LParams(task="rotation", mu=2.0, self_on_labeled=False), 3, 10)
    assert method.labeled_views == ("weak",) and method.unlabeled_ratio == 2.0
    out = method.training_step(_s4l_batch(("weak",)), 0)
    out.loss.backward()
    assert method.rotation_head.weight.grad.abs().sum() > 0 and model.backbone.head.weight.grad.abs().sum() > 0
    assert 0 <= float(out.metrics["rot_acc"]) <= 1


def test_batch_hard_triplet_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(6, 4, generator=g)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = batch_hard_triplet(emb, ids)
    e = F.normalize(emb, dim=-1)
    total = 0.0
    for a in range(6):
        pos = max(float((e[a] - e[p]).norm()) for p in range(6) if p != a and ids[p] == ids[a])
        neg = min(float((e[a] - e[n]).norm()) for n in range(6) if ids[n] != ids[a])
        total += math.log1p(math.exp(pos - neg))  # soft margin
    assert float(loss) == pytest.approx(total / 6, rel=1e-5)
    hinge, _ = batch_hard_triplet(emb, ids, margin=0.2, soft=False)
    assert float(hinge) >= 0
    # identical copies far apart from other images: the soft-margin loss is small and retrieval perfect
    spread = torch.eye(3).repeat(2, 1)
    low, hit = batch_hard_triplet(spread, ids)
    assert float(low) == pytest.approx(math.log1p(math.exp(-math.sqrt(2))), rel=1e-4) and float(hit) == 1.0


def test_s4l_exemplar_step():
    model = tiny_vit()
    method = S4L(model, S4LParams(task="exemplar", copies=3, embed_dim=8), 3, 10)
    assert method.unlabeled_views == ("contrastive", "contrastive:2", "contrastive:3") == method.labeled_views
    out = method.training_step(_s4l_batch(method.labeled_views), 0)
    out.loss.backward()
    assert method.embed_head.weight.grad.abs().sum() > 0 and model.backbone.head.weight.grad.abs().sum() > 0
    assert float(out.metrics["loss_self"]) > 0 and 0 <= float(out.metrics["retrieval_top1"]) <= 1
    from semivit.errors import SemivitError

    with pytest.raises(SemivitError, match="copies"):
        S4L(tiny_vit(), S4LParams(task="exemplar", copies=1), 3, 10)
    from semivit.methods import method_params

    with pytest.raises(SemivitError, match="method.task must be one of rotation, exemplar"):
        method_params("s4l", {"task": "jigsaw"})  # checked when parsed, before anything is built


# ------------------------------------------------------------------------------------------------------ UDA
def test_uda_sharpened_kl_and_mask_by_hand():
    strong = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]])
    target = torch.tensor([[3.0, 0.0, 0.0], [0.1, 0.0, 0.05]])
    tau, beta = 0.4, 0.8
    loss, mask = uda_consistency(strong, target, tau, beta)
    expected_mask = []
    kls = []
    for i in range(2):
        p_sharp = [math.exp(v / tau) for v in target[i].tolist()]
        p_sharp = [v / sum(p_sharp) for v in p_sharp]
        q = [math.exp(v) for v in strong[i].tolist()]
        q = [v / sum(q) for v in q]
        kls.append(sum(a * math.log(a / b) for a, b in zip(p_sharp, q)))
        p = [math.exp(v) for v in target[i].tolist()]
        expected_mask.append(float(max(p) / sum(p) > beta))  # the unsharpened confidence
    assert mask.tolist() == expected_mask == [1.0, 0.0]
    assert float(loss) == pytest.approx(sum(k * m for k, m in zip(kls, expected_mask)) / 2, rel=1e-5)
    no_mask, _ = uda_consistency(strong, target, tau, 0.0)
    assert float(no_mask) == pytest.approx(sum(kls) / 2, rel=1e-5)
    assert float(uda_consistency(target, target, 1.0, 0.0)[0]) == pytest.approx(0.0, abs=1e-6)  # KL(p‖p) = 0


def test_uda_target_gets_no_gradient():
    strong = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3, requires_grad=True)
    loss, _ = uda_consistency(strong, target, 0.4, 0.0)
    loss.backward()
    assert target.grad is None and strong.grad.abs().sum() > 0


def test_tsa_threshold_schedules():
    k = 10
    for schedule in ("linear", "log", "exp"):
        assert tsa_threshold(schedule, 100, 100, k) == pytest.approx(1.0, abs=1e-12 if schedule != "log" else 0.01)
    assert tsa_threshold("linear", 0, 100, k) == pytest.approx(0.1)
    assert tsa_threshold("log", 0, 100, k) == pytest.approx(0.1)
    assert tsa_threshold("exp", 0, 100, k) == pytest.approx(math.exp(-5) * 0.9 + 0.1)
    assert tsa_threshold("linear", 50, 100, k) == pytest.approx(0.5 * 0.9 + 0.1)
    assert tsa_threshold("log", 50, 100, k) == pytest.approx((1 - math.exp(-2.5)) * 0.9 + 0.1)
    assert tsa_threshold("exp", 50, 100, k) == pytest.approx(math.exp(-2.5) * 0.9 + 0.1)
    assert tsa_threshold("log", 20, 100, k) > tsa_threshold("linear", 20, 100, k) > tsa_threshold("exp", 20, 100, k)
    assert tsa_threshold("off", 0, 100, k) == 1.0
    with pytest.raises(ValueError):
        tsa_threshold("cosine", 0, 100, k)


def test_tsa_cross_entropy_masks_confident_examples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.1]], requires_grad=True)
    y = torch.tensor([0, 1, 2])
    p_correct = F.softmax(logits, -1)[torch.arange(3), y]
    eta = 0.5  # the first example (p ≈ 0.96) is masked out
    loss, keep = tsa_cross_entropy(logits, y, eta)
    assert keep.tolist() == [0.0, 1.0, 1.0] and bool(p_correct[0] > eta)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert float(loss) == pytest.approx(float((ce[1] + ce[2]) / 2), rel=1e-6)
    loss.backward()
    assert logits.grad[0].abs().sum() == 0  # no training signal from the masked example
    everything, keep_all = tsa_cross_entropy(logits, y, 1.0)
    assert keep_all.sum() == 3 and float(everything) == pytest.approx(float(ce.mean()), rel=1e-6)


def test_uda_step_no_gradient_through_the_weak_view():
    model = tiny_vit()
    method = UDA(model, UDAParams(threshold=0.0, mu=2, tsa="linear"), 3, 10)
    g = torch.Generator().manual_seed(4)
    weak = torch.rand(8, 1, 8, 8, generator=g, requires_grad=True)
    batch = Batch(x={"weak": torch.rand(4, 1, 8, 8, generator=g)}, y=torch.tensor([0, 1, 2, 0]),
                  u={"weak": weak, "strong": torch.rand(8, 1, 8, 8, generator=g)},
                  u_true=torch.tensor([0, 1, 2, 0, 1, 2, -1, 0]))
    out = method.training_step(batch, 5)
    out.loss.backward()
    # p_θ̃(y|x) is a constant target: the weak views share the forward (as the official code) but their logits
    # are detached, so with a LayerNorm ViT no gradient reaches them
    assert weak.grad is None or torch.count_nonzero(weak.grad) == 0
    assert model.backbone.head.weight.grad.abs().sum() > 0
    assert float(out.metrics["tsa_eta"]) == pytest.approx(tsa_threshold("linear", 5, 10, 3))
    assert float(out.metrics["mask"]) == 1.0 and "pseudo_acc" in out.metrics


# ------------------------------------------------------------------------------------- feature distillation
def test_feature_regression_losses():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 6, generator=g, requires_grad=True), torch.randn(4, 6, generator=g, requires_grad=True)
    cos = F.cosine_similarity(s, t, dim=-1)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    regress = feature_regression_loss(s, t, "regress")
    assert float(regress) == pytest.approx(float(((sn - tn) ** 2).sum(-1).mean()), rel=1e-5)
    assert float(regress) == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-5)
    assert float(feature_regression_loss(s, t, "cosine")) == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert float(feature_regression_loss(s, t, "mse")) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-5)
    regress.backward()
    assert t.grad is None and s.grad is not None  # the teacher is a fixed target
    with pytest.raises(ValueError):
        feature_regression_loss(s, t, "l1")


def test_feature_distill_student_head_and_frozen_teacher(tmp_path):
    teacher_path = saved_teacher(tmp_path, embed_dim=48)  # a wider teacher than the student
    student = tiny_vit(embed_dim=32)
    method = FeatureDistill(student, FeatureDistillParams(teacher=teacher_path, head_layers=3), 3, 10)
    assert method.head.net[-1].out_features == 48 and method.head.net[0].in_features == 32
    method.train()
    assert not method.teacher.training
    x = torch.rand(6, 1, 8, 8)
    out = method.training_step(Batch(u={"weak": x}), 0)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        expected = feature_regression_loss(method.head(student.features(x)), method.teacher.features(x))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    exported = method.export_model()
    assert exported is student and not any("net." in k for k in exported.state_dict())  # the MLP is dropped


def test_feature_distill_from_the_teachers_projection_layer(tmp_path):
    from semivit.errors import SemivitError

    teacher_path = saved_teacher(tmp_path, head_layers=1, head_hidden=24)
    method = FeatureDistill(tiny_vit(), FeatureDistillParams(teacher=teacher_path, teacher_embedding="head",
                                                             head_layers=2), 3, 10)
    assert method.head.net[-1].out_features == 24  # the projection layer's width, not the backbone's
    method.training_step(Batch(u={"weak": torch.rand(4, 1, 8, 8)}), 0).loss.backward()
    plain = saved_teacher(tmp_path / "plain")
    with pytest.raises(SemivitError, match="projection-head layers"):
        FeatureDistill(tiny_vit(), FeatureDistillParams(teacher=plain, teacher_embedding="head"), 3, 10)
    with pytest.raises(SemivitError, match="needs a teacher"):
        FeatureDistill(tiny_vit(), FeatureDistillParams(), 3, 10)



def test_disco_adds_the_students_own_contrastive_loss(tmp_path):
    from semivit.methods.losses import nt_xent

    teacher_path = saved_teacher(tmp_path)
    student = tiny_vit()
    params = FeatureDistillParams(teacher=teacher_path, head_layers=2, view="contrastive", contrastive_weight=0.5)
    method = FeatureDistill(student, params, 3, 10)
    assert method.unlabeled_views == ("contrastive", "contrastive:2")
    method.train()
    g = torch.Generator().manual_seed(9)
    x1, x2 = torch.rand(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)
    out = method.training_step(Batch(u={"contrastive": x1, "contrastive:2": x2}), 0)
    out.loss.backward()
    assert student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():  # L = mean regression over both views + λ'·NT-Xent of the student's two outputs
        z1, z2 = method.head(student.features(torch.cat([x1, x2]))).chunk(2)  # one pass: the head's BN sees both
        t1, t2 = method.teacher.features(x1), method.teacher.features(x2)
        reg = (feature_regression_loss(z1, t1) + feature_regression_loss(z2, t2)) / 2
        expected = reg + 0.5 * nt_xent(z1, z2, 0.2)[0]
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-4)
    assert float(out.metrics["loss_con"]) > 0 and "con_acc" in out.metrics
    from semivit.errors import SemivitError

    with pytest.raises(SemivitError, match="contrastive_weight"):
        FeatureDistill(tiny_vit(), FeatureDistillParams(teacher=teacher_path, contrastive_weight=-1), 3, 10)

# ------------------------------------------------------------------------------------------- Noisy Student
def _noisy_batch(n_l=4, n_u=8):
    g = torch.Generator().manual_seed(6)
    clean = torch.rand(n_u, 1, 8, 8, generator=g)
    return Batch(x={"strong": torch.rand(n_l, 1, 8, 8, generator=g)}, y=torch.tensor([0, 1, 2, 0][:n_l]),
                 u={"none": clean, "strong": torch.rand(n_u, 1, 8, 8, generator=g)},
                 u_true=torch.tensor([0, 1, 2, 0, 1, 2, -1, 0][:n_u]))


def test_noisy_student_teacher_is_frozen_and_labels_the_clean_view(tmp_path):
    teacher_path = saved_teacher(tmp_path, drop_path=0.5)  # drop-path would make a noised teacher random
    student = tiny_vit(drop_path=0.0)
    method = NoisyStudent(student, NoisyStudentParams(teacher=teacher_path, dropout=0.0), 3, 10)
    assert method.unlabeled_views == ("none", "strong") and method.labeled_views == ("strong",)
    method.train()
    assert student.training and not method.teacher.training  # noised student, clean teacher
    batch = _noisy_batch()
    out = method.training_step(batch, 0)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert student.backbone.head.weight.grad.abs().sum() > 0
    # the targets are the teacher's probabilities on the clean view, learned on the strong view
    with torch.no_grad():
        t_probs = F.softmax(method.teacher(batch.u["none"]), -1)
        student.eval()
        logits_u = student(batch.u["strong"])
        logits_l = student(batch.x["strong"])
    expected_u = -(t_probs * F.log_softmax(logits_u, -1)).sum(-1).mean()
    assert float(out.metrics["loss_u"]) == pytest.approx(float(expected_u), rel=1e-4)
    assert float(out.metrics["loss_x"]) == pytest.approx(float(F.cross_entropy(logits_l, batch.y)), rel=1e-4)
    # changing the noised view does not change the pseudo-labels; changing the clean one does
    targets, _, _ = method.pseudo_labels(batch.u["none"])
    assert torch.allclose(targets, t_probs, atol=1e-6)
    assert not torch.allclose(method.pseudo_labels(batch.u["strong"])[0], t_probs)



def test_noisy_student_balancing_weights_classes_by_their_running_share(tmp_path):
    method = NoisyStudent(tiny_vit(drop_path=0.0), NoisyStudentParams(teacher=saved_teacher(tmp_path),
                                                                      balance=True, dropout=0.0), 3, 10)
    hard = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0])
    mask = torch.tensor([True] * 7 + [False])  # the last image is filtered out: not counted
    w = method.balance_weights(hard, mask)
    assert method.class_counts.tolist() == [4.0, 2.0, 1.0]
    share = torch.tensor([4 / 7, 2 / 7, 1 / 7])
    assert torch.allclose(w, (1 / (3 * share))[hard])  # w_c = 1 / (C · π̂_c): the rare class weighs most
    totals = [float(w[:7][hard[:7] == c].sum()) for c in range(3)]
    assert totals == pytest.approx([7 / 3] * 3)  # every class carries the same weight; the mean weight is 1
    method.balance_weights(torch.tensor([2, 2]), torch.tensor([True, True]))  # counts accumulate
    assert method.class_counts.tolist() == [4.0, 2.0, 3.0] and "class_counts" in method.state_dict()
    out = method.training_step(_noisy_batch(), 0)  # the loss runs with the weights
    assert "weight_max" in out.metrics and torch.isfinite(out.loss)

def test_noisy_student_hard_labels_filter_and_dropout(tmp_path):
    teacher_path = saved_teacher(tmp_path)
    student = tiny_vit(drop_path=0.0)
    method = NoisyStudent(student, NoisyStudentParams(teacher=teacher_path, soft=False, threshold=1.01,
                                                      teacher_view="weak", dropout=0.3), 3, 10)
    assert student.backbone.head_drop.p == 0.3  # dropout noise before the classifier
    batch = _noisy_batch()
    batch.u["weak"] = batch.u.pop("none")
    targets, conf, hard = method.pseudo_labels(batch.u["weak"])
    assert torch.equal(targets, F.one_hot(hard, 3).float()) and bool((conf <= 1).all())
    out = method.training_step(batch, 0)
    assert float(out.metrics["loss_u"]) == 0.0 and float(out.metrics["mask"]) == 0.0  # nothing passes 1.01
    from semivit.errors import SemivitError

    with pytest.raises(SemivitError, match="classes"):
        NoisyStudent(tiny_vit(5), NoisyStudentParams(teacher=teacher_path), 5, 10)
    with pytest.raises(SemivitError, match="dropout"):
        set_head_dropout(tiny_vit(), 1.5)


# ------------------------------------------------------------------------------------------------- recipes
NEW_RECIPES = ["byol", "s4l", "uda", "noisy-student", "byol-disco"]
TINY = {"data.labels": "2-per-class", "train.steps": 2, "train.batch_size": 8, "train.eval_every": 0,
        "train.log_every": 1, "train.ckpt_every": 2, "train.progress": False, "train.tensorboard": False,
        "model.depth": 1, "model.embed_dim": 32, "model.num_heads": 2}


def test_teacher_stages_take_the_previous_stage(tmp_path):
    """A distillation stage gets the previous stage as its teacher and a fresh student; any other stage starts
    from the previous stage's weights (the flag each method declares, not a list kept in the pipeline)."""
    from semivit.methods import METHODS
    from semivit.pipeline import run_recipe
    from semivit.report.runs import run_config

    assert {n for n, c in METHODS.items() if c.previous_stage_is_teacher} == {"distill", "noisy_student",
                                                                             "feature_distill"}
    recipe = {"name": "r", "stages": [{"method": "supervised"}, {"method": "noisy_student"}, {"method": "supervised"}]}
    run_recipe(recipe, {**TINY, "train.out": str(tmp_path), "train.steps": 2})
    stages = sorted((tmp_path / "r").iterdir())
    second, third = run_config(stages[1]), run_config(stages[2])
    assert second.method["teacher"] == str(stages[0] / "checkpoints" / "model.safetensors")
    assert second.model.pretrained == "auto"  # the student starts from scratch
    assert third.model.pretrained == str(stages[1] / "checkpoints" / "model.safetensors")


@pytest.mark.parametrize("recipe", NEW_RECIPES)
def test_new_recipes_run_end_to_end(recipe, tmp_path):
    from semivit.config import load_yaml
    from semivit.pipeline import find_recipe, run_recipe

    stages = load_yaml(find_recipe(recipe))["stages"]
    result = run_recipe(recipe, {**TINY, "train.out": str(tmp_path)})
    root = next(tmp_path.iterdir())
    dirs = sorted(p.name for p in root.iterdir())
    assert dirs == [f"stage{k}-{s['method']}" for k, s in enumerate(stages, 1)]
    for k, stage in enumerate(stages, 1):
        config = (root / f"stage{k}-{stage['method']}" / "config.yaml").read_text()
        if stage["method"] in ("noisy_student", "feature_distill"):  # the previous stage is the teacher
            assert f"stage{k - 1}-{stages[k - 2]['method']}/checkpoints/model.safetensors" in config
            assert "pretrained: auto" in config  # and the student starts from scratch (vit_nano: no weights)
    assert_reported_top1(result.model, result.metrics["test_top1"])
