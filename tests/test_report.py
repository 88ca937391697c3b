"""The per-run report: sections, inline images, a recipe's stages, the hook at the end of train/run, and
(slow) a real browser rendering it."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

import numpy as np
import pytest

from semivit.cli import main
from semivit.data.sources import load_source
from semivit.engine.trainer import train
from semivit.pipeline import run_recipe
from semivit.report import write_report
from tests.conftest import tiny_config

SECTIONS = ("summary", "learning curves", "test evaluation", "resolved config")
TINY = ["--model", "vit_nano", "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set",
        "model.num_heads=2", "--steps", "3", "--batch-size", "8", "-q", "--set", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("report"), **{"train.steps": 6})).run_dir


def _images(text: str) -> list[str]:
    return re.findall(r"<img src=[\"']([^\"']*)[\"']", text)  # the browser's DOM dump uses double quotes


def test_report_has_every_section_and_only_inline_images(run_dir, tmp_path):
    path = write_report(run_dir, tmp_path / "r.html")
    text = path.read_text()
    for name in SECTIONS:
        assert f">{name}</h3>" in text
    for alt in ("per-class accuracy", "confusion matrix", "reliability diagram", "losses", "validation"):
        assert f"alt='{alt}'" in text
    assert "ROC curve" not in text  # ten classes: no ROC
    assert "labels used: " in text and "method: supervised" in text.replace("</td><td>", ": ")
    images = _images(text)
    assert len(images) >= 5 + 40 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # mistakes first: every red (wrong) tile comes before every right one
    kinds = re.findall(r"<div class='tile( bad)?'", text)
    first_right = next((i for i, k in enumerate(kinds) if not k), len(kinds))
    assert all(not k for k in kinds[first_right:])
    assert len(kinds) == 48 and 0 < first_right <= 32 < len(kinds)  # right answers shown too


def test_two_classes_get_a_roc_curve(tmp_path):
    digits = load_source("digits")
    def part(p):
        keep = (p.labels <= 1).numpy()
        return p.images.numpy()[keep], p.labels.numpy()[keep]
    (x, y), (xt, yt) = part(digits.train), part(digits.test)
    np.savez(tmp_path / "two.npz", x=x, y=y, x_test=xt, y_test=yt, classes=np.array(["zero", "one"]))
    result = train(tiny_config(tmp_path, **{"data.source": str(tmp_path / "two.npz"), "train.steps": 3}))
    text = write_report(result.run_dir).read_text()
    assert "alt='ROC curve'" in text and "ROC AUC" in text


def test_recipe_report_has_one_section_per_stage(tmp_path):
    recipe = {"name": "two", "stages": [{"method": "mae"}, {"method": "supervised"}]}
    overrides = {"data.labels": "5-per-class", "model.name": "vit_nano", "model.depth": 1, "model.embed_dim": 32,
                 "model.num_heads": 2, "train.steps": 3, "train.batch_size": 8, "train.out": str(tmp_path),
                 "train.progress": False, "train.tensorboard": False, "train.eval_every": 3}
    result = run_recipe(recipe, overrides, run_name="two")
    text = write_report(result.run_dir.parent).read_text()
    assert "stage 1: stage1-mae" in text and "stage 2: stage2-supervised" in text
    assert text.count("class='run-section'") == 2 and "pre-training stage" in text
    assert text.count(">resolved config</h3>") == 2 and text.count(">test evaluation</h3>") == 2


def test_train_writes_the_report_and_a_failing_report_only_warns(tmp_path, monkeypatch, caplog):
    assert main(["train", "--out", str(tmp_path), "--name", "a", *TINY]) == 0
    assert (tmp_path / "a" / "report.html").is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("semivit.report.write_report", broken)
    with caplog.at_level(logging.WARNING, logger="semivit"):
        assert main(["train", "--out", str(tmp_path), "--name", "b", *TINY]) == 0
    assert not (tmp_path / "b" / "report.html").exists() and (tmp_path / "b" / "results.json").is_file()
    assert "could not write the report" in caplog.text and "disk on fire" in caplog.text


def test_report_command_and_bad_run(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "-o", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and len(err.strip().splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                              ".ci/run installs it when run as root)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image

    path = write_report(run_dir, tmp_path / "report.html")
    url = path.resolve().as_uri()
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for name in SECTIONS:
        assert f">{name}</h3>" in dom  # the browser parsed the page into its sections
    assert len(_images(dom)) == len(_images(path.read_text())) >= 45
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True,
                   timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # not blank: text, plots and the test images make many distinct colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
