"""Batches for the training loop: seeded index streams, images moved to the device, views made there.

Why not a plain DataLoader: small data sets live in memory as uint8 tensors, so a batch is one indexing
operation, and augmentation runs batched on the device (:mod:`semivit.data.augment`) — two CPU cores
are never the bottleneck. Large streamed folders still decode in DataLoader workers.

Every stream is a pure function of ``(seed, stream name, epoch, cursor)``, and the augmentation
generator is re-seeded from the step, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from semivit.config import DataConfig
from semivit.data.augment import to_float
from semivit.data.imageset import ImageSet
from semivit.data.views import make_view


class IndexStream:
    """An endless, seeded sequence of index batches over ``pool``, reshuffled every epoch.

    With several processes, every rank draws the same permutation and keeps its own slice
    (``rank::world``), as DistributedSampler does.
    """

    def __init__(self, pool: torch.Tensor, batch_size: int, seed: int, key: int, rank: int = 0,
                 world: int = 1) -> None:
        if len(pool) == 0:
            raise ValueError("empty index pool")
        self.pool, self.batch_size, self.seed, self.key = pool, batch_size, seed, key
        self.rank, self.world = rank, world
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.key * 7919 + self.epoch)
        perm = self.pool[torch.randperm(len(self.pool), generator=g)]
        if len(perm) >= self.world:  # equal slices keep every rank's (epoch, cursor) in step
            perm = perm[:len(perm) - len(perm) % self.world]
        return perm[self.rank::self.world] if len(perm) >= self.world else perm

    def next(self) -> torch.Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            take = self._perm[self.cursor:self.cursor + need]
            out.append(take)
            need -= len(take)
            self.cursor += len(take)
            if self.cursor >= len(self._perm):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation()
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation()


class BalancedIndexStream:
    """Class-balanced index batches: ``classes_per_batch`` classes × ``per_class`` images each (PAWS's
    support sampler, Assran et al. 2021, Sec. 3). Batch ``n`` is a pure function of ``(seed, key, rank, n)``;
    each rank draws its own support set (PAWS gathers them across ranks).

    Classes are drawn without replacement (all classes when ``classes_per_batch`` is None or larger than
    the number of classes with labels); images within a class without replacement when it has enough.
    Batches are ordered class by class.
    """

    def __init__(self, pool: torch.Tensor, labels: torch.Tensor, classes_per_batch: int | None,
                 per_class: int, seed: int, key: int, rank: int = 0) -> None:
        if len(pool) == 0:
            raise ValueError("empty index pool")
        pool_labels = labels[pool]
        self.by_class = [pool[pool_labels == c] for c in torch.unique(pool_labels[pool_labels >= 0]).tolist()]
        if not self.by_class:
            raise ValueError("no labeled images in the pool")
        n = len(self.by_class)
        self.classes_per_batch = n if classes_per_batch is None else min(classes_per_batch, n)
        self.per_class, self.seed, self.key, self.rank = per_class, seed, key, rank
        self.batch_size = self.classes_per_batch * per_class
        self.cursor = 0

    def next(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.key * 7919 + self.rank * 104_729
                                          + self.cursor)
        self.cursor += 1
        chosen = torch.randperm(len(self.by_class), generator=g)[:self.classes_per_batch].sort().values
        out = []
        for c in chosen.tolist():
            members = self.by_class[c]
            if len(members) >= self.per_class:
                pick = torch.randperm(len(members), generator=g)[:self.per_class]
            else:
                pick = torch.randint(len(members), (self.per_class,), generator=g)
            out.append(members[pick])
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


class _Decode(Dataset):
    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        assert self.images.read is not None
        return index, self.images.read(index)


class ImageStream:
    """Index batches of an :class:`IndexStream` with their uint8 images.

    In-memory sets index their tensor. Streamed sets decode in DataLoader workers that run ahead of
    training; ``_pending`` remembers the stream position before each prefetched batch so a checkpoint
    stores the position of the batch actually consumed, not of the one being decoded.
    """

    def __init__(self, images: ImageSet, indices: IndexStream | BalancedIndexStream, workers: int,
                 resident: torch.Tensor | None = None) -> None:
        self.images, self.indices, self.workers = images, indices, workers
        self.resident = resident  # the in-memory images already on the GPU, or None
        self._pending: deque[dict] = deque()
        self._consumed = indices.state_dict()
        self._loader: Iterator | None = None

    def _batches(self) -> Iterator[list[int]]:
        while True:
            self._pending.append(self.indices.state_dict())
            yield self.indices.next().tolist()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images.in_memory:
            idx = self.indices.next()
            if self.resident is not None:  # index on the GPU; the indices stay there for the batch too
                idx = _to_device(idx, self.resident.device)
                return idx, self.resident[idx]
            return idx, self.images.get(idx)
        if self._loader is None:
            self._loader = iter(DataLoader(_Decode(self.images), batch_sampler=self._batches(),
                                           num_workers=self.workers, persistent_workers=self.workers > 0,
                                           pin_memory=torch.cuda.is_available()))
        idx, images = next(self._loader)
        self._pending.popleft()
        self._consumed = self._pending[0] if self._pending else self.indices.state_dict()
        return idx, images

    def state_dict(self) -> dict:
        return self.indices.state_dict() if self.images.in_memory else dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)
        self._consumed, self._loader = dict(state), None
        self._pending.clear()


class ShardImageStream:
    """Batches of a streamed shard part (:mod:`semivit.data.sources.shards`), read shard after shard in
    DataLoader workers: the sequential counterpart of :class:`ImageStream` for the large unlabeled stream,
    where seeking to random samples of tar files would be slow.

    Each rank and worker reads its own shards (every pool sample once per epoch across all of them), with a
    shuffle buffer. The state is, per worker, the first shard it had not fully delivered in the batches
    consumed so far: a resumed run restarts there, so resumption is exact to the shard, not to the sample.
    """

    def __init__(self, images: ImageSet, pool: torch.Tensor, batch_size: int, seed: int, key: int, rank: int,
                 world: int, workers: int, buffer: int | None = None) -> None:
        from semivit.data.sources.shards import SHUFFLE_BUFFER

        if len(pool) == 0:
            raise ValueError("empty index pool")
        self.images, self.pool, self.batch_size, self.seed, self.key = images, pool, batch_size, seed, key
        self.rank, self.world, self.workers = rank, world, workers
        self.buffer = SHUFFLE_BUFFER if buffer is None else buffer
        self._position: dict[int, tuple[int, int]] = {}
        self._loader: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        from semivit.data.sources.shards import ShardSampleStream

        if self._loader is None:
            stream = ShardSampleStream(self.images.read, self.pool, self.batch_size, self.seed, self.key,
                                       self.rank, self.world, self.buffer, start=self._position)
            self._loader = iter(DataLoader(stream, batch_size=None, num_workers=self.workers,
                                           persistent_workers=self.workers > 0,
                                           pin_memory=torch.cuda.is_available()))
        idx, images, _epochs, (worker, epoch, position) = next(self._loader)
        self._position[int(worker)] = (int(epoch), int(position))
        return idx, images

    def state_dict(self) -> dict:
        return {"shard_positions": {str(w): list(p) for w, p in self._position.items()},
                "workers": self.workers, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        positions = state.get("shard_positions")
        same = state.get("workers") == self.workers and state.get("world") == self.world
        # another worker or rank count deals the shards differently: restart the earliest epoch any worker
        # was in, from its first shard
        if positions and same:
            self._position = {int(w): (int(e), int(p)) for w, (e, p) in positions.items()}
        elif positions:
            epoch = min(int(e) for e, _ in positions.values())
            self._position = {w: (epoch, 0) for w in range(max(1, self.workers))}
        else:
            self._position = {}
        self._loader = None


def streams_shards(images: ImageSet) -> bool:
    """Whether ``images`` is a streamed shard part (read shard by shard rather than by random access)."""
    from semivit.data.sources.shards import ShardReader

    return not images.in_memory and isinstance(images.read, ShardReader)


@dataclass
class Batch:
    """What a method's training step receives. Views are float images in [0, 1] on the device.

    ``u_true`` holds the hidden labels of the unlabeled images (-1 where unknown): for diagnostics only
    (pseudo-label accuracy), never for training.
    """

    x: dict[str, torch.Tensor] = field(default_factory=dict)
    y: torch.Tensor | None = None
    u: dict[str, torch.Tensor] = field(default_factory=dict)
    u_index: torch.Tensor | None = None
    u_true: torch.Tensor | None = None

    @property
    def size(self) -> int:
        first_x = next(iter(self.x.values()), None)
        first_u = next(iter(self.u.values()), None)
        return (0 if first_x is None else len(first_x)) + (0 if first_u is None else len(first_u))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without blocking the host: a copy from pageable memory waits for the
    GPU to drain its queue, which on a launch-bound model costs a quarter of the throughput."""
    if device.type != "cuda" or t.is_cuda:
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


# In-memory sets up to this share of the GPU's memory are copied there once (CIFAR-10's 50,000 images are
# 150 MB), so batches are indexed on the device instead of copied from the host every step.
RESIDENT_SHARE = 0.2


def resident_images(images: ImageSet, device: torch.device) -> torch.Tensor | None:
    """``images.images`` moved to ``device`` when that is a GPU with room for it, else None."""
    if device.type != "cuda" or images.images is None:
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    if images.images.numel() * images.images.element_size() > RESIDENT_SHARE * total:
        return None
    return images.images.to(device)


class LabeledAndUnlabeled:
    """The resumable position of a batch source with a labeled and an unlabeled stream (either may be None)."""

    labeled: object
    unlabeled: object

    def state_dict(self) -> dict:
        return {"labeled": self.labeled.state_dict() if self.labeled else None,
                "unlabeled": self.unlabeled.state_dict() if self.unlabeled else None}

    def load_state_dict(self, state: dict) -> None:
        if self.labeled and state.get("labeled"):
            self.labeled.load_state_dict(state["labeled"])
        if self.unlabeled and state.get("unlabeled"):
            self.unlabeled.load_state_dict(state["unlabeled"])


class BatchMaker(LabeledAndUnlabeled):
    """Builds :class:`Batch` es for a method: a labeled stream and/or an unlabeled stream, with views."""

    def __init__(self, train: ImageSet, labeled: torch.Tensor, unlabeled: torch.Tensor, *,
                 labeled_views: tuple[str, ...], unlabeled_views: tuple[str, ...], batch_size: int,
                 unlabeled_batch_size: int, device: torch.device, seed: int, flip: bool, rank: int = 0,
                 world: int = 1, workers: int = DataConfig.workers, view_options: dict[str, dict] | None = None,
                 support: tuple[int | None, int] | None = None, shuffle_buffer: int | None = None) -> None:
        """``support = (classes per batch, images per class)`` makes the labeled stream class-balanced
        (:class:`BalancedIndexStream`; ``batch_size`` is then ignored for it)."""
        self.train, self.device, self.flip = train, device, flip
        self.view_options = view_options or {}  # per-view keyword arguments, e.g. strong-view magnitude
        self.labeled_views, self.unlabeled_views = labeled_views, unlabeled_views
        resident = resident_images(train, device)
        self.labels = train.labels.to(device)
        labeled_stream: IndexStream | BalancedIndexStream = (
            BalancedIndexStream(labeled, train.labels, support[0], support[1], seed, 1, rank) if support
            else IndexStream(labeled, batch_size, seed, 1, rank, world))
        self.labeled = (ImageStream(train, labeled_stream, workers, resident)
                        if labeled_views and (batch_size > 0 or support) else None)
        self.unlabeled: ImageStream | ShardImageStream | None = None
        if unlabeled_views and unlabeled_batch_size > 0 and streams_shards(train):  # the large pool of shards
            self.unlabeled = ShardImageStream(train, unlabeled, unlabeled_batch_size, seed, 2, rank, world, workers,
                                              shuffle_buffer)
        elif unlabeled_views and unlabeled_batch_size > 0:
            self.unlabeled = ImageStream(train, IndexStream(unlabeled, unlabeled_batch_size, seed, 2, rank, world),
                                         workers, resident)
        # Augmentation randomness lives on the device and is re-seeded from (seed, rank, step) before every
        # batch: a resumed run, or any rank, gets the same views without storing generator states.
        self.generator = torch.Generator(device=device)
        self.seed, self.rank = seed, rank

    def _views(self, images: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """One augmented batch per view name; ``"contrastive:2"`` is a second, independent contrastive view."""
        x = to_float(images)
        out = {}
        for name in names:
            kind = name.split(":", 1)[0]
            out[name] = make_view(kind, x, self.generator, flip=self.flip, **self.view_options.get(kind, {}))
        return out

    def next(self, step: int) -> Batch:
        self.generator.manual_seed(self.seed * 1_000_003 + self.rank * 7919 + step * 31 + 17)
        batch = Batch()
        if self.labeled is not None:
            idx, images = self.labeled.next()
            idx = _to_device(idx, self.device)
            batch.x = self._views(_to_device(images, self.device), self.labeled_views)
            batch.y = self.labels[idx]
        if self.unlabeled is not None:
            idx, images = self.unlabeled.next()
            batch.u_index = _to_device(idx, self.device)
            batch.u = self._views(_to_device(images, self.device), self.unlabeled_views)
            batch.u_true = self.labels[batch.u_index]
        return batch
