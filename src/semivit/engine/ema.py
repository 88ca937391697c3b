"""The run's config with every EMA momentum as the stage uses it (the EMA itself is :mod:`semivit.core.ema`)."""

from __future__ import annotations

import copy
from typing import Any

from semivit.config import Config
from semivit.core.ema import ModelEMA, half_life, scaled_momentum

__all__ = ["ModelEMA", "effective_config", "half_life", "scaled_momentum"]


def effective_config(cfg: Config, method_settings: dict[str, Any], steps: int) -> Config:
    """``cfg`` with every EMA momentum as the run uses it: ``train.ema`` scaled to the stage's ``steps`` and
    declared at that length, and the method's own (``method_settings``, from
    :meth:`~semivit.methods.base.Method.effective_settings`). Written as the run's ``config.yaml``."""
    out = copy.deepcopy(cfg)
    t = cfg.train
    if t.ema and t.ema_ref_steps is not None:
        out.train.ema = scaled_momentum(t.ema, t.ema_ref_steps, steps, "train.ema")
        out.train.ema_ref_steps = steps
    out.method = {**cfg.method, **method_settings}
    return out
