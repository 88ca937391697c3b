"""Optimizer with layer-wise LR decay, and the per-step cosine schedule with linear warm-up.

Layer-wise decay (BEiT / MAE fine-tuning): block i of an L-block ViT gets lr·d^(L+1−i), the embeddings
lr·d^(L+1), the head lr. No weight decay on biases, norms, position embeddings and tokens.
The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from semivit.config import OptimConfig
from semivit.core.schedule import stage_steps
from semivit.errors import SemivitError

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "mask_token", "reg_token")


def _layer_id(name: str, num_layers: int) -> int:
    """0 for embeddings, i+1 for block i, num_layers+1 for everything after the blocks."""
    name = name.split("backbone.", 1)[-1]
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def param_groups(modules: dict[str, nn.Module], weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups for every trainable parameter in ``modules`` (each a named part of a method).

    Layer decay applies to ViT backbones (modules with ``blocks``); other parts get the full LR. A parameter
    may carry its own ``lr_scale`` attribute (the pretrained blocks of a cut backbone, models/tail.py), which
    multiplies its group's.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in modules.values():
        blocks = getattr(getattr(module, "backbone", module), "blocks", None)
        num_layers = len(blocks) if blocks is not None and layer_decay != 1.0 else 0
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            no_decay = p.ndim <= 1 or any(k in name for k in _NO_DECAY_NAMES)
            scale = layer_decay ** (num_layers + 1 - _layer_id(name, num_layers)) if num_layers else 1.0
            scale *= getattr(p, "lr_scale", 1.0)
            groups.setdefault((0.0 if no_decay else weight_decay, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in groups.items()]


def build_optimizer(method: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    parts = {name: child for name, child in method.named_children()}
    parts["_own"] = method  # parameters held directly by the method (already-seen ones are skipped)
    groups = param_groups(parts, cfg.weight_decay, cfg.layer_decay)
    if not groups:
        raise SemivitError("the method has no trainable parameters")
    if cfg.name == "adamw":
        # one fused kernel for every parameter on a GPU (the per-tensor loop is host-bound for small models)
        on_gpu = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=on_gpu or None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise SemivitError(f"unknown optimizer optim.name='{cfg.name}': use adamw or sgd")


def lr_at(step: int, total_steps: int, base_lr: float, warmup: float, min_lr_ratio: float) -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to ``base_lr·min_lr_ratio`` at ``total_steps``."""
    warmup_steps = stage_steps(warmup, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
