"""The images the labeling loop works on: a run's (or a data source's) training part, which of them are
labeled, the rest as candidates, their embeddings and the run's teacher predictions, and where each
image lives on disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semivit.config import Config, apply_overrides
from semivit.data.imageset import ImageSet
from semivit.errors import SemivitError
from semivit.labeling.select import normalize
from semivit.report.runs import check_model_fits, run_config, run_folder

log = logging.getLogger("semivit")

UNLABELED_PREFIX = "unlabeled/"  # ids of images added with --unlabeled (data/sources)

#: an image's label in the loop: a class index, or the classes present in a multi-label image
Label = int | tuple[int, ...]


@dataclass
class Pool:
    """A training part as the labeling loop sees it.

    ``known``: the labels the loop already has (image index → class index, or for multi-label data the tuple of
    the classes present): a run's training and validation labels, or, for a data source, the labels it holds
    (``--labels``/``--split`` narrow them).
    ``candidates``: every other image, in index order. ``hidden``: whether the data holds labels for some
    candidates (a simulation on a labeled set; they are used only to measure, never to choose).
    """

    cfg: Config
    train: ImageSet
    known: dict[int, Label]
    candidates: np.ndarray
    run_dir: Path | None = None
    test: ImageSet | None = None
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # a run's validation images
    val_from: str = "none"  # where the run's validation labels came from (split.json)
    origin: str = ""  # the command-line arguments that name this pool (a run folder, or --data ...)
    cached_features: torch.Tensor | None = field(default=None, repr=False)  # run_features, read once

    @property
    def labeled(self) -> np.ndarray:
        return np.array(sorted(self.known), dtype=np.int64)

    @property
    def hidden(self) -> bool:
        return bool(len(self.candidates)) and bool(self.train.known()[torch.from_numpy(self.candidates)].any())

    def class_name(self, c: Label) -> str:
        """A class's name; for a multi-label image's classes, their names joined as ``a|b`` (the CSV form)."""
        if isinstance(c, tuple):
            return "|".join(self.class_name(k) for k in c)
        return self.train.classes[c] if 0 <= c < len(self.train.classes) else str(c)

    def set_name(self, present: np.ndarray) -> str:
        """The ``a|b`` name of the classes a bool row (one entry per class) marks present."""
        return self.class_name(tuple(np.nonzero(present)[0].tolist()))



def label_of(train: ImageSet, i: int) -> Label:
    """Image ``i``'s label as the loop keeps it (see :class:`Pool`)."""
    if train.multilabel:
        return tuple(torch.nonzero(train.labels[i] == 1).flatten().tolist())
    return int(train.labels[i])


def _load(cfg: Config) -> Any:
    from semivit.data.sources import load_source

    d = cfg.data
    return load_source(d.source, test=d.test, unlabeled=d.unlabeled, root=d.root, download=d.download,
                       image_size=d.image_size, on_corrupt=d.on_corrupt, stream_threshold=d.stream_threshold)


def pool_from_run(run: str | Path) -> Pool:
    """The training part of a finished run, with its training and validation labels as known (its
    ``split.json``), and the rest as candidates."""
    from semivit.data.splits import load_split

    run_dir = run_folder(run)
    cfg = run_config(run_dir)
    bundle = _load(cfg)
    train = bundle.train
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise SemivitError(f"'{run_dir}' has no split.json: pass a finished run folder")
    split = load_split(str(split_file), train, cfg.data.val, cfg.train.seed)
    labeled = torch.cat([split.labeled, split.val]).tolist()
    pool = _pool(cfg, train, {i: label_of(train, i) for i in labeled}, run_dir, bundle.test)
    pool.val, pool.val_from = split.val.numpy().astype(np.int64), split.val_from
    return pool


def pool_from_data(cfg: Config, labels: str = "all", split: str | None = None) -> Pool:
    """The training part of ``cfg.data``: its labels as known (``labels``: ``all`` (default), ``0``/``none``
    to start from nothing — a simulation on a labeled set —, or any ``--labels`` spec; ``split``: a
    split.json or list file of the labeled images)."""
    from semivit.data.splits import load_split, make_split

    bundle = _load(cfg)
    train = bundle.train
    known_idx = torch.nonzero(train.known()).flatten()
    spec = labels.strip().lower()
    if split:
        s = load_split(split, train, "0", cfg.train.seed)
        chosen = torch.cat([s.labeled, s.val])
    elif spec == "all":
        chosen = known_idx
    elif spec in ("0", "none"):
        chosen = torch.zeros(0, dtype=torch.long)
    else:
        s = make_split(train, labels, "0", cfg.train.seed)
        chosen = s.labeled
    return _pool(cfg, train, {int(i): label_of(train, int(i)) for i in chosen}, None, bundle.test)


def _pool(cfg: Config, train: ImageSet, known: dict[int, Label], run_dir: Path | None,
          test: ImageSet | None) -> Pool:
    everything = np.arange(len(train))
    candidates = everything[~np.isin(everything, np.array(sorted(known), dtype=np.int64))]
    if len(candidates) == 0:
        raise SemivitError("every training image is already labeled: nothing to suggest (on a labeled data set, "
                           "pass --labels 0 to start from no labels, or --labels 2-per-class)")
    return Pool(cfg, train, known, candidates, run_dir, test)


# ---------------------------------------------------------------------------------------------- models


def load_encoder(pool: Pool, encoder: str | None) -> Any:
    """The model whose features embed the pool: ``encoder`` (a run or hub folder, ``local-dir:``/
    ``hf-hub:``/a tagged timm name for a pretrained backbone), else the pool's run. ``pixels`` returns None
    (raw pixels, see :func:`embed`)."""
    from semivit.probe import _model_for  # the one place that builds a frozen encoder from a run or a name

    if encoder == "pixels":
        return None
    if encoder is None:
        if pool.run_dir is None:
            raise SemivitError("no encoder to embed the images: pass --encoder RUN_FOLDER (e.g. a simclr, mae or "
                               "byol run), --encoder vit_small_patch14_dinov2.lvd142m, or --encoder pixels")
        encoder = str(pool.run_dir)
    path = Path(encoder).expanduser()
    if path.exists():
        from semivit.engine.checkpoint import load_model
        from semivit.models.hub_folder import is_hub_folder

        model, _ = load_model(run_folder(path) if path.is_dir() and not is_hub_folder(path) else path)
        check_model_fits(model, pool.train, encoder)
        return model.eval()
    cfg = apply_overrides(pool.cfg, {"model.name": encoder, "model.pretrained": "hub"})
    return _model_for(cfg, pool, None)


def embed(model: Any, images: ImageSet, device: str = "cpu", seed: int = 0) -> np.ndarray:
    """L2-normalised embeddings of every image: the model's own embedding or pooled features
    (:func:`~semivit.engine.evaluate.extract_features`), or, with no model, standardised raw pixels
    reduced by PCA to ≤ 50 dimensions (a baseline that only suits tiny images such as 8×8 digits)."""
    if model is not None:
        from semivit.engine.evaluate import extract_features

        return normalize(extract_features(model, images, device=device, embedding=True).numpy())
    return pixel_embedding(images, seed=seed)[0]


def pixel_embedding(images: ImageSet, *others: ImageSet, seed: int = 0) -> list[np.ndarray]:
    """Raw pixels standardised and reduced by PCA to ≤ 50 dimensions, L2-normalised: fitted on ``images``,
    then applied to them and to ``others`` (e.g. a test part, for a classifier on the same features)."""
    from sklearn.decomposition import PCA

    def flat(part: ImageSet) -> np.ndarray:
        return part.get(torch.arange(len(part))).reshape(len(part), -1).float().numpy()

    x = flat(images)
    mean, std = x.mean(0), x.std(0) + 1e-6
    pca = PCA(n_components=min(50, x.shape[1], len(x)), random_state=seed).fit((x - mean) / std)
    return [normalize(pca.transform((flat(p) - mean) / std)) for p in (images, *others)]


def run_features(pool: Pool, device: str = "cpu") -> torch.Tensor | None:
    """The pooled features every training image had in a run that trained a head on a frozen backbone
    (``features.frozen``, no trained blocks), read from the feature cache that run filled (data/features.py):
    the labeling loop then never runs the backbone over the pool again (on a CPU, minutes at 128 px). None for
    other runs. Read once per pool."""
    cfg = pool.cfg
    if pool.run_dir is None or not cfg.features.frozen or cfg.features.train_blocks:
        return None
    if pool.cached_features is None:
        pool.cached_features = _cached_pool_features(cfg, pool, device)
    return pool.cached_features


def pretrained_features(pool: Pool, encoder: str, device: str = "cpu", data: Any = None) -> torch.Tensor:
    """A pretrained backbone's pooled features of every training image (``encoder``: a tagged timm name,
    ``hf-hub:``/``local-dir:``), at ``model.resolution`` of the pool's settings, through the same feature cache
    as ``semivit probe`` and the frozen-backbone recipes: a cold start on a pool those already embedded runs no
    backbone, and a run after it reads what the cold start embedded. ``data``: the pool's data already prepared
    (else its parts are wrapped as such)."""
    from semivit.probe import _require_pretrained

    # the name's own weights, unless the settings name a file for it (--set model.pretrained=FILE)
    weights = "hub" if pool.cfg.model.pretrained in ("auto", "none") else pool.cfg.model.pretrained
    cfg = apply_overrides(pool.cfg, {"model.name": encoder, "model.pretrained": weights})
    _require_pretrained(cfg)
    return _cached_pool_features(cfg, pool, device, data)


def pool_embedding(pool: Pool, encoder: str | None, model: Any = None, device: str = "cpu",
                   seed: int = 0) -> np.ndarray:
    """L2-normalised embeddings of the pool's training images from ``encoder`` (:func:`load_encoder`'s
    choices) or, with none, ``model`` (a run's own model): a frozen-feature run's features and a pretrained
    backbone's are read from the feature cache (:func:`run_features`, :func:`pretrained_features`) instead of
    running the backbone over the pool again."""
    if encoder is None:
        cached = run_features(pool, device)
        if cached is not None:
            return normalize(cached.numpy())
    elif encoder != "pixels" and not Path(encoder).expanduser().exists():
        return normalize(pretrained_features(pool, encoder, device).numpy())
    return embed(model if encoder is None and model is not None else load_encoder(pool, encoder), pool.train,
                 device, seed)


def _cached_pool_features(cfg: Config, pool: Pool, device: str, data: Any = None) -> torch.Tensor:
    from semivit.core.distributed import DistInfo
    from semivit.data import PreparedData
    from semivit.data.imageset import DataBundle
    from semivit.data.splits import Split
    from semivit.engine.inputs import backbone_features

    if data is None:
        empty = torch.zeros(0, dtype=torch.long)
        flip = True if cfg.data.flip is None else cfg.data.flip  # the cache's key holds only the plain images
        data = PreparedData(DataBundle(cfg.data.source, pool.train, pool.test, flip), Split(empty, empty, empty),
                            flip)
    _, feats = backbone_features(cfg, data, DistInfo(), torch.device(device), views=0)
    return feats.train["none"].float()


def run_teacher_probs(pool: Pool, model: Any, device: str = "cpu") -> np.ndarray:
    """:func:`teacher_probs` of the pool's run over its training images; a frozen-feature run's classifier reads
    the cached features (:func:`run_features`) instead of running the backbone."""
    feats = run_features(pool, device)
    if feats is None:
        return teacher_probs(model, pool.train, device)
    with torch.no_grad():
        logits = torch.cat([model.classifier()(feats[i:i + 4096]).float() for i in range(0, len(feats), 4096)])
    return (logits.sigmoid() if model.spec.multilabel else logits.softmax(1)).numpy()


def teacher_probs(model: Any, images: ImageSet, device: str = "cpu") -> np.ndarray:
    """Class probabilities of the run's evaluation model (the EMA teacher where there is one): a softmax, or for
    a multi-label model each class's own sigmoid."""
    from semivit.engine.evaluate import predict_logits

    logits = predict_logits(model, images, device=device)
    return (logits.sigmoid() if model.spec.multilabel else logits.softmax(1)).numpy()


# ---------------------------------------------------------------------------------------------- files


def _file_of(source: str, image_id: str) -> Path | None:
    """The file an image id of ``source`` names: CSV rows are relative to the CSV's folder; folder ids are
    relative to the folder or to its ``train/`` part. None for sources without files (arrays, zips)."""
    root = Path(source).expanduser()
    if root.suffix.lower() == ".csv" and root.is_file():
        candidates = [root.parent / image_id]
    elif root.is_dir():
        candidates = [root / image_id, root / "train" / image_id]
    else:
        return None
    return next((c.resolve() for c in candidates if c.is_file()), None)


def image_files(cfg: Config, train: ImageSet) -> list[Path | None]:
    """Each training image's file (None for images without one: arrays, zip members)."""
    out: list[Path | None] = []
    pool_spec = cfg.data.unlabeled
    for image_id in train.ids:
        found = None
        if pool_spec and image_id.startswith(UNLABELED_PREFIX):
            found = _file_of(pool_spec, image_id[len(UNLABELED_PREFIX):])
        out.append(found or _file_of(cfg.data.source, image_id))
    return out


def write_table(path: str | Path, header: list[str], rows: Any) -> Path:
    """A CSV with ``header`` and ``rows`` (its folder made when missing)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
