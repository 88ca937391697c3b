"""Load local pretrained weights safely: safetensors, or ``torch.load(weights_only=True)``.

Keys are remapped from the layouts users bring (semivit, timm, the MAE reference code, DDP-wrapped
``module.`` checkpoints), position embeddings are resized to the new grid, and the classifier head is
dropped when its shape differs. Missing and unexpected keys are reported, never silently ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file

from semivit.core.io import load_tensors_file
from semivit.errors import SemivitError
from semivit.models.factory import ImageClassifier

log = logging.getLogger("semivit")

_PREFIXES = ("module.", "_orig_mod.", "model.", "encoder.", "student.")


def pretrained_source(model_name: str, pretrained: str | None) -> tuple[bool, str | None]:
    """Where ``model.pretrained`` says the starting weights come from: ``(from the hub, local file)``.

    "auto" (or None): the hub's when ``model_name`` carries them (a tagged timm name, ``hf-hub:``,
    ``local-dir:``); "hub": the hub's (timm's default tag for an untagged name); "none": random
    initialisation; anything else: a local file or run folder."""
    from semivit.models.hub import is_pretrained_name

    value = (pretrained or "").strip()
    if value.lower() in ("", "auto"):
        return is_pretrained_name(model_name), None
    if value.lower() == "hub":
        return True, None
    if value.lower() in ("none", "null", "scratch", "false", "off"):
        return False, None
    return False, value


def bare_file_defaults(model_name: str, local: str | None) -> Any:
    """timm's default pretrained config (a :class:`~semivit.models.hub.HubModel` without weights to fetch) for
    a weights file that carries none: a port from another implementation or a plain state dict of a timm
    architecture (``--model tf_efficientnet_lite0 --pretrained lite0.pth``). Its input size, mean/std and
    interpolation then apply, as for a hub backbone. None for semivit's own files (run folders, exported
    ``.safetensors`` with a model spec) and for semivit's from-scratch sizes."""
    from semivit.models.factory import VIT_SIZES
    from semivit.models.hub import architecture_defaults, has_source_prefix

    if not local or Path(local).is_dir() or has_source_prefix(model_name) or model_name in VIT_SIZES or \
            model_name.startswith("semiformer") or not timm.is_model(model_name.partition(".")[0]):
        return None
    if Path(local).suffix == ".safetensors" and Path(local).is_file():
        import json

        from safetensors import safe_open

        try:
            with safe_open(local, framework="pt") as f:
                meta = f.metadata() or {}
            spec = json.loads(meta["semivit_spec"]) if "semivit_spec" in meta else None
        except Exception:  # not readable: load_pretrained says so in one line
            return None
        if spec is not None:  # semivit's own export: a pretrained backbone keeps the config it ran with
            return _exported_config(spec)
    return architecture_defaults(model_name.partition(".")[0])


def _exported_config(spec: Any) -> Any:
    """The backbone config a semivit export of a pretrained backbone recorded (None for from-scratch models):
    a later stage then runs it at the same input size and interpolation."""
    from semivit.models.hub import HubModel

    kwargs = spec.get("kwargs") if isinstance(spec, dict) else None
    if not isinstance(kwargs, dict) or "timm_architecture" not in kwargs or "backbone_size" not in kwargs:
        return None
    size = int(kwargs["backbone_size"])
    return HubModel(str(spec.get("name")), str(kwargs["timm_architecture"]), kwargs.get("pretrained_tag"),
                    {"input_size": (int(spec.get("in_chans", 3)), size, size),
                     "interpolation": kwargs.get("interpolation", "bilinear")},
                    dict(kwargs.get("timm_model_args") or {}))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a ``.safetensors`` or a ``.pth/.pt`` file (never unpickles code)."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints" / "model.safetensors").is_file():  # a run folder: its exported model
        p = p / "checkpoints" / "model.safetensors"
    if not p.is_file():
        raise SemivitError(f"weights file '{path}' not found: pass a .safetensors or .pth file, or a run folder")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except Exception as e:  # safetensors raises its own error types for truncated/foreign files
            raise SemivitError(f"cannot read '{path}' as safetensors ({e}): is the file complete?") from None
    try:
        obj = load_tensors_file(p)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError … for bad files
        raise SemivitError(f"cannot read '{path}' safely with weights_only=True ({type(e).__name__}): "
                           f"convert it to .safetensors or a plain state dict") from None
    for key in ("model", "state_dict", "ema", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise SemivitError(f"'{path}' holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _few(keys: list[str], shown: int = 5) -> str:
    """A key list for one log line: the first few, and how many more."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def remap_keys(state: dict[str, torch.Tensor], model: ImageClassifier) -> dict[str, torch.Tensor]:
    """Map foreign key layouts onto ``model``'s (``backbone.*``, ``mean``, ``std``)."""
    own = model.state_dict()
    out = {}
    for key, value in state.items():
        if key in own:
            out[key] = value
            continue
        bare = _strip(key.removeprefix("backbone."))
        if bare.startswith("decoder") or bare == "mask_token":  # MAE decoder: not part of the encoder
            continue
        if bare in ("mean", "std"):
            out[bare] = value
        elif f"backbone.{bare}" in own:
            out[f"backbone.{bare}"] = value
        elif bare == "norm.weight" or bare == "norm.bias":
            # MAE pre-trains with a final norm; timm's avg-pool ViT applies it as fc_norm.
            out[f"backbone.fc_{bare}"] = value
        else:
            out[key] = value
    return out


def _resize_pos_embed(value: torch.Tensor, target: torch.Tensor, model: ImageClassifier) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    prefix = getattr(model.backbone, "num_prefix_tokens", 1)
    grid = model.backbone.patch_embed.grid_size
    return resample_abs_pos_embed(value, new_size=list(grid), num_prefix_tokens=prefix)


def adapt_first_conv(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """An RGB first convolution for a model of another input channel count (grey data): timm's rule, as when
    it loads hub weights (``adapt_input_conv``: summed filters for 1 channel, repeated and rescaled for more).
    Any other tensor is returned as it is."""
    if value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0] and \
            value.shape[2:] == target.shape[2:] and value.shape[1] == 3 and target.shape[1] != 3:
        from timm.models import adapt_input_conv

        return adapt_input_conv(int(target.shape[1]), value)
    return value


def pair_by_order(state: dict[str, torch.Tensor], model: ImageClassifier, path: str | Path) -> dict[str, torch.Tensor]:
    """A port whose keys use another implementation's names (EfficientNet-PyTorch's ``_conv_stem``,
    ``_blocks.N._depthwise_conv`` for timm's ``conv_stem``, ``blocks.i.j.conv_dw``): its tensors matched to the
    backbone's in order, when every one pairs up with the same shape. The classifier may differ in its number
    of classes (it is then left to be trained). Anything else is refused, naming the first mismatch."""
    own = [k for k in model.state_dict() if k.startswith("backbone.")]
    head = f"backbone.{model.classifier_attr}."
    if Path(path).suffix == ".safetensors":  # its tensors are stored by dtype and name, not in module order
        raise SemivitError(f"the key names of '{path}' match almost none of '{model.spec.name}' and a .safetensors "
                           f"file does not keep the tensors' order: pass the original .pth (its order pairs with "
                           f"the model) or a state dict with this architecture's names")
    theirs = list(state.items())
    if len(theirs) != len(own):
        raise SemivitError(f"the tensors of '{path}' do not pair one to one with '{model.spec.name}': the file has "
                           f"{len(theirs)} under other names, the model {len(own)} (first: '{theirs[0][0]}' against "
                           f"'{own[0].removeprefix('backbone.')}'); use a state dict of this architecture")
    paired: dict[str, torch.Tensor] = {}
    model_state = model.state_dict()
    for (key, value), target in zip(theirs, own):
        value = adapt_first_conv(value, model_state[target])
        if tuple(value.shape) == tuple(model_state[target].shape):
            paired[target] = value
        elif not target.startswith(head):
            raise SemivitError(f"'{path}' does not fit '{model.spec.name}': its tensor '{key}' {tuple(value.shape)} "
                               f"pairs with '{target.removeprefix('backbone.')}' {tuple(model_state[target].shape)}; "
                               f"use a state dict of this architecture")
    return paired


def load_pretrained(model: ImageClassifier, path: str | Path, *, verbose: bool = True) -> dict[str, list[str]]:
    """Load weights into ``model`` (non-strict); returns and logs the missing/unexpected/skipped keys.

    Keys are matched by name first (semivit, timm, MAE's reference, ``module.`` prefixes); a file most of whose
    names the model does not have is paired by order and shape (:func:`pair_by_order`). A file whose names fit
    part of the model (a ViT's weights in Semiformer's transformer stream) loads by name."""
    raw = read_state_dict(path)
    state = remap_keys(raw, model)
    own = model.state_dict()
    backbone = [k for k in own if k.startswith("backbone.")]
    named = sum(1 for k in state if k in own)
    if backbone and named < len(raw) // 2:
        state = pair_by_order(raw, model, path)
        if verbose:
            first = next(iter(raw))
            log.info("'%s' uses other key names: its %d tensors paired with the model's by order and shape "
                     "('%s' → '%s', ...)", path, len(raw), first, backbone[0].removeprefix("backbone."))
    skipped = []
    for key in list(state):
        if key not in own:
            continue
        state[key] = adapt_first_conv(state[key], own[key])
        if key.endswith("pos_embed") and state[key].shape != own[key].shape:
            state[key] = _resize_pos_embed(state[key], own[key], model)
        if state[key].shape != own[key].shape:
            skipped.append(f"{key} {tuple(state[key].shape)}→{tuple(own[key].shape)}")
            del state[key]
    result = model.load_state_dict(state, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
              "skipped": skipped}
    matched = len(state) - len(result.unexpected_keys)
    if verbose and matched:
        log.info("loaded %s: %d tensors; missing %s; unexpected %s; shape-mismatch skipped %s", path, matched,
                 _few(report["missing"]), _few(report["unexpected"]), _few(skipped))
    if matched == 0:
        raise SemivitError(f"no weights in '{path}' match model '{model.spec.name}': check model.name and "
                           f"the model size settings")
    return report
