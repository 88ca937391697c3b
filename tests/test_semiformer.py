"""Semiformer: the dual-stream model's coupling units, the method's pseudo-labels, warm-up and gradients."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semivit.cli import main
from semivit.data.loaders import Batch
from semivit.engine.checkpoint import export_weights, load_model
from semivit.engine.trainer import train
from semivit.errors import SemivitError
from semivit.methods.semiformer import Semiformer, SemiformerParams, unlabeled_start
from semivit.models.factory import create_model
from semivit.models.pretrained import load_pretrained
from semivit.models.semiformer import CouplingDown, DualStreamClassifier

from .conftest import tiny_config

SMALL = {"depth": 3, "embed_dim": 32, "num_heads": 2}


def tiny(num_classes=3, chans=1, size=8, **kwargs) -> DualStreamClassifier:
    torch.manual_seed(0)
    model = create_model("semiformer_tiny", num_classes, chans, size, **{**SMALL, **kwargs})
    assert isinstance(model, DualStreamClassifier)
    return model


def batch(n=4, mu=2, size=8, strong=None) -> Batch:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    u = torch.rand(n * mu, 1, size, size, generator=g)
    return Batch(x={"weak": x}, y=torch.arange(n) % 3,
                 u={"weak": u, "strong": u.flip(-1) if strong is None else strong},
                 u_index=torch.arange(n * mu), u_true=torch.arange(n * mu) % 3)


@pytest.mark.parametrize("size,chans,patch", [(8, 1, 4), (8, 1, 2), (16, 1, 2), (28, 1, 4), (32, 3, 4),
                                              (32, 3, 8), (96, 3, 16)])
def test_coupling_shapes_at_several_image_and_patch_sizes(size, chans, patch):
    model = tiny(5, chans, size, patch_size=patch)
    net = model.backbone
    grid = size // patch
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i, kind=kind: seen.append((kind, i, args, out)))
             for kind, mods in (("down", net.down), ("up", net.up)) for i, m in enumerate(mods)]
    x = torch.rand(2, chans, size, size)
    logits = model.stream_logits(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * len(net.blocks)
    for kind, i, args, out in seen:
        if kind == "down":  # conv map (B×C×h×w, never coarser than the token grid) → one vector per patch
            conv_map = args[0]
            assert conv_map.shape[-1] == net.map_sizes[i] >= grid
            assert out.shape == (2, grid * grid, 32)
        else:  # patch tokens → a map the size of the conv map it is added to
            assert args[0].shape == (2, grid * grid, 32)
            assert out.shape[-2:] == (net.map_sizes[i], net.map_sizes[i])
            assert out.shape[1] == net.conv_blocks[i].body[-1].num_features
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"conv": (2, 5), "transformer": (2, 5),
                                                              "fused": (2, 5)}
    assert model.features(x).shape == (2, net.num_features)
    assert model.spec.kwargs["patch_size"] == patch
    if size > 64:  # ResNet stem (1/4), then halved down to the grid: 24 → 12 → 6 for 96 px / 16-px patches
        assert net.map_sizes == [24, 12, 6]


def test_coupling_down_pools_then_projects_like_project_then_pool():
    torch.manual_seed(0)
    down = CouplingDown(8, 16, (2, 2))
    x = torch.randn(3, 8, 8, 8)
    reference = F.avg_pool2d(down.proj(x), 4).flatten(2).transpose(1, 2)  # the paper's order: 1×1 conv, pool
    assert torch.allclose(down(x), F.gelu(down.norm(reference)), atol=1e-5)


def test_forward_is_the_fused_prediction_and_the_model_reloads(tmp_path):
    model = tiny().eval()
    x = torch.rand(4, 1, 8, 8)
    streams = model.stream_logits(x)
    fused = 0.5 * (streams["conv"].softmax(-1) + streams["transformer"].softmax(-1))
    assert torch.allclose(model(x).softmax(-1), fused, atol=1e-6)
    assert torch.allclose(streams["fused"], model(x), atol=1e-6)
    export_weights(model, tmp_path / "m.safetensors", model.spec.to_dict())
    again, _ = load_model(tmp_path / "m.safetensors")
    assert isinstance(again, DualStreamClassifier) and len(again.backbone.blocks) == 3
    assert torch.allclose(again(x), model(x), atol=1e-6)
    assert torch.allclose(again.stream_logits(x)["conv"], streams["conv"], atol=1e-6)


def test_vit_weights_load_into_the_transformer_stream(tmp_path):
    vit = create_model("vit_nano", 3, 1, 8, **SMALL)
    export_weights(vit, tmp_path / "vit.safetensors", vit.spec.to_dict())
    model = tiny()
    report = load_pretrained(model, tmp_path / "vit.safetensors", verbose=False)
    assert not report["unexpected"] and not report["skipped"]
    assert all(k.startswith(("backbone.stem", "backbone.conv", "backbone.down", "backbone.up"))
               for k in report["missing"])  # only the conv stream and the coupling units start fresh
    assert torch.equal(model.backbone.blocks[2].attn.qkv.weight, vit.backbone.blocks[2].attn.qkv.weight)


def test_pseudo_label_source_switch():
    conv = torch.tensor([[4.0, 0.0, 0.0]])  # p_c = (.96, .02, .02)
    trans = torch.tensor([[0.0, 3.0, 0.0]])  # p_t = (.05, .91, .05); fused ½(p_c + p_t) = (.50, .46, .03)
    expected = {"conv": (0, 0.9647), "transformer": (1, 0.9094), "fused": (0, 0.5050)}
    for source, (label, conf) in expected.items():
        method = Semiformer(tiny(), SemiformerParams(pseudo_source=source), 3, 10)
        method.model.stream_logits = lambda x: {"conv": conv, "transformer": trans,
                                                "fused": torch.log(0.5 * (conv.softmax(-1) + trans.softmax(-1)))}
        c, pseudo, _ = method.pseudo_labels(torch.zeros(1, 1, 8, 8))
        assert int(pseudo) == label and float(c) == pytest.approx(conf, abs=1e-3)
    with pytest.raises(SemivitError, match="pseudo_source must be conv, transformer or fused"):
        Semiformer(tiny(), SemiformerParams(pseudo_source="cnn"), 3, 10)
    with pytest.raises(SemivitError, match="teacher_mode must be train or eval"):
        Semiformer(tiny(), SemiformerParams(teacher_mode="ema"), 3, 10)


@pytest.mark.parametrize("source", ["conv", "transformer", "fused"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pseudo_labels_come_from_the_chosen_head(source, mode):
    model = tiny(drop_path=0.0)  # deterministic in train mode too
    b = batch()
    with torch.no_grad():  # train mode: BatchNorm batch statistics; eval mode: running statistics
        heads = model.train(mode == "train").stream_logits(b.u["weak"])
    model.train()
    b.u_true = heads[source].argmax(-1)  # "hidden labels" = the chosen head's predictions
    params = SemiformerParams(threshold=0.0, mu=2, warmup_u=0, pseudo_source=source, teacher_mode=mode)
    out = Semiformer(model, params, 3, 10).training_step(b, 0)
    assert model.training  # put back in training mode after labelling
    assert out.metrics["mask"] == 1 and out.metrics["pseudo_acc"] == 1
    assert out.metrics[f"weak_acc_{source}"] == 1
    others = [s for s in ("conv", "transformer") if s != source and not torch.equal(heads[s].argmax(-1), b.u_true)]
    assert others and all(out.metrics[f"weak_acc_{s}"] < 1 for s in others)  # the heads do disagree here


def test_no_unlabeled_loss_before_the_warm_up_ends():
    assert unlabeled_start(0.05, 600) == 30 and unlabeled_start(30, 600) == 30
    method = Semiformer(tiny(), SemiformerParams(threshold=0.0, mu=2, warmup_u=0.5), 3, 10)
    assert method.start_step == 5
    nan_strong = torch.full((8, 1, 8, 8), float("nan"))  # the strong views are not even looked at
    out = method.training_step(batch(strong=nan_strong), 4)
    assert torch.isfinite(out.loss) and out.metrics["u_active"] == 0 and out.metrics["loss_u"] == 0
    assert float(out.loss.detach()) == pytest.approx(float(out.metrics["loss_x"]))
    assert out.metrics["mask"] == 1  # pseudo-labels are still measured during the warm-up
    out = method.training_step(batch(), 5)
    assert out.metrics["u_active"] == 1 and out.metrics["loss_u"] > 0
    assert float(out.loss.detach()) == pytest.approx(float(out.metrics["loss_x"] + 4.0 * out.metrics["loss_u"]),
                                                     rel=1e-5)


def test_unlabeled_streams_and_threshold():
    method = Semiformer(tiny(), SemiformerParams(threshold=0.0, mu=2, warmup_u=0, unlabeled_streams="transformer"),
                        3, 10)
    out = method.training_step(batch(), 0)
    assert out.metrics["loss_u_conv"] == 0 and out.metrics["loss_u_transformer"] > 0
    assert float(out.metrics["loss_u"]) == pytest.approx(0.5 * float(out.metrics["loss_u_transformer"]))
    method = Semiformer(tiny(), SemiformerParams(threshold=1.01, mu=2, warmup_u=0), 3, 10)
    out = method.training_step(batch(), 0)
    assert out.metrics["mask"] == 0 and out.metrics["loss_u"] == 0


def test_gradients_reach_both_streams():
    model = tiny()
    method = Semiformer(model, SemiformerParams(threshold=0.0, mu=2, warmup_u=0), 3, 10)
    method.training_step(batch(), 0).loss.backward()
    net = model.backbone
    parts = {"conv stem": net.stem, "conv blocks": net.conv_blocks, "conv head": net.conv_head,
             "patch embedding": net.patch_embed, "transformer blocks": net.blocks, "transformer head": net.head,
             "map → tokens": net.down, "tokens → map": net.up}
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # the Transformer head's loss alone reaches the conv stream through the coupling units
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model.stream_logits(batch().x["weak"])["transformer"], torch.tensor([0, 1, 2, 0])).backward()
    assert net.conv_head.weight.grad is None
    assert float(net.stem[0].weight.grad.abs().sum()) > 0  # (blocks' last BN starts at 0: reached via shortcuts)


def test_method_needs_a_dual_stream_model_and_names_are_checked():
    with pytest.raises(SemivitError, match="needs a dual-stream model"):
        Semiformer(create_model("vit_nano", 3, 1, 8, depth=1), SemiformerParams(), 3, 10)
    with pytest.raises(SemivitError, match="did you mean 'semiformer_tiny'"):
        create_model("semiformer_tny", 3, 1, 8)


def test_train_reports_each_stream_and_cli_evaluate_predict(tmp_path, capsys):
    cfg = tiny_config(tmp_path, **{"model.name": "semiformer_tiny", "model.depth": 2, "model.embed_dim": 32,
                                   "train.method": "semiformer", "train.steps": 4, "train.batch_size": 8,
                                   "train.eval_every": 0, "method": {"mu": 2, "warmup_u": 2}})
    result = train(cfg)
    metrics = json.loads((result.run_dir / "results.json").read_text())
    for part in ("val", "test"):
        for s in ("conv", "transformer", "fused"):
            assert 0 <= metrics[f"{part}_top1_{s}"] <= 1
    assert metrics["test_top1_fused"] == pytest.approx(metrics["test_top1"])
    model, _ = load_model(result.run_dir / "checkpoints" / "model.safetensors")
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)

    assert main(["evaluate", str(result.run_dir), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "conv top-1" in out and "transformer top-1" in out and "fused top-1" in out
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    assert main(["predict", str(result.run_dir), str(images), "-o", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 2 and {"label", "conv_label", "transformer_confidence"} <= rows[0].keys()
