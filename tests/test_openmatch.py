"""OpenMatch (issue 28): its losses against hand-computed values, deterministic inlier selection, the outlier
scores a run writes, and scores that separate a cluster of an unknown class from the known ones."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from semivit.data import prepare_data
from semivit.data.features import CachedFeatures
from semivit.data.loaders import Batch
from semivit.engine.evaluate import roc_auc
from semivit.engine.inputs import FeatureInputs
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.methods import method_params
from semivit.methods.openmatch import OpenMatch, outlier_score, ova_entropy, ova_loss, socr_loss
from semivit.models.factory import create_model
from semivit.models.heads import FeatureHead
from tests.conftest import tiny_config

# one image, K = 2 heads: [negative logits | positive logits]; head 0 at p+ = 3/4, head 1 at 1/2
ONE = torch.tensor([[0.0, 0.0, math.log(3), 0.0]])


def test_ova_loss_is_the_inlier_term_plus_the_hardest_negative():
    assert ova_loss(ONE, torch.tensor([0])).item() == pytest.approx(math.log(4 / 3) + math.log(2), abs=1e-5)
    # label 1: −log p_1^+ = log 2; the only negative is head 0 with p^- = 1/4
    assert ova_loss(ONE, torch.tensor([1])).item() == pytest.approx(math.log(2) + math.log(4), abs=1e-5)
    # K = 3, label 0: heads 1 and 2 at p^- = 1/2 and 1/5 → the harder one (−log 1/5) counts alone
    three = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, math.log(4)]])
    assert ova_loss(three, torch.tensor([0])).item() == pytest.approx(math.log(2) + math.log(5), abs=1e-5)


def test_ova_entropy_socr_and_outlier_score_by_hand():
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ova_entropy(ONE).item() == pytest.approx((h0 + math.log(2)) / 2, abs=1e-5)
    # head 0 moves from (1/2, 1/2) to (1/4, 3/4): 2 · (1/4)² ; head 1 does not move
    assert socr_loss(torch.zeros(1, 4), ONE).item() == pytest.approx(0.125, abs=1e-6)
    assert socr_loss(ONE, ONE).item() == 0
    # predicted class 0 → 1 − 3/4; predicted class 1 → 1 − 1/2
    assert outlier_score(torch.tensor([[2.0, 0.0]]), ONE).item() == pytest.approx(0.25, abs=1e-6)
    assert outlier_score(torch.tensor([[0.0, 2.0]]), ONE).item() == pytest.approx(0.5, abs=1e-6)


def _method(total: int = 100, **params) -> OpenMatch:
    torch.manual_seed(0)
    head = FeatureHead(torch.randn(50, 8), 3)
    return OpenMatch(head, method_params("openmatch", {"threshold": 0.0, **params}), 3, total)


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    u = {k: torch.randn(12, 8, generator=g) for k in ("weak", "weak:2", "strong")}
    return Batch(x={"weak": torch.randn(6, 8, generator=g)}, y=torch.arange(6) % 3, u=u,
                 u_true=torch.tensor([0, 1, 2, -1] * 3))


def test_inlier_selection_is_deterministic_and_fixmatch_waits_for_start_fix():
    batch = _batch()
    a, b = _method().training_step(batch, 50), _method().training_step(batch, 50)
    assert a.loss.item() == b.loss.item()
    assert a.metrics["inlier"].item() == b.metrics["inlier"].item()
    # τ = 0: every selected inlier is used after the warm-up (10% of 100 steps), none before it
    assert a.metrics["mask"].item() == a.metrics["inlier"].item()
    early = _method().training_step(batch, 9)
    assert early.metrics["mask"].item() == 0 and early.metrics["loss_u"].item() == 0
    assert OpenMatch.schedule(method_params("openmatch", {}), 1000) == {"start_fix": 100.0}
    assert OpenMatch.schedule(method_params("openmatch", {}), 500) == {"start_fix": 50.0}


@pytest.mark.parametrize("setting, value", [("inlier_cutoff", 1.5), ("threshold", -0.1), ("lambda_socr", -1.0),
                                            ("mu", 0.0)])
def test_bad_settings_are_refused_in_one_line(setting, value):
    with pytest.raises(SemivitError) as e:
        _method(**{setting: value})
    assert "\n" not in str(e.value) and setting in str(e.value)


def test_an_unknown_setting_is_refused():
    with pytest.raises(SemivitError):
        method_params("openmatch", {"inlier_cuttoff": 0.5})


def test_a_short_run_writes_one_outlier_score_per_unlabeled_image(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.method": "openmatch", "train.steps": 4, "train.eval_every": 0,
                                   "method": {"mu": 1.0}})
    trainer = Trainer(cfg)
    result = trainer.fit()
    with open(result.run_dir / "outlier_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(trainer.data.split.unlabeled)
    assert {r["id"] for r in rows} == {trainer.data.train.ids[i] for i in trainer.data.split.unlabeled.tolist()}
    assert all(0 <= float(r["outlier_score"]) <= 1 for r in rows)
    assert set(r["predicted"] for r in rows) <= set(trainer.data.train.classes)
    assert (result.run_dir / "test_outlier_scores.csv").is_file()
    assert "test_openset_auroc" not in json.loads((result.run_dir / "results.json").read_text())  # no unknowns


def _clusters(tmp_path):
    """8-D features: 3 known classes around 4·e_0, 4·e_1, 4·e_2 (10 labels each), and an unknown class around 0,
    like none of them, that only the unlabeled pool and the test set hold (label −1). (An unknown class along a
    direction the labeled images never vary in, 4·e_3, is not one a bias-free linear head can score: it uses
    that constant direction as its bias.)"""
    g = np.random.default_rng(0)
    n, m = 400, 200
    y_train, y_test = np.arange(n) % 4 - (np.arange(n) % 4 == 3) * 4, np.arange(m) % 4 - (np.arange(m) % 4 == 3) * 4
    np.savez(tmp_path / "pts.npz", x_train=g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), y_train=y_train,
             x_test=g.integers(0, 256, (m, 1, 8, 8), dtype=np.uint8), y_test=y_test)
    cfg = tiny_config(tmp_path, **{"data.source": str(tmp_path / "pts.npz"), "data.labels": "10-per-class",
                                   "data.val": "0"})
    data = prepare_data(cfg.data, 0)
    torch.manual_seed(0)

    def points(labels):
        centre = torch.cat([torch.eye(8), torch.zeros(1, 8)])[torch.where(labels < 0, 8, labels)] * 4
        return centre + 0.7 * torch.randn(len(labels), 8)

    train = points(data.train.labels)
    views = {"none": train, "weak": torch.stack([train + 0.2 * torch.randn_like(train) for _ in range(2)]),
             "strong": torch.stack([train + 0.5 * torch.randn_like(train) for _ in range(2)])}
    feats = CachedFeatures({k: v.half() for k, v in views.items()}, points(data.test.labels).half(), tmp_path, 0)
    backbone = create_model("vit_nano", 3, 1, 8, embed_dim=8, depth=1, num_heads=1, patch_size=4)
    return data, feats, backbone


def test_outlier_scores_separate_an_unknown_cluster_from_the_known_classes(tmp_path):
    data, feats, backbone = _clusters(tmp_path)
    assert data.train.num_classes == 3
    run = tiny_config(tmp_path, **{"data.val": "0", "train.method": "openmatch", "train.steps": 150,
                                   "train.batch_size": 8, "train.eval_every": 0, "optim.lr": 0.05,
                                   "optim.scale_lr": False, "optim.weight_decay": 0.0,
                                   "method": {"threshold": 0.7, "mu": 4.0}})
    head = FeatureHead(feats.train["none"], 3)
    result = Trainer(run, model=head, inputs=FeatureInputs(data, feats, backbone, torch.device("cpu"))).fit()
    assert result.metrics["test_top1"] > 0.95
    assert result.metrics["test_openset_auroc"] > 0.9, result.metrics
    with open(result.run_dir / "outlier_scores.csv") as f:
        scores = {r["id"]: float(r["outlier_score"]) for r in csv.DictReader(f)}
    truth = {data.train.ids[i]: int(data.train.labels[i]) for i in data.split.unlabeled.tolist()}
    ids = sorted(scores)
    pool_auroc = roc_auc(torch.tensor([scores[k] for k in ids]), torch.tensor([truth[k] < 0 for k in ids]))
    assert pool_auroc > 0.9, pool_auroc  # the unlabeled pool's unknowns, by the scores the run saved


def test_pseudolabels_and_suggest_read_an_openmatch_runs_outlier_scores(tmp_path):
    from semivit.labeling.pool import pool_from_run
    from semivit.labeling.pseudo import pseudo_labels, write_sheet
    from semivit.labeling.suggest import suggest

    cfg = tiny_config(tmp_path, **{"train.method": "openmatch", "train.steps": 2, "train.eval_every": 0,
                                   "method": {"mu": 1.0}})
    run_dir = Trainer(cfg).fit().run_dir
    pool = pool_from_run(run_dir)
    # known scores: every third candidate looks like none of the classes
    far = {pool.train.ids[i] for i in pool.candidates[::3].tolist()}
    with open(run_dir / "outlier_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "outlier_score", "predicted"])
        w.writerows([image_id, 0.9 if image_id in far else 0.1, "0"] for image_id in pool.train.ids)
    p = pseudo_labels(pool, threshold=0.0)
    assert {pool.train.ids[i] for i in p.indices[p.outside].tolist()} == far
    assert not (p.passes & p.outside).any() and p.passes[~p.outside].all()
    assert "none of your classes" in write_sheet(pool, p, tmp_path / "sheet.html").read_text()
    skipped = suggest(pool, 5, strategy="random", outliers="skip")
    targeted = suggest(pool, 5, strategy="random", outliers="target")
    assert not {pool.train.ids[i] for i in skipped.indices.tolist()} & far
    assert {pool.train.ids[i] for i in targeted.indices.tolist()} <= far and len(targeted) == 5
    with pytest.raises(SemivitError, match="outliers"):
        suggest(pool, 5, strategy="random", outliers="avoid")
    # the run report has the same sheet: the outliers' images, most unfamiliar first
    from semivit.report import write_report

    html = write_report(run_dir).read_text()
    assert "images that look like none of your classes" in html
    assert f"{len(far)} of {len(pool.train.ids)} unlabeled images score" in html
    assert html.count("outlier 0.90") == min(len(far), 48)


def test_openmatch_on_the_partial_path_trains_the_last_block_with_its_heads(tmp_path):
    """features.train_blocks (recipe partial-openmatch): the OVA heads read the trained block's pooled features,
    and their losses reach that block."""
    from semivit.models.tail import BackboneTail
    from tests.conftest import frozen_config

    cfg = frozen_config(tmp_path, **{"features.train_blocks": 1, "train.method": "openmatch", "train.steps": 4,
                                     "train.eval_every": 0, "method": {"mu": 1.0, "start_fix": 0}})
    trainer = Trainer(cfg)
    trainer.setup(write=False)
    method = trainer.method
    tail = method.model
    assert isinstance(tail, BackboneTail)
    cut = trainer.inputs.feats.train["none"][:4].float()
    logits, h = method.logits_and_features(cut)
    assert logits.shape == (4, trainer.data.train.num_classes) and h.shape[1] == method.ova.in_features
    ova_loss(method.ova(h), torch.zeros(4, dtype=torch.long)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tail.blocks[0].parameters())
    trainer = Trainer(cfg)
    result = trainer.fit()
    with open(result.run_dir / "outlier_scores.csv") as f:
        assert len(list(csv.DictReader(f))) == len(trainer.data.split.unlabeled)


@pytest.mark.slow
def test_the_exported_model_carries_the_outlier_head_to_predict_onnx_the_hub_and_python(tmp_path):
    """An openmatch run on cached features exports the backbone with its OVA heads folded into the raw features:
    on the test images it gives the outlier scores the run wrote (from the cache), and predict, ONNX, a hub
    folder and semivit.outlier_scores all give them too."""
    from PIL import Image

    import semivit
    from semivit.cli import main
    from semivit.engine.checkpoint import load_model
    from semivit.export import export_run
    from tests.conftest import frozen_config

    cfg = frozen_config(tmp_path, **{"train.method": "openmatch", "train.steps": 6, "train.eval_every": 0,
                                     "method": {"mu": 1.0, "start_fix": 0}})
    result = Trainer(cfg).fit()
    model, _ = load_model(result.run_dir / "checkpoints" / "model.safetensors")
    assert model.outlier_head is not None and model.spec.kwargs["outlier_head"] is True
    data = prepare_data(cfg.data, 0)
    with open(result.run_dir / "test_outlier_scores.csv") as f:
        written = torch.tensor([float(r["outlier_score"]) for r in csv.DictReader(f)])
    images = data.test.get(torch.arange(len(data.test))).float() / 255
    scores = semivit.outlier_scores(model, images)
    assert torch.allclose(scores, written, atol=2e-3), (scores - written).abs().max()  # the cache is half precision
    with pytest.raises(SemivitError, match="no outlier head"):
        semivit.outlier_scores(create_model("vit_nano", 3, 1, 8, embed_dim=8, depth=1, num_heads=1), images)
    # predict: an outlier_score column
    for i in range(2):
        Image.fromarray((images[i, 0] * 255).round().byte().numpy()).save(tmp_path / f"{i}.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(result.run_dir), str(tmp_path / "0.png"), str(tmp_path / "1.png"), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [float(r["outlier_score"]) for r in rows] == pytest.approx(scores[:2].tolist(), abs=1e-3)
    # a hub folder keeps the head beside the backbone
    hub, _ = export_run(result.run_dir, "hub")
    assert torch.allclose(semivit.outlier_scores(semivit.load(hub), images), scores, atol=1e-5)
    (hub / "outlier_head.safetensors").unlink()
    with pytest.raises(SemivitError, match="outlier head but .* is missing"):
        semivit.load(hub)
    # ONNX: logits and outlier_score
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path, _ = export_run(result.run_dir, "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "outlier_score"]
    _, got = session.run(None, {"images": images.numpy()})
    assert np.allclose(got, scores.numpy(), atol=1e-4)


def test_a_forged_outlier_head_entry_is_one_line():
    from semivit.models.spec_check import model_from_spec

    spec = {"name": "vit_nano", "num_classes": 3, "in_chans": 1, "image_size": 8,
            "kwargs": {"embed_dim": 8, "depth": 1, "num_heads": 1, "outlier_head": "yes"}}
    with pytest.raises(SemivitError, match="kwargs.outlier_head must be true"):
        model_from_spec(spec)
    spec["kwargs"]["outlier_head"] = True
    assert model_from_spec(spec).outlier_head.out_features == 6
