"""Where a run computes: the device a setting names, and the autocast dtype for it."""

from __future__ import annotations

import torch

from semivit.errors import SemivitError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SemivitError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise SemivitError(f"unknown device '{name}': use cpu, cuda or auto")
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or device.type != "cuda":
        return None  # CPU autocast is slower than fp32 for these small models
    if setting == "fp16":
        return torch.float16
    if setting in ("bf16", "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise SemivitError(f"unknown train.amp '{setting}': use auto, bf16, fp16 or off")
