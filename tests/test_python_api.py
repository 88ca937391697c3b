"""The Python surface (issue 26): the README's example runs as written, arrays are data, a user's own module
trains, bad arguments are one-line errors, and timm knows semivit's ViT sizes after ``import semivit``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import semivit
from semivit.errors import SemivitError
from tests.conftest import REPO


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # its run folder goes to ./runs
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    run = namespace["run"]
    assert (tmp_path / "runs" / "from-python" / "results.json").is_file()
    assert namespace["probs"].shape == (10, 10)
    assert torch.allclose(namespace["probs"].sum(1), torch.ones(10), atol=1e-5)
    assert run.metrics["labeled"] == 40 and run.metrics["test_top1"] > 0.3


def test_the_surface_is_small_documented_and_lazy():
    assert {"fit", "load", "predict", "evaluate", "suggest", "export", "Config", "create_model", "list_methods",
            "run_recipe", "__version__"} <= set(dir(semivit))
    assert semivit.__version__ and "ema_teacher" in semivit.list_methods()
    for name in ("fit", "load", "predict", "evaluate", "suggest", "export"):
        assert getattr(semivit, name).__doc__, name


def test_your_own_module_trains_and_bad_arguments_are_one_line_errors(tmp_path):
    g = np.random.default_rng(0)
    x, y = g.integers(0, 256, (60, 8, 8), dtype=np.uint8), np.arange(60) % 3
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    start = net[1].weight.detach().clone()
    run = semivit.fit((x, y, x[:12], y[:12]), model=net, labels="4-per-class", steps=3, out=str(tmp_path),
                      name="own", progress=False, settings={"train.tensorboard": False})
    assert run.model.backbone is net and not torch.equal(net[1].weight, start)  # your module itself trained
    assert run.metrics["steps"] == 3 and run.metrics["labeled"] == 12
    with pytest.raises(SemivitError, match="unknown argument"):
        semivit.fit("digits", stepz=3)
    with pytest.raises(SemivitError, match="data must be"):
        semivit.fit(42)


def test_timm_creates_semivits_vit_sizes():
    import timm

    model = timm.create_model("vit_nano", num_classes=3, img_size=32, patch_size=4)
    assert model.embed_dim == 96 and len(model.blocks) == 6 and model.global_pool == "avg"
