"""Video on the one Trainer (issue 26 item 3): CVRL is a registered method, supervised / FixMatch / the
EMA-Teacher train on clips, recipes have stages, and a video run resumes exactly, reports what its exported
model gives, and refuses what it cannot do in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semivit.cli import main
from semivit.engine.callbacks import Callback
from semivit.engine.checkpoint import read_weights
from semivit.errors import SemivitError
from semivit.video.inputs import VideoInputs, prepare_video
from semivit.video.models import load_video_model
from semivit.video.train import probe, run_video_recipe, train_video, video_config, video_trainer
from tests.conftest import TINY_VIDEO, tiny_sprites

pytestmark = pytest.mark.slow  # trains for a few steps: the full tier


@pytest.fixture(scope="module")
def sprites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sprites") / "s.npz"
    assert main(["video", "sprites", "--out", str(path), "--train", "30", "--test", "10", "--frames", "12",
                 "--size", "16", "--sprite-size", "8", "--sprites", "digits"]) == 0
    assert path.read_bytes() == tiny_sprites(path.with_name("again.npz")).read_bytes()  # the tests' helper
    return path


def _settings(data: Path, out: Path, **more: object) -> dict:
    return {"data.source": str(data), "train.out": str(out), **TINY_VIDEO, **more}


def test_cvrl_reports_the_knn_and_probe_of_the_encoder_it_exports(sprites: Path, tmp_path: Path) -> None:
    cfg = video_config(_settings(sprites, tmp_path, **{"train.method": "cvrl", "train.steps": 4,
                                                        "train.name": "pre"}))
    result = train_video(cfg)
    exported = load_video_model(str(result.run_dir))
    assert exported.spec.arch == "r3d_18" and exported.spec.width == 4
    again = probe(exported, prepare_video(cfg), cfg.video.eval_clips)  # the exported encoder, evaluated anew
    assert result.metrics["test_knn_top1"] == pytest.approx(again["knn_top1"])
    assert result.metrics["test_linear_top1"] == pytest.approx(again["linear_top1"])
    assert result.metrics["labeled"] == 30 and result.metrics["method"] == "cvrl"


def test_fixmatch_on_clips_reports_its_exported_model_and_masks_with_the_threshold(sprites: Path,
                                                                                    tmp_path: Path) -> None:
    cfg = video_config(_settings(sprites, tmp_path, **{
        "train.method": "fixmatch", "train.steps": 3, "train.log_every": 1, "train.name": "fm",
        "data.labels": "1-per-class", "method.threshold": 0.0, "method.mu": 1}))
    result = train_video(cfg)
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    masks = [row.split(",")[header.index("train/mask")] for row in rows[1:]]
    assert [float(m) for m in masks if m] == [1.0] * 3  # τ 0: every pseudo-label is used, at every step
    data = prepare_video(cfg)
    model = load_video_model(str(result.run_dir))
    logits = VideoInputs(data, torch.device("cpu"), cfg.video.eval_clips).logits(model, "test")
    assert result.metrics["test_top1"] == pytest.approx(float((logits.argmax(1) == data.test.labels).float().mean()))
    assert result.metrics["labeled"] == 5 and len(data.split.unlabeled) == 30  # labeled videos in the pool too


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx, result) -> None:  # type: ignore[no-untyped-def]
        if ctx.step == self.step:
            ctx.stop = True


@pytest.mark.parametrize("method", ["ema_teacher", "cvrl"])
def test_a_stopped_video_run_resumes_exactly(sprites: Path, tmp_path: Path, method: str) -> None:
    settings = _settings(sprites, tmp_path, **{"train.method": method, "train.steps": 4, "train.ckpt_every": 1,
                                               "data.labels": "2-per-class", "method.mu": 1} if method != "cvrl"
                         else {"train.method": method, "train.steps": 4, "train.ckpt_every": 1})
    straight = video_trainer(video_config({**settings, "train.name": "straight"})).fit()
    video_trainer(video_config({**settings, "train.name": "cut"}), callbacks=[_StopAt(2)]).fit()
    resumed = video_trainer(video_config({**settings, "train.name": "cut", "train.resume": True})).fit()
    assert resumed.metrics["steps"] == 4
    a, _ = read_weights(straight.run_dir)
    b, _ = read_weights(resumed.run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_recipe_stage_starts_from_the_encoder_the_earlier_stage_exported(sprites: Path, tmp_path: Path) -> None:
    overrides = {k: v for k, v in _settings(sprites, tmp_path).items()}
    overrides.update({"train.steps": 2, "data.labels": "2-per-class", "stage2.optim.lr": 0.0})
    result = run_video_recipe("cvrl", overrides)
    root = result.run_dir.parent
    first, _ = read_weights(root / "stage1-cvrl")
    second, meta = read_weights(root / "stage2-supervised")
    assert meta["semivit_spec"]["num_classes"] == 5
    encoder = [k for k in first if k.startswith("encoder.") and "running_" not in k and "num_batches" not in k]
    assert encoder
    for key in encoder:  # learning rate 0 in stage 2: its encoder is exactly stage 1's export
        assert torch.equal(first[key], second[key]), key


def test_video_commands_share_the_cli_conventions(sprites: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    small = ["--data", str(sprites), "--width", "4", "--frames", "4", "--size", "16", "--batch-size", "8", "-q",
             "--out", str(tmp_path), "--set", "video.blur=false"]
    assert main(["video", "train", "--method", "cvrl", *small, "--name", "pre", "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["steps"] == 2
    # the same --name again without --resume or --overwrite: refused in one line, nothing overwritten
    assert main(["video", "train", "--method", "cvrl", *small, "--name", "pre", "--steps", "2"]) == 2
    assert "already holds" in capsys.readouterr().err
    # a start from an encoder of another width is one line
    assert main(["video", "train", *small, "--name", "bad", "--width", "8", "--pretrained",
                 str(tmp_path / "pre")]) == 2
    assert "width" in capsys.readouterr().err
    assert main(["video", "probe", "--data", str(sprites), "--run", str(tmp_path / "pre"), "--frames", "4",
                 "--size", "16", "--json", str(tmp_path / "p" / "probe.json")]) == 0
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["labeled"] == 30


def test_methods_a_modality_cannot_feed_are_refused_in_one_line(sprites: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    # CVRL's clip pairs from images, and a class-balanced support set (PAWS) or MAE's masked views from clips
    assert main(["train", "--method", "cvrl", "--steps", "1", "-q", "--out", str(tmp_path)]) == 2
    assert "images cannot give" in capsys.readouterr().err
    for method in ("paws", "mae"):
        with pytest.raises(SemivitError, match="does not train on video"):
            train_video(video_config(_settings(sprites, tmp_path, **{"train.method": method, "train.steps": 1,
                                                                     "train.name": method})))


def test_shipped_video_recipes_resolve_before_any_data_loads() -> None:
    from semivit.config import load_yaml
    from semivit.pipeline import stage_configs
    from semivit.video.train import RECIPES

    for path in sorted(RECIPES.glob("*.yaml")):
        _, configs = stage_configs(load_yaml(path), {})
        assert configs[0].train.method == "cvrl" and configs[0].video.blur is False, path.stem
    with pytest.raises(SemivitError, match="not found"):
        run_video_recipe("no-such-recipe")
