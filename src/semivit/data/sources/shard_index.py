"""The sample index of WebDataset-style tar shards: where each sample's image lies (shard, byte offset, size),
its label and id — from the ``.idx.json`` table ``semivit shards`` writes beside each shard (every field checked:
a forged table is one line, never a read past the tar's end), else one pass over the tar headers. Links inside a
tar are never followed: they are counted and reported. :mod:`semivit.data.sources.shards` reads through it."""

from __future__ import annotations

import json
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semivit.data.imageset import UNLABELED
from semivit.data.sources.common import IMAGE_EXTENSIONS
from semivit.errors import SemivitError

IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


@dataclass
class ShardIndex:
    """Where every sample of a list of shards lies: image member offset and size, its label and id."""

    shards: list[str]
    shard_of: np.ndarray  # int32, sample -> shard number
    offset: np.ndarray  # int64, byte offset of the image member's data
    size: np.ndarray  # int64
    ext: list[str]
    labels: list[int]
    ids: list[str]


def sidecar(shard: str) -> Path:
    return Path(shard).with_suffix(".idx.json")


def _readsidecar(shard: str) -> list | None:
    """The sample table ``semivit shards`` wrote beside ``shard``, if it still describes that file."""
    path = sidecar(shard)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") == 1 and data.get("tar_bytes") == os.path.getsize(shard):
            return _checked_rows(data["samples"], data["tar_bytes"], path)
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    return None


def _checked_rows(rows: object, tar_bytes: int, path: Path) -> list:
    """The sidecar's sample rows [offset, size, ext, label, id], each field checked: a forged or damaged
    table is one line naming the row and the fix, never a traceback or a read past the tar's end."""
    def bad(k: int, why: str) -> SemivitError:
        return SemivitError(f"'{path}' row {k} {why}: the index is damaged or forged; delete it (semivit shards "
                            f"writes it again, and without it the tar's own headers are read)")

    if not isinstance(rows, list):
        raise bad(0, "is missing (no sample list)")
    for k, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 5:
            raise bad(k, "is not [offset, size, ext, label, id]")
        off, size, ext, label, sample_id = row
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (off, size, label)):
            raise bad(k, "has a non-integer offset, size or label")
        if off < 0 or size <= 0 or off + size > tar_bytes:
            raise bad(k, f"points outside the tar (offset {off}, size {size}, tar {tar_bytes} bytes)")
        if not isinstance(ext, str) or ext not in IMAGE_EXTS or not isinstance(sample_id, str):
            raise bad(k, f"has extension {ext!r} (not an image) or a non-text id")
    return rows


def index_shards(shards: list[str]) -> ShardIndex:
    """Every sample's image offset, size, label and id: from the ``.idx.json`` that ``semivit shards`` writes
    beside each shard (checked against the shard's size), else one pass over the tar headers (member data
    is skipped by seeking, except the small .cls/.id files; ~3,000 samples/s, so worth avoiding at scale)."""
    shard_of, offsets, sizes, exts, labels, ids = [], [], [], [], [], []
    links, first_link = 0, ""
    for s, shard in enumerate(shards):
        table = _readsidecar(shard)
        if table is not None:
            for off, size, ext, label, sample_id in table:
                shard_of.append(s)
                offsets.append(off)
                sizes.append(size)
                exts.append(ext)
                labels.append(label)
                ids.append(sample_id)
            continue
        try:
            with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                samples: dict[str, dict] = {}
                for member in tar:
                    if member.issym() or member.islnk():  # a link is not followed: counted and said
                        links += 1
                        first_link = first_link or f"{shard}:{member.name}"
                        continue
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or base.startswith("."):
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    entry = samples.setdefault(key, {})
                    ext = ext.lower()
                    if ext in IMAGE_EXTS and "image" not in entry:
                        entry["image"] = (member.offset_data, member.size, ext)
                    elif ext in ("cls", "id") and member.size < 4096:
                        here = f.tell()
                        f.seek(member.offset_data)
                        entry[ext] = f.read(member.size).decode("utf-8", "replace").strip()
                        f.seek(here)
        except FileNotFoundError:
            raise SemivitError(f"shard '{shard}' does not exist: check the pattern (e.g. "
                               "'shards/train-{000000..000009}.tar') or write shards with semivit shards") from None
        except (tarfile.TarError, OSError) as err:
            raise SemivitError(f"shard '{shard}' is not a readable tar file ({err}): re-create it") from None
        name = Path(shard).name
        for key, entry in samples.items():
            if "image" not in entry:
                continue
            off, size, ext = entry["image"]
            cls = entry.get("cls", "")
            try:
                label = int(cls) if cls else UNLABELED
            except ValueError:
                raise SemivitError(f"'{shard}' sample '{key}' has class '{cls}' in its .cls file: store an "
                                   "integer index (names go in classes.txt)") from None
            shard_of.append(s)
            offsets.append(off)
            sizes.append(size)
            exts.append(ext)
            labels.append(label if label >= 0 else UNLABELED)
            ids.append(entry.get("id") or f"{name}/{key}")
    if links:
        warnings.warn(f"skipped {links} symbolic or hard link member(s) in the shards (first: '{first_link}'): links "
                      "in a tar are not followed; store the files themselves (semivit shards does)", stacklevel=2)
    return ShardIndex(shards, np.asarray(shard_of, np.int32), np.asarray(offsets, np.int64),
                      np.asarray(sizes, np.int64), exts, labels, ids)
