"""Pretrained backbones by name: timm's registry with a pretrained tag, the Hugging Face hub, local folders.

``--model`` takes what practitioners already use:

- a timm name with its pretrained tag: ``vit_small_patch14_dinov2.lvd142m``, ``vit_base_patch16_224.mae``,
  ``resnet50.a1_in1k`` (an untagged timm name with ``--pretrained`` takes timm's default tag);
- ``hf-hub:ORG/NAME`` — any timm-format repository on the hub (``config.json`` + weights);
- ``local-dir:FOLDER`` — the same layout in a folder (what ``semivit export --format hub`` writes).

Weights are fetched by timm through huggingface_hub into their standard caches (``HF_HOME`` /
``HF_HUB_CACHE``, and ``TORCH_HOME`` for the few weights timm still serves by URL), or into
``model.cache_dir``; ``HF_HUB_OFFLINE=1`` is honoured. timm reads ``model.safetensors`` whenever the
repository has it and otherwise ``torch.load(weights_only=True)``: no pickled code runs.

The pretrained config decides the normalisation (mean/std) and the native resolution. Data at another size
is handled by :func:`choose_resolution`: resized inside the model to the backbone's size, or kept with the
position embeddings resampled to the data's grid (the patch size stays the backbone's).
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from semivit.errors import SemivitError

log = logging.getLogger("semivit")

SOURCE_PREFIXES = ("hf-hub:", "local-dir:")
RESOLUTIONS = ("auto", "native", "data")
#: ``model.resolution: auto`` keeps the data's own size from this side up (7 × 16-px patches) and resizes
#: smaller images up to the backbone's size (capped at 224, the size most ViTs and CNNs were trained at)
AUTO_KEEP_FROM = 112
AUTO_RESIZE_CAP = 224


@dataclass
class HubModel:
    """A resolved pretrained model name: what to build and how it was trained."""

    name: str  # as the user gave it
    architecture: str  # timm registry name (no tag, no source)
    tag: str | None
    pretrained_cfg: dict[str, Any]  # timm's: mean, std, input_size, hf_hub_id, url, ...
    model_args: dict[str, Any] = field(default_factory=dict)  # a hub/local config.json's constructor args

    @property
    def native_size(self) -> int:
        size = self.pretrained_cfg.get("input_size") or (3, 224, 224)
        return int(size[-1])

    @functools.cached_property
    def patch_size(self) -> int | None:
        """The patch size of a ViT-like architecture, None for CNNs: from the constructor args, else from a
        throw-away build on the meta device (no memory, no weights); computed once per resolved name."""
        if "patch_size" in self.model_args:
            p = self.model_args["patch_size"]
            return int(p[0] if isinstance(p, (list, tuple)) else p)
        with torch.device("meta"):
            model = timm.create_model(self.architecture, pretrained=False, **self.model_args)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        return int(patch[0]) if patch is not None else None

    @property
    def repo_id(self) -> str | None:
        if self.name.startswith("hf-hub:"):
            return self.name.removeprefix("hf-hub:").split("@")[0]
        return self.pretrained_cfg.get("hf_hub_id")


def has_source_prefix(name: str) -> bool:
    return name.startswith(SOURCE_PREFIXES)


def is_pretrained_name(name: str) -> bool:
    """A name that carries its weights: a source prefix or a timm name with a pretrained tag."""
    if has_source_prefix(name):
        return True
    arch, _, tag = name.partition(".")
    return bool(tag) and timm.is_model(arch)


def hf_cache_dir(cache_dir: str | None = None) -> str:
    """The hub cache folder huggingface_hub uses (``model.cache_dir``, else HF_HUB_CACHE / HF_HOME/hub)."""
    if cache_dir:
        return str(Path(cache_dir).expanduser())
    from huggingface_hub import constants

    return str(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _fetch_hint(hub: HubModel | None, name: str, cache_dir: str | None) -> str:
    repo = hub.repo_id if hub else name.removeprefix("hf-hub:")
    where = hf_cache_dir(cache_dir)
    if repo:
        return (f"the files of '{repo}' are not in the cache {where}"
                + (" and HF_HUB_OFFLINE=1 forbids downloading" if _offline() else " and the hub cannot be reached")
                + f": on a machine that is online run `hf download {repo}` (older huggingface_hub: "
                  f"`huggingface-cli download {repo}`) with HF_HUB_CACHE={where}, and copy that folder here")
    url = (hub.pretrained_cfg.get("url") if hub else None) or "its URL"
    torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"the weights are served from {url}, not in {torch_cache}: download them on a machine that is "
            f"online into {torch_cache} (TORCH_HOME), or pass the file with --pretrained PATH")


def _is_network_error(e: BaseException) -> bool:
    """huggingface_hub and urllib errors that mean "not cached and cannot download"."""
    try:
        from huggingface_hub import errors as hf_errors

        hub_errors: tuple[type[BaseException], ...] = tuple(
            getattr(hf_errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError")
            if hasattr(hf_errors, n))
    except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
        hub_errors = ()
    import urllib.error

    return isinstance(e, (*hub_errors, urllib.error.URLError, ConnectionError, TimeoutError))


def resolve(name: str, cache_dir: str | None = None) -> HubModel:
    """What ``name`` refers to, with its pretrained config; a one-line error for unknown names and tags.

    ``hf-hub:`` names read the repository's ``config.json`` (from the cache, or downloaded); ``local-dir:``
    names read the folder's. Nothing else is downloaded here."""
    from timm.models import get_pretrained_cfg

    if has_source_prefix(name):
        from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

        source, _, ident = name.partition(":")
        try:
            if source == "local-dir":
                if not (Path(ident).expanduser() / "config.json").is_file():
                    raise SemivitError(f"'{ident}' has no config.json: a local-dir: model is a folder in the hub "
                                       f"layout (config.json + model.safetensors), e.g. from `semivit export`")
                cfg, arch, args = load_model_config_from_path(Path(ident).expanduser())
            else:
                cfg, arch, args = load_model_config_from_hf(ident, cache_dir=cache_dir)
        except SemivitError:
            raise
        except Exception as e:
            if _is_network_error(e):
                raise SemivitError(f"cannot load model '{name}': {_fetch_hint(None, name, cache_dir)}") from None
            raise SemivitError(f"cannot read the config of model '{name}' ({type(e).__name__}: {e})") from None
        if not timm.is_model(arch):
            raise SemivitError(f"model '{name}' names architecture '{arch}', which this timm "
                               f"({timm.__version__}) does not know: upgrade timm")
        return HubModel(name, arch, None, dict(cfg), dict(args or {}))
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise SemivitError(f"unknown model '{arch}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                           + ": use a timm name, hf-hub:ORG/NAME or local-dir:FOLDER")
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        near = difflib.get_close_matches(tag, tags, n=3, cutoff=0.3) or tags[:5]
        raise SemivitError(f"model '{arch}' has no pretrained tag '{tag}'"
                           + (f"; its tags include {', '.join(f'{arch}.{t}' for t in near)}" if near
                              else "; timm lists no pretrained weights for it"))
    if not tag and not tags:
        raise SemivitError(f"timm lists no pretrained weights for '{arch}': train it from scratch "
                           f"(model.pretrained: none) or pick a model with weights (timm.list_pretrained())")
    cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    return HubModel(name, arch, tag or (cfg.tag if cfg else None), cfg.to_dict() if cfg else {}, {})


def architecture_defaults(arch: str) -> HubModel:
    """A timm architecture with timm's default pretrained config (input size, mean/std, interpolation) and no
    weights to fetch: what a bare weights file (``--pretrained FILE``, a port from another implementation)
    is run with, since the file itself carries no config."""
    from timm.models import get_pretrained_cfg

    if not timm.is_model(arch):
        raise SemivitError(f"'{arch}' is not a timm architecture")
    cfg = get_pretrained_cfg(arch)
    return HubModel(arch, arch, None, cfg.to_dict() if cfg else {}, {})


def describe_config(hub: HubModel) -> str:
    """The pretrained config's choices in a few words, for the run's log."""
    cfg = hub.pretrained_cfg
    mean = tuple(round(float(v), 3) for v in cfg.get("mean") or ())
    std = tuple(round(float(v), 3) for v in cfg.get("std") or ())
    return (f"{hub.native_size} px, mean {mean or 'ImageNet'}, std {std or 'ImageNet'}, "
            f"{cfg.get('interpolation') or 'bilinear'} interpolation")


def choose_resolution(hub: HubModel, data_size: int, setting: str = "auto") -> tuple[int, str]:
    """The side the backbone runs at for ``data_size``-px images, and a sentence saying why.

    - ``native``: the backbone's pretraining size (images resized inside the model);
    - ``data``: the data's size (rounded to whole patches); a ViT's position embeddings are resampled to
      that grid when the weights load (timm's ``resample_abs_pos_embed``, as DINOv2 and MAE allow);
    - ``auto``: ``data`` from 112 px up, else resize up to the native size capped at 224: a 32-px image
      cut into 16-px patches would leave a 2 × 2 grid;
    - a number: that size.
    """
    patch = hub.patch_size
    native = hub.native_size
    setting = str(setting).strip().lower()
    if setting.isdigit():
        target, why = int(setting), f"model.resolution={setting}"
    elif setting == "native":
        target, why = native, f"model.resolution=native (the backbone's {native} px)"
    elif setting == "data":
        target, why = data_size, "model.resolution=data"
    elif setting == "auto":
        if data_size == native:
            target, why = data_size, "model.resolution=auto: the data has the backbone's native size"
        elif data_size >= AUTO_KEEP_FROM:
            target, why = data_size, f"model.resolution=auto keeps images of ≥ {AUTO_KEEP_FROM} px at their size"
        else:
            target = min(native, AUTO_RESIZE_CAP)
            why = (f"model.resolution=auto resizes images under {AUTO_KEEP_FROM} px up to "
                   f"{'the native size' if target == native else f'{AUTO_RESIZE_CAP} px'}")
    else:
        raise SemivitError(f"unknown model.resolution '{setting}': use auto, native, data or a size in pixels")
    if patch and target % patch:
        target = max(patch, round(target / patch) * patch)
        why += f", rounded to whole {patch}-px patches"
    grid = f" ({target // patch}×{target // patch} patches of {patch} px)" if patch else ""
    action = "kept" if target == data_size else f"resized to {target} px inside the model"
    pos = (", position embeddings resampled from the native grid" if patch and target != native else "")
    return target, f"data {data_size} px {action}{grid}{pos}; native {native} px; {why}"


def normalization(hub: HubModel, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean/std the backbone was pretrained with, for ``in_chans`` channels (grey: their average)."""
    mean = torch.tensor(hub.pretrained_cfg.get("mean") or (0.485, 0.456, 0.406), dtype=torch.float32)
    std = torch.tensor(hub.pretrained_cfg.get("std") or (0.229, 0.224, 0.225), dtype=torch.float32)
    if in_chans != len(mean):
        mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)
    return mean, std


def create_backbone(hub: HubModel, num_classes: int, in_chans: int, img_size: int, *, pretrained: bool,
                    drop_path: float = 0.0, cache_dir: str | None = None) -> nn.Module:
    """Build the timm backbone at ``img_size``; with ``pretrained`` load the hub/cache weights (the classifier
    is re-initialised for ``num_classes``; a grey input sums the first conv's RGB filters, timm's rule)."""
    kwargs: dict[str, Any] = {**hub.model_args, "num_classes": num_classes, "in_chans": in_chans,
                              "drop_path_rate": drop_path}
    patch = hub.patch_size
    if patch is not None:  # ViT-like: built at the chosen grid, timm resamples pos-embed while loading
        kwargs["img_size"] = img_size
    name = hub.name if has_source_prefix(hub.name) else (f"{hub.architecture}.{hub.tag}" if hub.tag
                                                         else hub.architecture)
    if not pretrained:
        name = hub.architecture
    try:
        return timm.create_model(name, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
    except SemivitError:
        raise
    except Exception as e:
        if _is_network_error(e) or (isinstance(e, (OSError, RuntimeError)) and _offline()):
            raise SemivitError(f"cannot load pretrained weights for '{hub.name}': "
                               f"{_fetch_hint(hub, hub.name, cache_dir)}") from None
        raise SemivitError(f"cannot build '{hub.name}' ({type(e).__name__}: {e})") from None


def spec_kwargs(hub: HubModel, backbone_size: int) -> dict[str, Any]:
    """What :func:`semivit.models.spec_check.model_from_spec` needs to rebuild the architecture offline."""
    return {"timm_architecture": hub.architecture, "timm_model_args": dict(hub.model_args),
            "backbone_size": backbone_size, "pretrained_tag": hub.tag}
