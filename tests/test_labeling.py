"""The labeling loop: selection rules (deterministic, distinct, unlabeled, no near-duplicates), suggest →
label → merge → the next run reads the labels, and the pseudo-label review."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from semivit.cli import main
from semivit.config import Config, apply_overrides
from semivit.data import prepare_data
from semivit.data.sources import load_source
from semivit.engine.trainer import train
from semivit.labeling import pool_from_data, pool_from_run, select, suggest
from tests.conftest import tiny_config

TINY = ["--model", "vit_nano", "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set",
        "model.num_heads=2", "--steps", "3", "--batch-size", "8", "-q", "--set", "train.tensorboard=false"]


def _blobs(seed: int = 0, per: int = 40, centers: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, 8)) * 4
    return select.normalize(np.concatenate([c[k] + rng.normal(size=(per, 8)) * 0.3 for k in range(centers)]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished supervised run on digits (3 labels per class + validation)."""
    tmp = tmp_path_factory.mktemp("run")
    return train(tiny_config(tmp, **{"data.labels": "3-per-class", "train.steps": 6})).run_dir


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- selection rules


@pytest.mark.parametrize("rule", ["typiclust", "probcover", "kmeans++", "kcenter", "random"])
def test_rules_pick_distinct_unlabeled_images_deterministically(rule):
    emb = _blobs()
    labeled = np.array([0, 1, 50])
    candidates = np.setdiff1d(np.arange(len(emb)), labeled)
    u = np.linspace(0, 1, len(emb)).astype(np.float32)

    def run(seed):
        if rule == "typiclust":
            return select.typiclust(emb, labeled, candidates, 12, seed)
        if rule == "probcover":
            return select.probcover(emb, labeled, candidates, 12, select.probcover_delta(emb, 4, seed))
        if rule == "kmeans++":
            return select.weighted_kmeanspp(emb, labeled, candidates, 12, u, seed)
        if rule == "kcenter":
            return select.kcenter_greedy(emb, labeled, candidates, 12, u)
        return select.random_choice(labeled, candidates, 12, seed)

    chosen, scores, clusters = run(0)
    assert len(chosen) == 12 == len(set(chosen.tolist())) == len(scores) == len(clusters)
    assert not set(chosen.tolist()) & set(labeled.tolist())
    assert np.array_equal(chosen, run(0)[0])


def test_typiclust_covers_uncovered_clusters_with_their_densest_image():
    emb = _blobs(per=30, centers=4)
    labeled = np.arange(0, 3)  # blob 0 is covered
    chosen, scores, clusters = select.typiclust(emb, labeled, np.arange(3, len(emb)), 3, seed=0)
    blobs = chosen // 30
    assert sorted(blobs.tolist()) == [1, 2, 3]  # one from each uncovered blob, none from the covered one
    for x, b in zip(chosen, blobs):
        members = np.arange(b * 30, (b + 1) * 30)
        typ = select.typicality(emb[members])
        assert x == members[np.argmax(typ)]  # the most typical image of its cluster


def test_probcover_delta_keeps_balls_pure_and_covers_every_blob_first():
    emb = _blobs(per=30, centers=3)
    delta = select.probcover_delta(emb, 3, seed=0)
    d = torch.cdist(torch.from_numpy(emb), torch.from_numpy(emb)).numpy()
    blob = np.arange(len(emb)) // 30
    pure = [(blob[d[i] < delta] == blob[i]).all() for i in range(len(emb))]
    assert np.mean(pure) >= select.PURITY and delta > 0
    chosen, gains, _ = select.probcover(emb, np.zeros(0, np.int64), np.arange(len(emb)), 3, delta)
    assert sorted((chosen // 30).tolist()) == [0, 1, 2] and (np.diff(gains) <= 0).all()


@pytest.mark.parametrize("rule", ["typiclust", "probcover", "kmeans++", "kcenter"])
def test_near_duplicates_of_labeled_images_are_never_chosen(rule):
    emb = _blobs(per=30, centers=3)
    # image 0 (labeled) sits at the centre of blob 0; images 1-3 are exact and near copies of it
    emb[0] = select.normalize(emb[:30].mean(0, keepdims=True))[0]
    emb[1] = emb[0]
    emb[2] = select.normalize(emb[[0]] + 1e-4)[0]
    emb[3] = select.normalize(emb[[0]] - 1e-4)[0]
    labeled, candidates = np.array([0]), np.arange(1, len(emb))
    radius = select.duplicate_radius(emb, 0)
    u = np.ones(len(emb), np.float32)
    u[1:4] = 5.0  # the copies are the most uncertain: a rule without the check would take them
    chosen = {"typiclust": lambda: select.typiclust(emb, labeled, candidates, 30, 0, radius),
              "probcover": lambda: select.probcover(emb, labeled, candidates, 30, select.probcover_delta(emb, 3),
                                                    radius),
              "kmeans++": lambda: select.weighted_kmeanspp(emb, labeled, candidates, 30, u, 0, radius),
              "kcenter": lambda: select.kcenter_greedy(emb, labeled, candidates, 30, u, radius=radius)}[rule]()[0]
    assert len(chosen) > 0 and not {1, 2, 3} & set(chosen.tolist())


def test_uncertainty_margin_and_entropy():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(select.uncertainty(p, "margin"), [0.0, 1.0, 1.0])
    assert np.allclose(select.uncertainty(p, "entropy"), [0.0, np.log(2) / np.log(3), 1.0], atol=1e-6)


# ---------------------------------------------------------------------------------------- suggest end to end


def test_cold_start_on_data_is_seeded_and_beats_random_at_class_coverage():
    pool = pool_from_data(apply_overrides(Config(), {"data.source": "digits"}), labels="0")
    a = suggest(pool, 10, encoder="pixels", seed=0)
    assert a.strategy == "typiclust" and len(set(a.indices.tolist())) == 10
    assert np.array_equal(a.indices, suggest(pool, 10, encoder="pixels", seed=0).indices)
    covered = len(set(pool.train.labels[a.indices].tolist()))
    random = [len(set(pool.train.labels[suggest(pool, 10, strategy="random", seed=s).indices].tolist()))
              for s in range(5)]
    assert covered >= 7 and covered >= np.mean(random)  # typical images of 10 clusters cover most digits


def test_a_precomputed_embedding_gives_the_same_choice_as_the_encoder():
    """A loop that asks one pool many times embeds it once: the same images as embedding each time."""
    from semivit.errors import SemivitError
    from semivit.labeling.pool import embed

    pool = pool_from_data(apply_overrides(Config(), {"data.source": "digits"}), labels="0")
    emb = embed(None, pool.train, seed=3)
    for strategy in ("typiclust", "probcover"):
        assert np.array_equal(suggest(pool, 12, strategy=strategy, encoder="pixels", seed=3).indices,
                              suggest(pool, 12, strategy=strategy, embedding=emb, seed=3).indices)
    with pytest.raises(SemivitError, match="rows for"):
        suggest(pool, 12, strategy="typiclust", embedding=emb[:-1])


def test_raw_pixels_on_colour_images_warn_to_use_an_encoder(tmp_path, caplog):
    """Measured on CIFAR-10 (benchmarks/RESULTS.md): pixels group colour images by colour, not class."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "colour.npz", x_train=rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(60) % 3)
    digits = pool_from_data(apply_overrides(Config(), {"data.source": "digits"}), labels="0")
    colour = pool_from_data(apply_overrides(Config(), {"data.source": str(tmp_path / "colour.npz")}), labels="0")
    with caplog.at_level("WARNING", logger="semivit"):
        suggest(digits, 5, encoder="pixels")
        assert "raw pixels" not in caplog.text
        suggest(colour, 5, encoder="pixels")
    assert "32x32 colour" in caplog.text and "--encoder" in caplog.text


def test_cold_start_embeds_with_a_pretrained_backbone_by_name(run_dir, tmp_path):
    """A backbone named like a hub model (local-dir:, offline) embeds the pool the same as its folder."""
    from semivit.export import export_run

    hub, _ = export_run(run_dir, "hub", tmp_path / "hub")
    pool = pool_from_data(apply_overrides(Config(), {"data.source": "digits"}), labels="0")
    by_name = suggest(pool, 5, encoder=f"local-dir:{hub}", seed=1)
    assert by_name.strategy == "typiclust" and by_name.guesses is None  # an encoder alone guesses nothing
    assert np.array_equal(by_name.indices, suggest(pool, 5, encoder=str(hub), seed=1).indices)


def test_suggest_from_run_then_accept_feeds_the_next_run(run_dir, tmp_path, capsys):
    out = tmp_path / "to_label.csv"
    assert main(["suggest", str(run_dir), "--budget", "6", "-o", str(out), "--strategy", "uncertainty"]) == 0
    rows = _rows(out)
    split = json.loads((run_dir / "split.json").read_text())
    ids = [r["path"] for r in rows]
    assert len(ids) == 6 == len(set(ids)) and not set(ids) & set(split["labeled"] + split["val"])
    assert all(r["guess"] and 0 <= float(r["confidence"]) <= 1 for r in rows)
    sheet = (tmp_path / "to_label.html").read_text()
    assert sheet.count("<img src='data:image/png;base64,") == 6 and "http" not in sheet
    # a person labels them (a simulation: the hidden labels), then merges
    train_part = load_source("digits").train
    for r in rows:
        r["label"] = train_part.classes[int(train_part.labels[train_part.ids.index(r["path"])])]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    listing = tmp_path / "labels.txt"
    assert main(["suggest", str(run_dir), "--accept", str(out), "-o", str(listing)]) == 0
    assert "next: semivit train --data digits --split" in capsys.readouterr().out
    data = prepare_data(apply_overrides(Config(), {"data.split": str(listing)}).data, 0)
    labeled_ids = {data.train.ids[i] for i in data.split.labeled.tolist()}
    assert set(ids) <= labeled_ids and set(split["labeled"]) <= labeled_ids
    # the same labels as arrays: the next run trains on exactly the merged labels
    arrays = tmp_path / "labels.npz"
    assert main(["suggest", str(run_dir), "--accept", str(out), "-o", str(arrays)]) == 0
    z = np.load(arrays)
    assert (z["y"] >= 0).sum() == len(split["labeled"]) + len(split["val"]) + 6 and "x_test" in z.files
    nxt = train(tiny_config(tmp_path, **{"data.source": str(arrays), "data.labels": "all", "train.steps": 2,
                                         "train.name": "round2"}))
    assert nxt.metrics["labels_total"] == int((z["y"] >= 0).sum()) and "test_top1" in nxt.metrics


def test_folder_of_images_csv_manifest_round_trip(tmp_path, capsys):
    """Real files: a CSV of 2 labels per class and an unlabeled rest → suggest → label → a manifest that
    a run trains on."""
    digits = load_source("digits").train
    folder = tmp_path / "imgs"
    folder.mkdir()
    truth = {}
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        seen: dict[int, int] = {}
        for i in range(120):
            name = f"imgs/{i:03d}.png"
            Image.fromarray(digits.images[i, 0].numpy()).save(tmp_path / name)
            y = int(digits.labels[i])
            truth[str((tmp_path / name).resolve())] = str(y)
            seen[y] = seen.get(y, 0) + 1
            writer.writerow([name, y if seen[y] <= 2 else ""])
    out = tmp_path / "to_label.csv"
    assert main(["suggest", "--data", str(tmp_path / "data.csv"), "--budget", "5", "--encoder", "pixels",
                 "-o", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 5 and all(r["path"] in truth for r in rows)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**r, "label": truth[r["path"]]} for r in rows])
    # a list file cannot hold labels the data lacks: one line naming the fix
    code = main(["suggest", "--data", str(tmp_path / "data.csv"), "--accept", str(out), "-o", str(tmp_path / "l.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "labels.csv" not in err and ".csv (a manifest)" in err and len(err.strip().splitlines()) == 1
    manifest = tmp_path / "round2" / "labels.csv"
    assert main(["suggest", "--data", str(tmp_path / "data.csv"), "--accept", str(out), "-o", str(manifest)]) == 0
    bundle = load_source(str(manifest))
    assert len(bundle.train) == 120 and int((bundle.train.labels >= 0).sum()) == 20 + 5
    assert main(["train", "--data", str(manifest), "--labels", "all", "--out", str(tmp_path), "--name", "r2",
                 "--set", "data.val=0", *TINY]) == 0
    assert json.loads((tmp_path / "r2" / "results.json").read_text())["labeled"] == 25


def test_pseudolabels_review_and_accept(run_dir, tmp_path, capsys):
    out = tmp_path / "pseudo.csv"
    assert main(["pseudolabels", str(run_dir), "-o", str(out), "--html", "--threshold", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "against the hidden labels" in printed
    rows = _rows(out)
    pool = pool_from_run(run_dir)
    assert len(rows) == len(pool.candidates) and len({r["path"] for r in rows}) == len(rows)
    conf = [float(r["confidence"]) for r in rows]
    assert conf == sorted(conf)  # least confident first
    assert all((r["passes"] == "yes") == (float(r["confidence"]) >= 0.2) for r in rows)
    sheet = (tmp_path / "pseudo.html").read_text()
    assert sheet.count("<h2 id='class-") == len({r["label"] for r in rows}) and "<img src='data:" in sheet
    # review: keep three rows (corrected to the truth), drop the rest
    truth = pool.train
    for n, r in enumerate(rows):
        r["keep"] = "yes" if n < 3 else "no"
        r["label"] = truth.classes[int(truth.labels[truth.ids.index(r["path"])])] if n < 3 else r["label"]
    reviewed = tmp_path / "reviewed.csv"
    with open(reviewed, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    listing = tmp_path / "labels.json"
    assert main(["pseudolabels", str(run_dir), "--accept", str(reviewed), "-o", str(listing)]) == 0
    merged = json.loads(listing.read_text())
    split = json.loads((run_dir / "split.json").read_text())
    assert merged["val"] == split["val"]  # the run's validation images stay validation
    assert set(merged["labeled"]) == set(split["labeled"]) | {r["path"] for r in rows[:3]}


@pytest.mark.parametrize("args,message", [
    (["suggest", "--budget", "3"], "pass a run folder"),
    (["suggest", "--data", "digits", "--labels", "0", "--budget", "0", "--encoder", "pixels"], "at least 1"),
    (["suggest", "--data", "digits", "--labels", "0", "--budget", "3", "--strategy", "best"], "unknown --strategy"),
    (["suggest", "--data", "digits", "--budget", "3"], "already labeled"),
    (["suggest", "--data", "digits", "--labels", "0", "--budget", "3"], "no encoder"),
    (["suggest", "--data", "digits", "--labels", "0", "--accept", "/no/such.csv", "-o", "x.csv"], "not found"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
