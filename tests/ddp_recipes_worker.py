"""Run under ``torchrun --nproc_per_node 2``: the first steps of every shipped recipe with gloo DDP, each stage
cut to 2 steps on a tiny model (hub backbones swapped for vit_nano: no downloads in tests; the frozen-backbone
recipes on a tiny timm CNN's cached features, embedded by rank 0 and read by rank 1, and the full fine-tuning
recipes on that CNN itself); saves each rank's
final weights as ``OUT/RECIPE/rank{r}.safetensors``."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from semivit.config import load_yaml
from semivit.core.distributed import cleanup
from semivit.pipeline import RECIPES, run_stages, stage_configs
from semivit.video.train import RECIPES as VIDEO_RECIPES
from semivit.video.train import run_video_recipe
from tests.conftest import TINY_VIDEO, tiny_sprites

TINY = {"data.source": "digits", "data.labels": "5-per-class", "model.depth": 2, "model.embed_dim": 48,
        "model.num_heads": 2, "train.batch_size": 16, "train.eval_every": 0, "train.log_every": 1,
        "train.device": "cpu", "train.progress": False, "train.tensorboard": False}

def frozen_backbone(out: Path, rank: int) -> str:
    """The same random weights on every rank (seeded), each rank writing its own copy (no race)."""
    import timm
    import torch

    torch.manual_seed(0)
    path = out / f"backbone{rank}.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=10).state_dict(), str(path))
    return str(path)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])  # set by torchrun; the process group is joined by the first stage
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = load_yaml(path)
        overrides = dict(TINY, **{"train.out": str(out)})
        if "pretrained" in str(recipe.get("model", {})):  # a hub backbone: no download here
            overrides.update({"model.name": "vit_nano", "model.pretrained": ""})
        frozen = recipe.get("features", {}).get("frozen")
        if frozen or "resolution" in recipe.get("model", {}):  # a pretrained CNN at a set input size (full
            # fine-tuning), or a head on its cached features: a tiny, random timm CNN's weights stand in
            overrides.update({"model.name": "test_efficientnet", "model.pretrained": frozen_backbone(out, rank),
                              "model.resolution": "32"})
            if frozen:
                overrides["features.cache"] = str(out / "feature-cache")
        _, configs = stage_configs(recipe, overrides)
        for cfg in configs:  # every stage cut to its first 2 steps
            cfg.train.steps, cfg.train.epochs = 2, None
            if cfg.data.val == "0":
                cfg.data.val = "1-per-class"
        result = run_stages(configs, out / path.stem)
        state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(out / path.stem / f"rank{rank}.safetensors"))
    clips = tiny_sprites(out / f"sprites{rank}.npz")  # the video recipes on clips: the same videos on each rank
    for path in sorted(VIDEO_RECIPES.glob("*.yaml")):
        result = run_video_recipe(str(path), {**TINY_VIDEO, "data.source": str(clips), "data.labels": "2-per-class",
                                              "train.steps": 2, "train.out": str(out), "train.log_every": 1},
                                  run_name=f"video-{path.stem}")
        state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(out / f"video-{path.stem}" / f"rank{rank}.safetensors"))
    cleanup()
