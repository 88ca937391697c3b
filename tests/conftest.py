from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from semivit.config import Config, apply_overrides

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# 2 threads on the 2-core CI machine; OMP_NUM_THREADS=1 when the cores are shared with another job
# (two processes with 2 spinning threads each on 2 cores run many times slower, not 2×)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def tiny_config(tmp_path: Path, **overrides) -> Config:
    """A config that trains a very small ViT on digits for a few steps."""
    base = {"data.source": "digits", "data.labels": "5-per-class", "model.name": "vit_nano",
            "model.depth": 2, "model.embed_dim": 48, "model.num_heads": 2, "train.steps": 12,
            "train.batch_size": 16, "train.eval_every": 6, "train.log_every": 3, "train.ckpt_every": 6,
            "train.out": str(tmp_path), "train.name": "run", "train.progress": False,
            "train.tensorboard": False, "optim.lr": 5e-3, "features.cache": str(Path(tmp_path) / "feature-cache")}
    base.update(overrides)
    return apply_overrides(Config(), base)


#: a video run small enough for tests: 4-frame 16-px clips through an R3D-18 of width 4, batches of 8 clips
TINY_VIDEO = {"video.width": 4, "video.num_frames": 4, "video.size": 16, "video.blur": False,
              "train.batch_size": 8, "train.progress": False, "train.device": "cpu"}


def tiny_sprites(path: Path) -> Path:
    """30 training + 10 test moving-digit videos of 12 frames at 16 px (5 motion classes), seeded."""
    from semivit.video.sprites import write_sprite_videos

    return Path(write_sprite_videos(str(path), num_train=30, num_test=10, frames=12, canvas=16, sprite=8,
                                    source="digits"))


def random_timm_weights(tmp_path: Path, arch: str = "test_efficientnet") -> str:
    """A bare weights file of a tiny timm CNN (seeded: the same weights on every call), as if downloaded."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = Path(tmp_path) / f"{arch}.safetensors"
    save_file(timm.create_model(arch, num_classes=10).state_dict(), str(path))
    return str(path)


def frozen_config(tmp_path: Path, **overrides) -> Config:
    """:func:`tiny_config` for a frozen-backbone run: the tiny timm CNN's weights as the backbone, one cached view
    of each kind, the cache in ``tmp_path``."""
    weights = random_timm_weights(tmp_path)
    return tiny_config(tmp_path, **{"model.name": "test_efficientnet", "model.pretrained": weights,
                                    "model.resolution": "32", "features.frozen": True, "features.views": 1,
                                    "features.cache": str(Path(tmp_path) / "cache"), "train.overwrite": True,
                                    **overrides})


def assert_reported_top1(model: torch.nn.Module, reported: float, source: str = "digits") -> None:
    """The test top-1 a run reported is what its exported model gives on the test images (a run that trains
    for 2 steps can score anything; what it reports must still be what it saved)."""
    from semivit.data import prepare_data
    from semivit.engine.evaluate import predict_logits, top1

    test = prepare_data(apply_overrides(Config(), {"data.source": source}).data, 0).test
    assert abs(top1(predict_logits(model.eval(), test), test.labels) - float(reported)) < 1e-6


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (real-data tests need it)")
    return SHARED_DATA
