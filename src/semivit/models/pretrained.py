"""Load local pretrained weights safely: safetensors, or ``torch.load(weights_only=True)``.

Keys are remapped from the layouts users bring (semivit, timm, the MAE reference code, DDP-wrapped
``module.`` checkpoints), position embeddings are resized to the new grid, and the classifier head is
dropped when its shape differs. Missing and unexpected keys are reported, never silently ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def load_pretrained(model: ImageClassifier, path: str | Path, *, verbose: bool = True) -> dict[str, list[str]]:
    """Load weights into ``model`` (non-strict); returns and logs the missing/unexpected/skipped keys."""
    state = remap_keys(read_state_dict(path), model)
    own = model.state_dict()
    skipped = []
    for key in list(state):
        if key not in own:
            continue
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
