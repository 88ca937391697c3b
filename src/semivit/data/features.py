"""A frozen backbone's features, computed once and cached: of every image as it is, and of K augmented views
(weak and strong) of every training image, so a head trains on a CPU in seconds with the project's methods.

Why: a pretrained backbone's forward pass is ~all of a frozen-backbone run's cost (EfficientNet-Lite0 at 96 px
embeds ~440 images/s on 2 cores; a linear head steps 10,000 times a second). FixMatch and the EMA-Teacher need
a weak and a strong view of each unlabeled image at each step; with the backbone frozen, a view's features
are a fixed function of the view, so K views of each kind are embedded once and each step draws one of them
per image (the "feature-space FixMatch" of semi-supervised probes on frozen features).

The cache is a folder per key (the backbone's weights and settings, the data, the views), written chunk by
chunk with atomic writes: an interrupted embedding resumes at its first missing chunk, and a second run with
the same key computes nothing. ``semivit probe``, ``suggest`` and training read the same cache.

Examples:
    >>> import torch
    >>> embed = lambda x: x.flatten(1)[:, :4]  # stands in for backbone.classifier_input
    >>> # feats = embed_dataset(embed, "my-backbone", data, ViewPlan(views=2, flip=True), root)
    >>> # feats.train["weak"].shape == (2, len(data.train), dim)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from semivit.core.io import atomic_write, atomic_write_json
from semivit.data import PreparedData
from semivit.data.augment import to_float
from semivit.data.imageset import ImageSet
from semivit.data.loaders import BalancedIndexStream, Batch, IndexStream, LabeledAndUnlabeled
from semivit.data.views import make_view
from semivit.errors import SemivitError

log = logging.getLogger("semivit")

#: the view kinds a cache holds: the image as it is, and K weak and K strong augmented views
CACHED_VIEWS = ("none", "weak", "strong")
CHUNK = 2048  # images per cache file: the unit an interrupted embedding resumes at


def default_cache_root() -> Path:
    """``$SEMIVIT_CACHE/features``, else ``$XDG_CACHE_HOME/semivit/features`` (``~/.cache/semivit/features``)."""
    if os.environ.get("SEMIVIT_CACHE"):
        return Path(os.environ["SEMIVIT_CACHE"]) / "features"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "semivit" / "features"


@dataclass(frozen=True)
class ViewPlan:
    """Which augmented views are embedded: ``views`` weak and ``views`` strong views of each training image
    (0: only the images as they are), made with the training run's own augmentation settings."""

    views: int = 2
    flip: bool = True
    strong: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class CachedFeatures:
    """``train``: ``{"none": [N, D], "weak": [K, N, D], "strong": [K, N, D]}`` (float16); ``test``: [M, D]."""

    train: dict[str, torch.Tensor]
    test: torch.Tensor | None
    folder: Path
    computed: int  # images embedded by this call (0: all read from the cache)

    @property
    def dim(self) -> int:
        return int(self.train["none"].shape[1])

    @property
    def views(self) -> int:
        return int(self.train["weak"].shape[0]) if "weak" in self.train else 0


def data_fingerprint(data: PreparedData) -> str:
    """A digest of the training and test images and labels (their pixels when in memory; their ids and
    sizes when streamed): another data set, a changed image or another label never reuses a cache."""
    h = hashlib.sha256()
    for part in (data.train, data.test):
        if part is None:
            h.update(b"-")
            continue
        h.update(f"{len(part)}|{part.channels}|{part.image_size}|".encode())
        h.update(part.labels.numpy().tobytes())
        if part.images is not None:
            h.update(part.images.contiguous().numpy().tobytes())
        else:
            h.update("\n".join(part.ids).encode())
    return h.hexdigest()[:16]


def weights_fingerprint(module: torch.nn.Module, skip: str | tuple[str, ...] = "") -> str:
    """A digest of a module's weights and buffers (names, shapes and values), leaving out those whose names
    start with ``skip`` (one prefix or several: a classifier, or a cut backbone's trained tail, which the cached
    features do not depend on: a later stage then reuses the cache)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip and name.startswith(skip):
            continue
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_key(backbone: str, data: PreparedData, plan: ViewPlan) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The folder of (backbone, data) — the images' own features, which ``probe`` also reads — and inside it
    one sub-folder per view kind and its settings (weak: flip and seed; strong: also RandAugment's). The number
    of views is not in the key: view k is seeded by (seed, kind, k, chunk), so a run with 4 views reuses the 2
    an earlier run embedded, and new strong-view settings keep the weak views."""
    parts = {"backbone": backbone, "data": data_fingerprint(data), "chunk": CHUNK}
    weak = {"flip": plan.flip, "seed": plan.seed}
    views = {"weak": f"weak-{_digest(weak)}", "strong": f"strong-{_digest({**weak, 'strong': plan.strong})}"}
    return _digest(parts), views, {**parts, "views": {**weak, "strong": plan.strong}}


class _Progress:
    """A progress bar with ETA over every image still to embed (tqdm on a terminal, a line every 30 s else)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="embedding", unit="img", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.inference_mode()
def embed_dataset(embed: Callable[[torch.Tensor], torch.Tensor], backbone: str, data: PreparedData,
                  plan: ViewPlan, root: Path | None = None, *, batch_size: int = 128,
                  device: torch.device | str = "cpu", progress: bool = True) -> CachedFeatures:
    """The cached features of ``data`` under ``embed`` (float images in [0, 1] → [B, D] features), computing
    only the chunks the cache lacks. ``backbone`` identifies ``embed`` in the key (its architecture, weights
    digest and input settings); views are seeded by (``plan.seed``, view, chunk), so they are reproducible."""
    root = Path(root) if root is not None else default_cache_root()
    key, views_key, parts = cache_key(backbone, data, plan)
    folder = root / key
    view_folders = [folder / name for name in views_key.values()]
    try:
        for sub in view_folders:
            sub.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SemivitError(f"cannot create the feature cache '{folder}' ({e.strerror or e}): set features.cache to "
                           f"a writable folder") from None
    jobs: list[tuple[str, ImageSet, str, int]] = [("train", data.train, "none", 0)]
    jobs += [("train", data.train, kind, k) for kind in ("weak", "strong") for k in range(plan.views)]
    if data.test is not None and len(data.test):
        jobs.append(("test", data.test, "none", 0))
    missing = [set(_missing(folder, part, kind, k, len(images), views_key)) for part, images, kind, k in jobs]
    todo = sum(min(CHUNK, len(job[1]) - c * CHUNK) for job, cs in zip(jobs, missing) for c in cs)
    bar = _Progress(todo, progress)
    device = torch.device(device)
    computed, start = 0, time.perf_counter()
    out: dict[str, dict[str, list[torch.Tensor]]] = {"train": {}, "test": {}}
    try:
        for (part, images, kind, k), todo_chunks in zip(jobs, missing):
            chunks = []
            for c in range((len(images) + CHUNK - 1) // CHUNK):
                path = _chunk_path(folder, part, kind, k, c, views_key)
                if c in todo_chunks:
                    idx = torch.arange(c * CHUNK, min((c + 1) * CHUNK, len(images)))
                    feats = _embed_chunk(embed, images, idx, kind, k, c, plan, batch_size, device)
                    atomic_write(path, lambda tmp, f=feats: save_file({"features": f}, tmp))
                    computed += len(idx)
                    bar.update(len(idx))
                else:
                    feats = load_file(str(path))["features"]
                chunks.append(feats)
            out[part].setdefault(kind, []).append(torch.cat(chunks))
    finally:
        bar.close()
    atomic_write_json(folder / "meta.json", {k: v for k, v in parts.items() if k != "views"})
    if computed:
        seconds = time.perf_counter() - start
        log.info("embedded %d images in %.0f s (%.0f images/s) into %s", computed, seconds, computed / seconds, folder)
    else:
        log.info("features read from the cache %s (nothing to embed)", folder)
    train = {kind: (views[0] if kind == "none" else torch.stack(views)) for kind, views in out["train"].items()}
    test = out["test"]["none"][0] if "none" in out["test"] else None
    return CachedFeatures(train, test, folder, computed)


def _chunk_path(folder: Path, part: str, kind: str, k: int, c: int, views: dict[str, str]) -> Path:
    if kind == "none":  # the images as they are: shared by every view setting
        return folder / f"{part}-none-{c:05d}.safetensors"
    return folder / views[kind] / f"{part}-{k}-{c:05d}.safetensors"


def _missing(folder: Path, part: str, kind: str, k: int, n: int, views: dict[str, str]) -> list[int]:
    """Chunks without a readable file (a crash never leaves half a file: they are written atomically)."""
    out = []
    for c in range((n + CHUNK - 1) // CHUNK):
        path = _chunk_path(folder, part, kind, k, c, views)
        if not path.is_file():
            out.append(c)
            continue
        try:  # the header says the rows: the features themselves are read once, by the caller
            with safe_open(str(path), framework="pt") as f:
                rows = f.get_slice("features").get_shape()[0]
        except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed, whatever its fault
            rows = -1
        if rows != min(CHUNK, n - c * CHUNK):
            out.append(c)
    return out


def _embed_chunk(embed: Callable[[torch.Tensor], torch.Tensor], images: ImageSet, idx: torch.Tensor, kind: str,
                 k: int, c: int, plan: ViewPlan, batch_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(plan.seed * 1_000_003 + CACHED_VIEWS.index(kind) * 7919 + k * 104_729 + c)
    out = []
    for start in range(0, len(idx), batch_size):
        x = to_float(images.get(idx[start:start + batch_size]).to(device))
        if kind != "none":
            x = make_view(kind, x, generator, flip=plan.flip, **(plan.strong if kind == "strong" else {}))
        out.append(embed(x).float().cpu().to(torch.float16))
    return torch.cat(out)


class FeatureBatches(LabeledAndUnlabeled):
    """:class:`~semivit.data.loaders.Batch` es of cached features, as the image batches would be: the same
    seeded index streams (labeled, unlabeled, PAWS-style balanced), and for each image and view one of its K
    cached views of that kind, drawn from a generator seeded by (seed, rank, step), so a resumed run draws
    exactly the same batches."""

    def __init__(self, feats: CachedFeatures, labels: torch.Tensor, labeled: torch.Tensor, unlabeled: torch.Tensor,
                 *, labeled_views: tuple[str, ...], unlabeled_views: tuple[str, ...], batch_size: int,
                 unlabeled_batch_size: int, device: torch.device, seed: int, rank: int = 0, world: int = 1,
                 support: tuple[int | None, int] | None = None) -> None:
        for name in (*labeled_views, *unlabeled_views):
            kind = name.split(":", 1)[0]
            if kind not in CACHED_VIEWS or (kind != "none" and feats.views == 0):
                have = "none" + (", weak, strong" if feats.views else "")
                raise SemivitError(f"the method asks for '{kind}' views, and cached features hold {have}: train it "
                                   f"on images (features.frozen=false), or choose a method that uses those views")
        self.train = {k: v.to(device) for k, v in feats.train.items()}
        self.labels, self.device, self.seed, self.rank = labels.to(device), device, seed, rank
        self.labeled_views, self.unlabeled_views = labeled_views, unlabeled_views
        self.labeled: IndexStream | BalancedIndexStream | None = None
        if labeled_views and (batch_size > 0 or support):
            self.labeled = (BalancedIndexStream(labeled, labels, support[0], support[1], seed, 1, rank) if support
                            else IndexStream(labeled, batch_size, seed, 1, rank, world))
        self.unlabeled = (IndexStream(unlabeled, unlabeled_batch_size, seed, 2, rank, world)
                          if unlabeled_views and unlabeled_batch_size > 0 else None)
        self.generator = torch.Generator(device=device)

    def _views(self, idx: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        for name in names:
            kind = name.split(":", 1)[0]
            if kind == "none":
                out[name] = self.train["none"][idx].float()
                continue
            views = self.train[kind]
            pick = torch.randint(len(views), (len(idx),), generator=self.generator, device=self.device)
            out[name] = views[pick, idx].float()
        return out

    def next(self, step: int) -> Batch:
        self.generator.manual_seed(self.seed * 1_000_003 + self.rank * 7919 + step * 31 + 17)
        batch = Batch()
        if self.labeled is not None:
            idx = self.labeled.next().to(self.device)
            batch.x, batch.y = self._views(idx, self.labeled_views), self.labels[idx]
        if self.unlabeled is not None:
            idx = self.unlabeled.next().to(self.device)
            batch.u, batch.u_index, batch.u_true = self._views(idx, self.unlabeled_views), idx, self.labels[idx]
        return batch
