"""Loading a classifier from a folder in the Hugging Face hub layout (``config.json`` + ``model.safetensors``):
one ``semivit export --format hub`` wrote, or any timm-format folder. Model loading lives with the models;
:mod:`semivit.export` writes such folders and :func:`semivit.engine.checkpoint.load_model` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from semivit.errors import SemivitError


def is_hub_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir()


def load_hub_folder(path: str | Path) -> nn.Module:
    """A semivit classifier from a hub-layout folder: one ``semivit export`` wrote (rebuilt exactly, with its
    input size and normalisation), or any timm-format folder (its mean/std and input size from config.json)."""
    import timm

    from semivit.models.factory import ImageClassifier, ModelSpec
    from semivit.models.spec_check import model_from_spec

    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SemivitError(f"cannot read '{folder / 'config.json'}' ({type(e).__name__})") from None
    from semivit.models.spec_check import check_hub_config

    check_hub_config(config, str(folder / "config.json"))
    cfg = config.get("pretrained_cfg") or config
    mean = torch.tensor(cfg.get("mean") or (0.485, 0.456, 0.406), dtype=torch.float32)
    std = torch.tensor(cfg.get("std") or (0.229, 0.224, 0.225), dtype=torch.float32)
    try:
        backbone = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
    except Exception as e:
        raise SemivitError(f"timm cannot load '{folder}' ({type(e).__name__}: {e})") from None
    if "semivit" in config:
        spec = config["semivit"].get("spec") if isinstance(config["semivit"], dict) else None
        model = model_from_spec(spec, str(folder / "config.json"))
        model.backbone.load_state_dict(backbone.state_dict())
        if model.outlier_head is not None:
            _load_outlier_head(model, folder)
    else:
        size = int((cfg.get("input_size") or (3, 224, 224))[-1])
        in_chans = int((cfg.get("input_size") or (3,))[0])
        names = config.get("label_names") or cfg.get("label_names") or []
        classes = list(names.values()) if isinstance(names, dict) else list(names)
        spec = ModelSpec(f"local-dir:{folder}", int(backbone.num_classes), in_chans, size, {}, classes)
        model = ImageClassifier(backbone, spec)
    model.set_normalization(mean.expand(model.spec.in_chans) if len(mean) == 1 else mean,
                            std.expand(model.spec.in_chans) if len(std) == 1 else std)
    return model.eval()


def _load_outlier_head(model: nn.Module, folder: Path) -> None:
    """The outlier head ``semivit export`` wrote beside the backbone (:data:`semivit.models.outlier.HUB_FILE`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from semivit.models.outlier import HUB_FILE

    path = folder / HUB_FILE
    if not path.is_file():
        raise SemivitError(f"'{folder / 'config.json'}' names an outlier head but '{path}' is missing: export the "
                           f"run again (semivit export RUN --format hub)")
    try:
        model.outlier_head.load_state_dict(load_file(str(path)))  # type: ignore[union-attr]
    except (RuntimeError, SafetensorError, OSError) as e:
        raise SemivitError(f"'{path}' does not fit the model's outlier head ({str(e).splitlines()[0][:120]})") \
            from None
