"""Checkpoints written atomically (temp file + fsync + rename) and read without unpickling code.

``last.pt`` holds the full training state (model, optimizer, EMA, RNG states, step, data position) as
plain tensors and containers, so ``torch.load(weights_only=True)`` reads it. Model weights are also
exported as ``.safetensors`` with the model spec in the metadata, which is what evaluate/predict read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from semivit.core.io import atomic_write, load_tensors_file
from semivit.errors import SemivitError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SemivitError(f"checkpoint '{path}' not found: pass a run's checkpoints/last.pt")
    try:
        return load_tensors_file(p)
    except Exception as e:  # a truncated or foreign file
        raise SemivitError(f"cannot read checkpoint '{path}' ({type(e).__name__}): it may be incomplete; "
                           f"use the previous one or start again without --resume") from None


def export_weights(model: nn.Module, path: str | Path, spec: dict[str, Any], extra: dict | None = None) -> None:
    """Save ``model``'s weights as safetensors with ``spec`` (to rebuild it) in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"semivit_spec": json.dumps(spec), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def exported_file(path: str | Path) -> Path:
    """``path``, or for a run folder (or its checkpoints folder) the model.safetensors it exported."""
    p = Path(path)
    if p.is_dir():
        return next((c for c in (p / "checkpoints" / "model.safetensors", p / "model.safetensors") if c.is_file()), p)
    return p


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata (JSON-decoded) of a file written by :func:`export_weights`."""
    from safetensors import safe_open

    p = exported_file(path)
    if not p.is_file():
        raise SemivitError(f"model file '{path}' not found: pass a run folder or its model.safetensors")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise SemivitError(f"cannot read '{p}' as safetensors ({type(e).__name__}): pass a model.safetensors "
                           f"written by semivit") from None
    if "semivit_spec" not in meta:
        raise SemivitError(f"'{p}' has no semivit model spec: it was not written by semivit; load it with "
                           f"--set model.pretrained={p} instead")
    try:
        return tensors, {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError:
        raise SemivitError(f"'{p}' has metadata that is not JSON: the file is damaged or forged; re-export the "
                           f"model") from None


def read_export_meta(path: str | Path) -> dict[str, Any] | None:
    """The JSON-decoded metadata of a semivit ``.safetensors`` file (``semivit_spec``, and from training runs
    ``method`` and ``classifier_trained``), or None for other files."""
    from safetensors import safe_open

    path = exported_file(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in meta.items()} if "semivit_spec" in meta else None
    except Exception:
        return None


def read_spec(path: str | Path) -> dict[str, Any] | None:
    """The model spec stored in a semivit ``.safetensors`` file, or None for other files."""
    meta = read_export_meta(path)
    return meta["semivit_spec"] if meta else None


def capture_rng() -> dict[str, Any]:
    import random

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
