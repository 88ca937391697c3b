"""WebDataset-style tar shards: ``--data 'shards/train-{000000..000127}.tar'``, a glob, one ``.tar``, or a
folder holding ``train-*.tar`` (and ``test-*.tar``, ``val-*.tar``: the test and validation parts).

A sample is the run of tar members sharing a key (the member name up to the first dot of its file name):
``KEY.jpg`` (or png, webp, ...), optionally ``KEY.cls`` (an integer class; absent or -1: unlabeled) and
``KEY.id`` (the image's id; else ``SHARD/KEY``). Class names come from ``classes.txt`` beside the shards
(one per line), else "0".."K-1". ``semivit shards`` writes this layout from any source.

Read with plain ``tarfile`` rather than the ``webdataset`` library: semivit needs every sample's label and
id up front (splits are drawn over the whole training part and saved by id), which means an index of the
shards anyway (the ``.idx.json`` table ``semivit shards`` writes beside each shard, else one pass over the
tar headers); it gives each member's byte offset, so the same index serves sequential
streaming (one shard after another, each read front to back) and the random access that the few labeled
images, the test part and evaluation need. webdataset's pipeline would add a dependency for the sequential
half only, and its resumption is by sample count, not shard.

Below ``data.stream_threshold`` samples the images are decoded into memory like any small set. Above it
the part is streamed: :class:`ShardReader` is its ``read`` (random access by offset), and the training
loop's unlabeled stream reads whole shards through :class:`ShardSampleStream` (see
:mod:`semivit.data.loaders`): shards are dealt out across DDP ranks and DataLoader workers, samples are
shuffled in a buffer, and resuming restarts each worker at the first shard it had not fully delivered.
"""

from __future__ import annotations

import glob
import io
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from semivit.config import DataConfig
from semivit.data.imageset import ImageSet
from semivit.data.sources.common import (
    _UNREADABLE,
    Decoder,
    Files,
    Opts,
    Parts,
    decode_bytes,
    files_to_set,
)
from semivit.data.sources.shard_index import ShardIndex, index_shards
from semivit.errors import SemivitError

SHUFFLE_BUFFER = DataConfig.shuffle_buffer  # the one default (config.py): ~100 MB of ImageNet JPEGs per worker
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(pattern: str) -> list[str]:
    """Brace ranges (``{000000..000127}``, zero-padded to the first bound's width; several allowed) and then
    shell globs, in order."""
    m = _BRACES.search(pattern)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        width = len(m.group(1))
        return [p for i in range(lo, hi + 1)
                for p in expand(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]
    if any(c in pattern for c in "*?["):
        return sorted(glob.glob(pattern))
    return [pattern]


def _folder_shards(path: Path, part: str) -> list[str]:
    return sorted(str(p) for p in path.glob(f"{part}-*.tar"))


def claims(spec: str, path: Path) -> bool:
    if path.is_dir():
        return bool(_folder_shards(path, "train"))
    return spec.endswith(".tar") or (".tar" in spec and bool(_BRACES.search(spec)))


class ShardReader(Decoder):
    """Random access to sample ``i`` of a :class:`ShardIndex` (the streamed part's ``read``): a seek and a
    read of the image member. Picklable; each process opens its own file handles (also after a fork:
    a forked DataLoader worker shares the parent's file offsets, so concurrent seeks would interleave)."""

    def __init__(self, index: ShardIndex, keep: list[int] | None = None) -> None:
        super().__init__(list(range(len(index.labels))) if keep is None else keep, None)
        self.index = index
        self.on_corrupt = "skip"  # what the training stream does with a sample that does not decode
        self._files: dict[int, object] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_zip": None}

    def _drop_inherited_handles(self) -> None:
        if self._pid != os.getpid():
            self._files = {}
        super()._drop_inherited_handles()

    def where(self, i: int) -> str:
        j = int(self.locs[i])
        return f"{self.index.shards[self.index.shard_of[j]]}:{self.index.ids[j]}"

    def raw(self, j: int) -> bytes:
        """The encoded image of sample ``j`` of the index (not of ``locs``)."""
        s = int(self.index.shard_of[j])
        self._drop_inherited_handles()
        f = self._files.get(s)
        if f is None:
            f = self._files[s] = open(self.index.shards[s], "rb")  # noqa: SIM115 - kept open for later reads
        f.seek(int(self.index.offset[j]))
        return f.read(int(self.index.size[j]))

    def _bytes(self, i: int) -> bytes:
        return self.raw(int(self.locs[i]))

    def _open(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self._bytes(i)))

    def raw_file(self, i: int) -> tuple[bytes, str]:
        j = int(self.locs[i])
        return self.raw(j), self.index.ext[j]

    def decode_raw(self, data: bytes) -> torch.Tensor | None:
        """Encoded bytes at this reader's size and mode, or None when they do not decode."""
        try:
            arr, _ = decode_bytes(data, self.size, self.mode)
        except _UNREADABLE:
            return None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _classes(first_shard: str, labels: list[int]) -> list[str]:
    names = Path(first_shard).parent / "classes.txt"
    if names.is_file():
        classes = [c.strip() for c in names.read_text(encoding="utf-8").splitlines() if c.strip()]
        if labels and max(labels) >= len(classes):
            raise SemivitError(f"'{names}' names {len(classes)} classes but a .cls file holds {max(labels)}: "
                               "list every class, one per line, in index order")
        return classes
    return [str(k) for k in range(max(labels, default=-1) + 1)]


def shard_part(shards: list[str], where: str, size: tuple[int, int] | None, mode: str | None,
               opts: Opts, classes: list[str] | None = None) -> ImageSet:
    """One part from its shards: decoded into memory, or streamed above ``opts.stream_threshold``."""
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise SemivitError(f"shard '{missing[0]}' does not exist ({len(missing)} of {len(shards)} missing): check "
                           "the pattern, e.g. 'shards/train-{000000..000009}.tar'")
    index = index_shards(shards)
    n = len(index.labels)
    if n == 0:
        raise SemivitError(f"no images in the shards {where}: each sample needs a KEY.jpg/.png member")
    classes = classes if classes is not None else _classes(shards[0], index.labels)
    reader = ShardReader(index)
    reader.on_corrupt = opts.on_corrupt
    if n <= opts.stream_threshold:
        files = Files(reader.locs, index.ids, index.labels, classes)
        return files_to_set(files, where, size, mode, opts, decoder=reader)
    # streamed: the header pass above is all that is read now; the first images set size and mode (any of
    # the first 64 in colour makes the part RGB), and undecodable samples are skipped by the stream
    probes = [p for p in map(reader.probe, range(min(n, 64))) if p is not None]
    if not probes:
        raise SemivitError(f"the first images in the shards {where} do not decode: check the shards")
    reader.size = size or probes[0][0]
    reader.mode = mode or ("RGB" if any(m == "RGB" for _, m in probes) else "L")
    return ImageSet(torch.tensor(index.labels, dtype=torch.long), list(index.ids), classes,
                    3 if reader.mode == "RGB" else 1, reader.size, read=reader)


def load(spec: str, path: Path, size: tuple[int, int] | None, mode: str | None, opts: Opts) -> Parts:
    if path.is_dir():
        groups = {part: _folder_shards(path, part) for part in ("train", "test", "val")}
    else:
        groups = {"train": expand(spec)}
        if not groups["train"]:
            raise SemivitError(f"no shards match '{spec}': check the pattern")
    train = shard_part(groups["train"], f"'{spec}'", size, mode, opts)
    out = {"train": train}
    for part in ("test", "val"):
        if groups.get(part):
            out[part] = shard_part(groups[part], f"'{spec}' ({part})", train.image_size,
                                   "RGB" if train.channels == 3 else "L", opts, train.classes)
    name = path.name if path.is_dir() else Path(groups["train"][0]).parent.name or "shards"
    return Parts(out["train"], out.get("test"), out.get("val"), name=name)


# ------------------------------------------------------------------------------------ the training stream


class ShardSampleStream(IterableDataset):
    """Endless batches of ``(indices, uint8 images, epochs, resume point)`` from the samples of ``pool``,
    read shard by shard.

    Each epoch the shards are permuted with ``(seed, key, epoch)`` (the same on every rank) and dealt to the
    ``world × workers`` slots: slot ``rank × workers + worker`` takes every slots-th shard. With fewer
    shards than slots every slot reads every shard and keeps every slots-th sample instead. Either way each
    sample of the pool is delivered exactly once per epoch by exactly one slot. Samples pass through a
    shuffle buffer of ``buffer`` encoded images that is emptied at the end of each epoch.

    The resume point of a batch is ``(worker, epoch, position)``: every shard before ``position`` in that
    worker's list for ``epoch`` has been fully delivered. ``start`` maps a worker to such a point; that
    worker restarts there (samples of later shards delivered before the checkpoint come again).
    """

    def __init__(self, reader: ShardReader, pool: torch.Tensor, batch_size: int, seed: int, key: int,
                 rank: int = 0, world: int = 1, buffer: int = SHUFFLE_BUFFER,
                 start: dict[int, tuple[int, int]] | None = None) -> None:
        self.reader, self.batch_size, self.seed, self.key = reader, batch_size, seed, key
        self.rank, self.world, self.buffer, self.start = rank, world, max(1, buffer), dict(start or {})
        index = reader.index
        self.rows = rows = np.asarray(reader.locs, np.int64)  # ImageSet index -> index row
        in_pool = np.zeros(len(rows), bool)
        in_pool[pool.numpy()] = True
        # per shard: the ImageSet indices of its pool samples, in file order (reads go front to back)
        shard_of = index.shard_of[rows]
        order = np.lexsort((index.offset[rows], shard_of))
        bounds = np.searchsorted(shard_of[order], np.arange(len(index.shards) + 1))
        segments = (order[bounds[s]:bounds[s + 1]] for s in range(len(index.shards)))
        self.per_shard: list[np.ndarray] = [seg[in_pool[seg]] for seg in segments]
        if not any(len(m) for m in self.per_shard):
            raise ValueError("empty index pool")

    def _shards(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.key * 7919 + epoch)
        return torch.randperm(len(self.per_shard), generator=g).numpy()

    def _plan(self, epoch: int, slot: int, slots: int) -> list[np.ndarray]:
        """This slot's list of shards for ``epoch``, each as the ImageSet indices it delivers from it."""
        order = self._shards(epoch)
        if len(order) >= slots:
            return [self.per_shard[s] for s in order[slot::slots]]
        return [self.per_shard[s][(self.per_shard[s] % slots) == slot] for s in order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * workers + worker, self.world * workers
        # a worker that had delivered nothing before the checkpoint starts the earliest epoch of the others
        default = (min(e for e, _ in self.start.values()), 0) if self.start else (0, 0)
        epoch, position = self.start.get(worker, default)
        rng = random.Random(f"{self.seed}/{self.key}/{slot}/{epoch}/{position}")
        buf: list[tuple[int, int, int, bytes]] = []  # (ImageSet index, epoch, position, encoded image)
        batch: list[tuple[int, int, int, torch.Tensor]] = []
        pending: Counter = Counter()  # (epoch, position) -> samples read but not yet delivered
        reading = (epoch, position)
        skipped, empty_epochs = 0, 0

        def done(shard: tuple[int, int]) -> None:
            pending[shard] -= 1
            if pending[shard] <= 0:
                del pending[shard]

        def emit(item: tuple[int, int, int, bytes]):
            nonlocal skipped
            i, e, p, data = item
            image = self.reader.decode_raw(data)
            if image is None:
                if self.reader.on_corrupt == "fail":
                    raise SemivitError(f"cannot read image '{self.reader.where(i)}' in a shard: fix the shard, "
                                       "or pass --set data.on_corrupt=skip to skip unreadable images")
                skipped += 1
                done((e, p))
                return None
            batch.append((i, e, p, image))
            if len(batch) < self.batch_size:
                return None
            out = list(batch)
            batch.clear()
            for _, e2, p2, _ in out:
                done((e2, p2))
            resume = min([*pending, reading])
            return (torch.tensor([o[0] for o in out]), torch.stack([o[3] for o in out]),
                    torch.tensor([o[1] for o in out]), (worker, *resume))

        while True:
            plan = self._plan(epoch, slot, slots)
            delivered = 0
            for p in range(position, len(plan)):
                reading = (epoch, p)
                for i, j in zip(plan[p].tolist(), self.rows[plan[p]].tolist()):
                    buf.append((i, epoch, p, self.reader.raw(j)))
                    pending[(epoch, p)] += 1
                    delivered += 1
                    if len(buf) >= self.buffer:
                        k = rng.randrange(len(buf))
                        buf[k], buf[-1] = buf[-1], buf[k]
                        out = emit(buf.pop())
                        if out is not None:
                            yield out
            epoch, position = epoch + 1, 0
            reading = (epoch, 0)
            rng.shuffle(buf)  # the epoch's rest, in random order, before any sample of the next epoch
            while buf:
                out = emit(buf.pop())
                if out is not None:
                    yield out
            if skipped:
                warnings.warn(f"skipped {skipped} unreadable image(s) in the shards of epoch {epoch - 1} "
                              f"(worker {worker})", stacklevel=2)
                skipped = 0
            empty_epochs = 0 if delivered else empty_epochs + 1
            if empty_epochs > 2 * max(1, len(self.per_shard)):  # this slot's share of the pool is empty
                return
