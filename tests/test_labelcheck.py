"""``semivit labelcheck``: confident learning (Cleanlab) on out-of-sample probabilities finds flipped labels of a
real labeled set (digits), the same flags for the same seed, and the reviewed CSV merges back into the labels
the next run reads."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image

import semivit
from semivit.cli import main
from semivit.data.sources import load_source
from semivit.engine.trainer import train
from semivit.labelcheck import find_issues, out_of_sample_probs, precision_recall
from tests.conftest import tiny_config

pytest.importorskip("cleanlab", reason="labelcheck's tests need Cleanlab (pip install 'semivit[labelcheck]')")

N = 400  # digits' first 400 training images: 5-fold logistic regression on their pixels is ~95% right
FLIP = 0.1


def _flip(labels: np.ndarray, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a seeded 10% changed to another class (uniformly), and the changed rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), int(FLIP * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, classes, len(rows))) % classes
    return noisy, rows


@pytest.fixture(scope="module")
def digits():
    train = load_source("digits").train
    return train.images[:N].numpy(), train.labels[:N].numpy()


@pytest.fixture(scope="module")
def noisy_npz(tmp_path_factory, digits):
    """Digits as arrays with 10% of the labels flipped (seed 0), and the flipped rows."""
    x, y = digits
    noisy, rows = _flip(y, 0)
    path = tmp_path_factory.mktemp("npz") / "noisy.npz"
    np.savez(path, x=x[:, 0], y=noisy, classes=np.array([str(c) for c in range(10)]))
    return path, rows


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_flipped_labels_are_found_and_clean_labels_are_not(digits):
    """On digits' pixels, the flags recover most flipped labels; on the same labels un-flipped, the same rows
    are (almost) never flagged, so the thresholds are ones the method has to earn."""
    from semivit.labelcheck.sources import PIXEL_SIDE  # noqa: F401 - pixels are the features for 8×8 images

    x, y = digits
    feats = x.reshape(len(x), -1).astype(float)
    noisy, rows = _flip(y, 0)
    issues = find_issues(noisy, out_of_sample_probs(feats, noisy, 5, 0))
    precision, recall = precision_recall(issues.indices, rows)
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
    assert (issues.suggested[np.isin(issues.indices, rows)] == y[issues.indices[np.isin(issues.indices, rows)]]
            ).mean() >= 0.8  # the suggestion is the true class for most right flags
    clean = find_issues(y, out_of_sample_probs(feats, y, 5, 0))
    assert precision_recall(clean.indices, rows)[1] < 0.2 and len(clean) < len(rows) / 2
    assert np.all(np.diff(issues.quality) >= -1e-12)  # worst first


def test_the_same_seed_flags_the_same_labels(noisy_npz, tmp_path):
    path, _ = noisy_npz
    a = semivit.find_label_issues(str(path), seed=3, out=tmp_path / "a.csv")
    b = semivit.find_label_issues(str(path), seed=3, out=tmp_path / "b.csv")
    assert a.ids == b.ids and np.array_equal(a.quality, b.quality)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    other = semivit.find_label_issues(str(path), seed=4)  # other folds: other probabilities
    assert not np.allclose(np.sort(other.quality)[:5], np.sort(a.quality)[:5])


def test_api_flags_the_flipped_rows_of_arrays(noisy_npz, tmp_path):
    path, rows = noisy_npz
    issues = semivit.find_label_issues(str(path), seed=0, out=tmp_path / "issues.csv")
    precision, recall = precision_recall(issues.indices, rows)
    assert precision >= 0.7 and recall >= 0.7 and issues.checked == N
    assert "5-fold logistic regression on raw pixels" in issues.source
    sheet = (tmp_path / "issues.html").read_text()
    assert sheet.count("<img src='data:image/png;base64,") == len(issues) and "http" not in sheet


def test_cli_csv_accept_round_trip_into_a_manifest(digits, tmp_path, capsys):
    """Image files with a CSV manifest of noisy labels → labelcheck → a review that accepts the suggestions →
    --accept → a manifest whose labels are the suggestions (the flipped ones mostly back to the truth), which a
    run then reads."""
    x, y = digits
    noisy, rows = _flip(y, 1)
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i in range(N):
            Image.fromarray(x[i, 0]).save(tmp_path / f"imgs/{i:03d}.png")
            writer.writerow([f"imgs/{i:03d}.png", int(noisy[i])])
    data = ["--data", str(tmp_path / "data.csv"), "--encoder", "pixels", "--seed", "0"]
    out = tmp_path / "issues.csv"
    assert main(["labelcheck", *data, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--accept" in printed and "labels.csv" in printed and (tmp_path / "issues.html").is_file()
    flagged = _rows(out)
    assert [int(r["rank"]) for r in flagged] == list(range(1, len(flagged) + 1))
    index = np.array([int(r["index"]) for r in flagged])
    order = [int(load_source(str(tmp_path / "data.csv")).train.ids[i].split("/")[-1][:3]) for i in index]
    assert precision_recall(np.array(order), rows)[1] >= 0.6
    assert all(r["keep"] == "" and r["label"] == r["suggested"] for r in flagged)  # nothing accepted unseen
    manifest = tmp_path / "fixed" / "labels.csv"
    assert main(["labelcheck", *data, "--accept", str(out), "-o", str(manifest)]) == 2  # nothing reviewed yet
    assert "no labeled rows" in capsys.readouterr().err
    # a reviewer accepts every suggestion but the first (keep = no: that row stays as it was)
    flagged = [{**r, "keep": "no" if n == 0 else "yes"} for n, r in enumerate(flagged)]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flagged[0]))
        w.writeheader()
        w.writerows(flagged)
    assert main(["labelcheck", *data, "--accept", str(out), "-o", str(manifest)]) == 0
    assert "replace the ones the data had" in capsys.readouterr().out
    fixed = {r["path"].split("/")[-1]: int(r["label"]) for r in _rows(manifest)}
    for r in flagged:
        name = r["path"].replace("\\", "/").split("/")[-1]
        assert fixed[name] == (int(r["given"]) if r["keep"] == "no" else int(r["label"]))
    fixed_y = np.array([fixed[f"{i:03d}.png"] for i in range(N)])
    assert (fixed_y != y).sum() < (noisy != y).sum() / 2  # most mistakes undone
    assert main(["train", "--data", str(manifest), "--labels", "all", "--out", str(tmp_path), "--name", "next",
                 "--set", "data.val=0", "--model", "vit_nano", "--set", "model.depth=1", "--set",
                 "model.embed_dim=32", "--set", "model.num_heads=2", "--steps", "2", "--batch-size", "8", "-q",
                 "--set", "train.tensorboard=false"]) == 0


def test_a_runs_labels_by_its_features_or_its_teacher(tmp_path, capsys):
    """RUN: k-fold over its training and validation labels on its model's features, or (--probs teacher) the
    teacher on the validation labels alone, the only ones it did not train on."""
    run = train(tiny_config(tmp_path, **{"data.labels": "5-per-class", "train.steps": 4})).run_dir
    import json

    split = json.loads((run / "split.json").read_text())
    assert main(["labelcheck", str(run), "-o", str(tmp_path / "k.csv"), "--no-html"]) == 0
    assert f"of {len(split['labeled']) + len(split['val'])} labels" in capsys.readouterr().out
    assert main(["labelcheck", str(run), "--probs", "teacher", "-o", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert f"of {len(split['val'])} labels" in out and "teacher" in out
    assert {r["path"] for r in _rows(tmp_path / "t.csv")} <= set(split["val"])


def test_without_cleanlab_one_line_names_the_extra(noisy_npz, monkeypatch, capsys):
    for name in ("cleanlab", "cleanlab.filter", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)  # import cleanlab now raises ImportError
    assert main(["labelcheck", "--data", str(noisy_npz[0]), "-o", "unused.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'semivit[labelcheck]'" in err


@pytest.mark.parametrize("args, message", [
    (["--data", "digits", "--folds", "1"], "at least 2 folds"),
    (["--data", "digits", "--probs", "teacher"], "needs a finished run"),
    (["runs/nope", "--data", "digits"], "not both"),
    (["--data", "digits", "--labels", "1-per-class", "--set", "data.val=0"], "too few to check"),
    (["--data", "digits", "--accept", "missing.csv", "-o", "l.npz"], "not found"),
])
def test_bad_input_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["labelcheck", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
