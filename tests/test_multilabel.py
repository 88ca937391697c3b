"""Several labels per image (issue 28): sources, splits, losses, pseudo-labels, metrics against scikit-learn, and
training, prediction and export end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, f1_score

from semivit.config import MultiLabelConfig
from semivit.data.imageset import ImageSet
from semivit.data.sources import load_source
from semivit.data.splits import make_split
from semivit.engine.multilabel_eval import choose_thresholds, f1_scores, mean_ap, multilabel_report, per_class_ap
from semivit.engine.trainer import Trainer
from semivit.errors import SemivitError
from semivit.methods.multilabel import MultiLabelPseudoLabels, asymmetric_loss, multilabel_loss
from tests.conftest import tiny_config


def digit_mosaics(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2×2 mosaics (16×16) of scikit-learn digits and their multi-hot labels (10 classes), seeded."""
    d = load_digits()
    x, y = (d.images * 16).clip(0, 255).astype(np.uint8), d.target
    pick = np.random.default_rng(seed).integers(0, len(x), size=(n, 4))
    images = np.zeros((n, 16, 16), np.uint8)
    targets = np.zeros((n, 10), np.int8)
    for slot, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        images[:, r:r + 8, c:c + 8] = x[pick[:, slot]]
        targets[np.arange(n), y[pick[:, slot]]] = 1
    return images, targets


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mosaics") / "mosaics.npz"
    x, y = digit_mosaics(600, 0)
    xt, yt = digit_mosaics(200, 1)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return path


# ------------------------------------------------------------------------------------------------- sources
def test_npz_targets_n_by_c_are_multilabel_and_bad_values_are_refused(mosaics: Path, tmp_path: Path) -> None:
    bundle = load_source(str(mosaics))
    assert bundle.train.multilabel and bundle.train.labels.dtype == torch.int8
    assert bundle.train.labels.shape == (600, 10) and bundle.test is not None and bundle.test.multilabel
    x, y = digit_mosaics(4, 0)
    y[0, 0] = 2
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(SemivitError, match="values other than 1, 0 and -1"):
        load_source(str(tmp_path / "bad.npz"))


def test_csv_labels_column_reads_a_bar_b_and_an_empty_cell_is_unlabeled(tmp_path: Path) -> None:
    from PIL import Image

    rows = [("a.png", "cat|dog"), ("b.png", "dog"), ("c.png", ""), ("d.png", "bird|cat")]
    for name, _ in rows:
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / name)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "labels"), *rows])
    train = load_source(str(tmp_path / "m.csv")).train
    assert train.classes == ["bird", "cat", "dog"]
    by_id = dict(zip(train.ids, train.labels.tolist()))
    assert by_id["a.png"] == [0, 1, 1] and by_id["b.png"] == [0, 0, 1] and by_id["c.png"] == [-1, -1, -1]
    assert train.known().tolist() == [True, True, False, True]


def test_hugging_face_sequence_of_classlabel_is_multilabel(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    feats = datasets.Features({"image": datasets.Image(),
                               "tags": datasets.Sequence(datasets.ClassLabel(names=["x", "y", "z"]))})
    pictures = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 20, 30)]
    d = datasets.Dataset.from_dict({"image": pictures, "tags": [[0, 2], [1], []]}, features=feats)
    d.save_to_disk(str(tmp_path / "hf"))
    train = load_source(str(tmp_path / "hf")).train
    assert train.classes == ["x", "y", "z"]
    assert train.labels.tolist() == [[1, 0, 1], [0, 1, 0], [-1, -1, -1]]


# -------------------------------------------------------------------------------------------------- splits
def _set(targets: np.ndarray) -> ImageSet:
    return ImageSet(torch.from_numpy(targets), [str(i) for i in range(len(targets))],
                    [str(c) for c in range(targets.shape[1])], 1, (2, 2), images=torch.zeros(len(targets), 1, 2, 2,
                                                                                             dtype=torch.uint8))


def test_multilabel_splits_are_seeded_and_cover_every_class() -> None:
    _, y = digit_mosaics(500, 3)
    train = _set(y)
    a, b = make_split(train, "3-per-class", "0", seed=1), make_split(train, "3-per-class", "0", seed=1)
    assert torch.equal(a.labeled, b.labeled)
    assert not torch.equal(a.labeled, make_split(train, "3-per-class", "0", seed=2).labeled)
    assert ((train.labels[a.labeled] == 1).sum(0) >= 3).all()
    total = make_split(train, "12", "0", seed=0)
    assert len(total.labeled) == 12 and ((train.labels[total.labeled] == 1).sum(0) >= 1).all()
    share = make_split(train, "10%", "20%-of-labels", seed=0)
    assert len(share.labeled) + len(share.val) == 50 and len(share.val) == 10
    assert not set(share.labeled.tolist()) & set(share.val.tolist())
    folds = [make_split(train, "40", f"fold-{k}-of-4", seed=0).val for k in (1, 2, 3, 4)]
    assert sorted(torch.cat(folds).tolist()) == sorted(make_split(train, "40", "0", seed=0).labeled.tolist())


# ---------------------------------------------------------------------------------------- losses, labels
def test_asymmetric_loss_matches_the_hand_computed_value() -> None:
    z = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([[1.0, 0.0]])
    p = 1 / (1 + math.exp(-1.0))
    positive = -math.log(p) * (1 - p) ** 1.0  # γ+ = 1
    q_neg = 1 / (1 + math.exp(-0.5))
    pm = max(q_neg - 0.05, 0.0)  # the shifted probability of the negative
    negative = -math.log(1 - pm) * pm ** 4.0
    got = asymmetric_loss(z, t, gamma_neg=4.0, gamma_pos=1.0, clip=0.05)
    assert got[0, 0].item() == pytest.approx(positive, rel=1e-5)
    assert got[0, 1].item() == pytest.approx(negative, rel=1e-5)
    cfg = MultiLabelConfig(loss="asl", gamma_pos=1.0)
    assert multilabel_loss(z, torch.tensor([[1, -1]]), cfg).item() == pytest.approx(positive, rel=1e-5)


def test_fixed_and_class_distribution_aware_pseudo_labels() -> None:
    fixed = MultiLabelPseudoLabels(2, MultiLabelConfig(negative_threshold=0.1), threshold=0.8)
    target, mask = fixed(torch.tensor([[0.85, 0.2], [0.05, 0.79]]), torch.tensor([[1, 0]]))
    assert target.tolist() == [[1, 0], [0, 0]] and mask.tolist() == [[True, False], [True, False]]
    # cap: class 0 is positive in 30% of the labeled images, class 1 in 70%; the teacher's probabilities are
    # uniform, so τ⁺ lands near the 70% / 30% quantiles and every entry gets a pseudo-label
    cap = MultiLabelPseudoLabels(2, MultiLabelConfig(thresholds="cap", cap_window=1), threshold=0.8)
    labeled = torch.tensor([[1, 1]] * 3 + [[0, 1]] * 4 + [[0, 0]] * 3)
    probs = torch.linspace(0.0005, 0.9995, 1000).unsqueeze(1).repeat(1, 2)
    target, mask = cap(probs, labeled)
    upper, lower = cap.thresholds()
    assert upper.tolist() == pytest.approx([0.7, 0.3], abs=0.01)
    assert lower.tolist() == pytest.approx([0.7, 0.3], abs=0.01)
    assert mask.all() and target.float().mean(0).tolist() == pytest.approx([0.3, 0.7], abs=0.01)
    assert "histogram" in cap.state_dict() and "histogram" not in fixed.state_dict()


def test_pseudo_mixup_of_label_sets_mixes_targets_and_keeps_only_entries_known_in_both_halves() -> None:
    from semivit.methods.multilabel import multilabel_pseudo_mixup

    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1).repeat(1, 3)
    probs = torch.tensor([[0.99, 0.01, 0.5], [0.9, 0.9, 0.1], [0.6, 0.02, 0.98], [0.02, 0.97, 0.5]])
    pseudo = (probs >= 0.5).to(torch.int8)
    mask = (probs >= 0.9) | (probs <= 0.05)
    mixed, targets, known = multilabel_pseudo_mixup(x, probs, pseudo, mask, "mixup", smoothing=0.0)
    conf = torch.maximum(probs, 1 - probs).mean(1)
    for i in range(4):  # recover each sample's partner from the mixed value
        lam_i = None
        for j in range(4):
            lam = conf[i] / (conf[i] + conf[j])
            if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6):
                lam_i, partner = lam, j
        assert lam_i is not None
        assert torch.allclose(targets[i], lam_i * pseudo[i] + (1 - lam_i) * pseudo[partner], atol=1e-6)
        assert known[i].tolist() == (mask[i] & mask[partner]).tolist()


@pytest.mark.parametrize("method", ["fixmatch", "ema_teacher"])
def test_pseudo_mixup_trains_on_label_sets(tmp_path: Path, mosaics: Path, method: str) -> None:
    more = {"method.mu": 2, "method.pseudo_mixup": "mixup", "train.steps": 4, "train.eval_every": 0}
    if method == "ema_teacher":
        more["method.ema"] = 0.9
    run = Trainer(_config(tmp_path, mosaics, method, **more)).fit()
    assert 0 < run.metrics["test_map"] <= 1
    logged = (run.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/mask_unmixed" in logged and "train/pseudo_acc" in logged


# ------------------------------------------------------------------------------------------------- metrics
def test_multilabel_metrics_match_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(300, 6, generator=g) < 0.3).to(torch.int8)
    logits = torch.randn(300, 6, generator=g) + 2.0 * targets
    y, s = targets.numpy(), logits.numpy()
    assert mean_ap(logits, targets) == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-9)
    assert per_class_ap(logits, targets) == pytest.approx(list(average_precision_score(y, s, average=None)))
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.5]
    pred = (torch.sigmoid(logits) >= torch.tensor(thresholds)).numpy()
    got = f1_scores(logits, targets, thresholds)
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    # thresholds chosen for F1 do at least as well as 0.5 on the images they were chosen on
    chosen = choose_thresholds(logits, targets)
    assert f1_scores(logits, targets, chosen)["macro_f1"] >= f1_scores(logits, targets, [0.5] * 6)["macro_f1"]
    # unknown entries (-1) are left out of every count
    masked = targets.clone()
    masked[:100] = -1
    report = multilabel_report(logits, masked, list("abcdef"), thresholds)
    assert report["map"] == pytest.approx(average_precision_score(y[100:], s[100:], average="macro"))
    assert report["per_class"]["a"]["positives"] == int(y[100:, 0].sum())


# --------------------------------------------------------------------------------------------- end to end
def _config(tmp_path: Path, mosaics: Path, method: str, **more):
    return tiny_config(tmp_path, **{"data.source": str(mosaics), "data.labels": "10%", "data.val": "20%-of-labels",
                                    "train.method": method, "train.steps": 16, "train.name": method,
                                    "train.batch_size": 16, **more})


@pytest.mark.slow
def test_supervised_and_fixmatch_train_report_map_and_export_their_thresholds(tmp_path: Path, mosaics: Path) -> None:
    from semivit.api import evaluate, load, predict

    sup = Trainer(_config(tmp_path, mosaics, "supervised", **{"multilabel.loss": "asl"})).fit()
    semi = Trainer(_config(tmp_path, mosaics, "fixmatch", **{"method.mu": 2, "multilabel.thresholds": "cap"})).fit()
    for run in (sup, semi):
        m = run.metrics
        assert 0 < m["test_map"] <= 1 and 0 <= m["test_micro_f1"] <= 1 and m["thresholds_from"] == "validation"
        assert m["labels_total"] == 60 and m["val_labeled"] == 12 and "test_top1" not in m
        spec = json.loads((run.run_dir / "test_report.json").read_text())
        assert spec["multilabel"] and len(spec["thresholds"]) == 10
    model = load(semi.run_dir)
    assert model.spec.multilabel and len(model.spec.thresholds) == 10
    x, y = digit_mosaics(50, 7)
    probs = predict(model, x)
    assert probs.shape == (50, 10) and not torch.allclose(probs.sum(1), torch.ones(50))  # sigmoid, not softmax
    report = evaluate(model, x, y)
    assert report["multilabel"] and 0 < report["map"] <= 1


@pytest.mark.slow
def test_predict_writes_label_sets_and_onnx_carries_the_thresholds(tmp_path: Path, mosaics: Path) -> None:
    from PIL import Image

    from semivit.cli import main
    from semivit.export import export_run

    run = Trainer(_config(tmp_path, mosaics, "supervised")).fit()
    x, _ = digit_mosaics(3, 9)
    for i in range(3):
        Image.fromarray(x[i]).save(tmp_path / f"{i}.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run.run_dir), str(tmp_path / "0.png"), str(tmp_path / "1.png"), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:2] == ["path", "labels"] and len(rows) == 2
    spec_thresholds = json.loads((run.run_dir / "test_report.json").read_text())["thresholds"]
    for row in rows:
        chosen = {c for c, t in zip(map(str, range(10)), spec_thresholds) if float(row[c]) >= t - 1e-4}
        assert set(filter(None, row["labels"].split("|"))) <= chosen
    hub, _ = export_run(run.run_dir, "hub")  # the hub folder's config.json carries them too
    from semivit.api import load

    assert load(hub).spec.thresholds == pytest.approx(spec_thresholds)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path, _ = export_run(run.run_dir, "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probs", "labels"]
    images = torch.from_numpy(x[:, None]).float().numpy() / 255
    logits, probs, labels = session.run(None, {"images": images})
    assert np.array_equal(labels, (probs >= np.array(spec_thresholds)).astype(np.uint8))


def test_settings_that_cannot_apply_are_refused_in_one_line(tmp_path: Path, mosaics: Path) -> None:
    with pytest.raises(SemivitError, match="one class per image: drop the setting"):
        Trainer(tiny_config(tmp_path, **{"multilabel.loss": "asl"}))
    with pytest.raises(SemivitError, match="trains on one class per image"):
        Trainer(_config(tmp_path, mosaics, "simclr"))
    with pytest.raises(SemivitError, match="method.dist_align=uniform is for data with one class"):
        Trainer(_config(tmp_path, mosaics, "fixmatch", **{"method.dist_align": "uniform"}))
    with pytest.raises(SemivitError, match="add multilabel.loss=asl"):
        Trainer(_config(tmp_path, mosaics, "supervised", **{"multilabel.gamma_neg": 2.0}))


@pytest.mark.slow
def test_suggest_pseudolabels_and_accept_handle_label_sets(tmp_path: Path, mosaics: Path) -> None:
    from semivit.cli import main

    run = Trainer(_config(tmp_path, mosaics, "supervised")).fit()
    to_label = tmp_path / "to_label.csv"
    assert main(["suggest", str(run.run_dir), "--budget", "6", "--strategy", "uncertainty", "-o",
                 str(to_label)]) == 0
    rows = list(csv.DictReader(to_label.open()))
    assert len(rows) == 6 and "labels" in rows[0] and all(r["guess"] for r in rows)
    pseudo = tmp_path / "pseudo.csv"
    assert main(["pseudolabels", str(run.run_dir), "-o", str(pseudo), "--threshold", "0.6", "--html"]) == 0
    assert "with every class settled" in pseudo.with_suffix(".html").read_text()  # a section per class
    rows = list(csv.DictReader(pseudo.open()))
    assert list(rows[0]) == ["path", "labels", "unsure", "confidence", "passes", "keep"]
    confidence = [float(r["confidence"]) for r in rows]
    assert confidence == sorted(confidence)  # least confident first
    for r in rows[:3]:  # a reviewer keeps three rows, one with its labels corrected
        r["keep"] = "yes"
    rows[0]["labels"] = "1|7"
    with open(tmp_path / "reviewed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "merged.npz"
    assert main(["pseudolabels", str(run.run_dir), "--accept", str(tmp_path / "reviewed.csv"), "-o", str(out)]) == 0
    merged = np.load(out)
    y = merged["y"]
    assert y.shape == (600, 10) and int((y[:, 0] >= 0).sum()) == 60 + 3
    first = int(rows[0]["path"])
    assert y[first].tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
    assert load_source(str(out)).train.multilabel


def test_probe_baselines_for_label_sets() -> None:
    from semivit.engine.multilabel_eval import knn_scores, linear_probe_scores

    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=g) < 0.4).to(torch.int8)
    feats = targets.float() @ torch.randn(4, 16, generator=g) + 0.05 * torch.randn(200, 16, generator=g)
    # k = 1 and the query in the bank: its own label set
    assert torch.equal(knn_scores(feats, targets, feats[:5], k=1), (targets[:5] == 1).float())
    # separable classes: the one-vs-rest logistic regressions rank every test image right
    assert mean_ap(linear_probe_scores(feats[:150], targets[:150], feats[150:]), targets[150:]) == pytest.approx(1.0)
    assert mean_ap(knn_scores(feats[:150], targets[:150], feats[150:]), targets[150:]) > 0.9


@pytest.mark.slow
def test_labelcheck_flags_corrupted_label_sets_and_accept_merges_the_fix(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("cleanlab")
    import semivit
    from semivit.cli import main
    from semivit.labelcheck.check import precision_recall

    # images whose pixels say which classes they show (row c bright: class c present), so a linear model on
    # pixels recovers the true sets, and the corrupted ones stand out
    rng = np.random.default_rng(4)
    y = (rng.random((600, 10)) < 0.3).astype(np.int8)
    x = np.clip(rng.normal(40, 25, (600, 10, 10)) + 150.0 * y[:, :, None], 0, 255).astype(np.uint8)
    wrong = np.random.default_rng(0).choice(600, 60, replace=False)  # 10% of the label sets: one class flipped
    noisy = y.copy()
    for i, c in zip(wrong, np.random.default_rng(1).integers(0, 10, 60)):
        noisy[i, c] = 1 - noisy[i, c]
    path = tmp_path / "noisy.npz"
    np.savez(path, x=x, y=noisy)
    first = semivit.find_label_issues(str(path), encoder="pixels", seed=0)
    again = semivit.find_label_issues(str(path), encoder="pixels", seed=0)
    assert first.indices.tolist() == again.indices.tolist()  # the same flags for the same seed
    precision, recall = precision_recall(first.indices, wrong)
    assert precision > 0.5 and recall > 0.5, (precision, recall)  # chance: precision 0.1
    assert all(isinstance(g, tuple) for g in first.given)
    out = tmp_path / "issues.csv"
    assert main(["labelcheck", "--data", str(path), "--encoder", "pixels", "-o", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert "labels" in rows[0] and rows[0]["given"]
    rows[0]["keep"], rows[0]["labels"] = "yes", "2|5"
    with open(tmp_path / "reviewed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    merged = tmp_path / "fixed.npz"
    assert main(["labelcheck", "--data", str(path), "--accept", str(tmp_path / "reviewed.csv"), "-o",
                 str(merged), "-q"]) == 0
    assert np.load(merged)["y"][int(rows[0]["index"])].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0]


@pytest.mark.slow
def test_bench_scores_label_sets_by_map(tmp_path: Path, mosaics: Path) -> None:
    """A bench suite on multi-label data: every row is its last stage's test mAP, the table says mAP."""
    from semivit.bench import run_suite

    suite = tmp_path / "ml.yaml"
    suite.write_text(f"""
name: ml
seeds: [0]
budget: {{steps: 6}}
set: {{model.depth: 1, model.embed_dim: 32, model.num_heads: 2, train.batch_size: 8, train.eval_every: 3,
      data.val: 20%-of-labels}}
data:
  mosaics: {{source: {mosaics}, labels: [10%]}}
methods:
  supervised: {{method: supervised}}
  fixmatch: {{method: fixmatch, params: {{mu: 2}}}}
""")
    root = run_suite(suite, out=str(tmp_path / "out"))
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert {r["method"] for r in rows} == {"supervised", "fixmatch"} and {r["metric"] for r in rows} == {"map"}
    for r in rows:
        run = next((root / r["data"] / r["labels"] / r["method"] / "seed0").glob("stage*"))
        assert float(r["test_map_last"]) == pytest.approx(json.loads((run / "results.json").read_text())["test_map"])
        assert 0 < float(r["test_map_best"]) <= 1
    table = (root / "table.md").read_text()
    assert "test mAP (last)" in table and "test top-1" not in table.split("## ", 1)[1]


def test_commands_that_need_one_class_per_image_refuse_label_sets(tmp_path: Path, mosaics: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from semivit.cli import main

    for args in (["continual", "--data", str(mosaics), "--out", str(tmp_path), "-q"],):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "several labels per image" in err and "\n" not in err and "Traceback" not in err
