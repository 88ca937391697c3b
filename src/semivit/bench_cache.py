"""Embed once, before a suite's cells: the feature caches its frozen-backbone rows read (the pooled features, or
a cut backbone's activations, of every image and of its cached views; data/features.py).

Why: a cache is one cost shared by every row and seed that reads it. Built inside the first cell, it was charged to
that cell's budget (a 10-minute ``compare`` row failed on CIFAR-10: the cache of 260,000 images and views takes
~16 minutes on one thread), and with ``--jobs`` two cells built the same cache side by side. Built here, in the
parent process, its time is reported on its own (``embedding.json`` beside the table) and the cells read it.

Examples:
    >>> embed_once([])  # no frozen-backbone cell: nothing to embed
    []
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from semivit.config import Config

log = logging.getLogger("semivit")


def _cache_key(cfg: Config) -> str:
    """What decides a stage's cache: its data, backbone, input size, views and cut (not the seed, labels or method)."""
    d, m, f = cfg.data, cfg.model, cfg.features
    return json.dumps([d.source, d.test, d.unlabeled, d.image_size, d.flip, d.strong_ops, d.strong_magnitude,
                       d.strong_erase, m.name, m.pretrained, str(m.resolution), f.views, f.train_blocks, f.cache,
                       f.seed], default=str)


def embed_once(cells: list[list[Config]], root: Path | None = None) -> list[dict[str, Any]]:
    """Build (or find) the cache of every distinct frozen-backbone first stage among ``cells`` (each a cell's stage
    configs); returns one record per cache (what, seconds) and, with ``root``, writes them to ``root/embedding.json``
    (records of earlier calls kept: a continued suite finds its caches built and adds near-zero times)."""
    import torch

    from semivit.core.device import resolve_device
    from semivit.core.distributed import DistInfo
    from semivit.data import prepare_data
    from semivit.engine.inputs import frozen_backbone_inputs

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return []  # under torchrun the first cell's ranks build it together (rank 0 embeds, the others wait)
    firsts = {_cache_key(c[0]): c[0] for c in cells if c and c[0].features.frozen}
    records = []
    for cfg in firsts.values():
        start = time.perf_counter()
        data = prepare_data(cfg.data, cfg.train.seed)
        loaded = time.perf_counter() - start
        inputs, _ = frozen_backbone_inputs(cfg, data, DistInfo(), torch.device(resolve_device(cfg.train.device)))
        what = (f"{cfg.model.name} at {cfg.model.resolution} px, {cfg.features.views} weak + strong views"
                + (f", cut before the last {cfg.features.train_blocks} block(s)" if cfg.features.train_blocks else ""))
        records.append({"cache": what, "images": inputs.feats.computed, "seconds": time.perf_counter() - start - loaded,
                        "data_seconds": loaded})
        log.info("feature cache (%s): %d images and views embedded in %.0f s", what, inputs.feats.computed,
                 records[-1]["seconds"])
    if root is not None and records:
        path = root / "embedding.json"
        earlier = json.loads(path.read_text()) if path.is_file() else []
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(earlier + records, indent=2))
    return records
