"""Writing WebDataset-style tar shards from any source (``semivit shards``); reading them is
:mod:`semivit.data.sources.shards`. A module of its own above ``data.sources``: it loads any source, and the
sources package must not import its writer back."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from semivit.data.imageset import UNLABELED, ImageSet
from semivit.data.sources import load_parts
from semivit.data.sources.common import (
    Decoder,
    decode_pil,
)
from semivit.data.sources.shard_index import IMAGE_EXTS, sidecar
from semivit.errors import SemivitError


def _encoded(part: ImageSet, i: int, short_side: int | None = None) -> tuple[bytes, str]:
    """Image ``i`` of ``part`` as file bytes: the original file's bytes where the part reads files (no
    re-encoding, the loader resizes; with ``short_side``, larger images are shrunk first), else a lossless
    PNG of the stored pixels."""
    if part.images is None and isinstance(part.read, Decoder):  # files, zip members, HF rows, shard samples
        data, ext = part.read.raw_file(i)
        if ext in IMAGE_EXTS:  # a format the shard reader picks up by extension
            return _shrunk(data, ext, short_side) if short_side else (data, ext)
    x = part.images[i] if part.images is not None else part.read(i)
    arr = x.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, "PNG")
    return buf.getvalue(), "png"


def _shrunk(data: bytes, ext: str, short_side: int) -> tuple[bytes, str]:
    """An encoded image whose short side exceeds ``short_side``, resized to it (aspect ratio kept) and
    re-encoded: JPEG sources as JPEG at quality 90, others as lossless PNG. Smaller images keep their bytes.
    Training at 224 px from images stored at 224 px on the short side decodes ~3× faster per core than from
    ImageNet's ~500×375 originals (benchmarks/decode_throughput.py)."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if min(w, h) <= short_side:
            return data, ext
        scale = short_side / min(w, h)
        arr = decode_pil(img, (max(1, round(h * scale)), max(1, round(w * scale))), None)
    buf = io.BytesIO()
    image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if ext == "jpg":
        image.save(buf, "JPEG", quality=90)
        return buf.getvalue(), "jpg"
    image.save(buf, "PNG")
    return buf.getvalue(), "png"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member; returns the byte offset of its data (for the sidecar index)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - tarfile.BLOCKSIZE * ((len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE)


def write_part(part: ImageSet, out: Path, prefix: str, shard_size: int, short_side: int | None = None) -> list[Path]:
    """``part`` as ``OUT/PREFIX-000000.tar``, ... of ``shard_size`` samples each, in the part's order."""
    from tqdm import tqdm

    paths = []
    # a bar per part: an ImageNet-sized folder takes many minutes (copying ~1,000 files/s per core)
    bar = tqdm(total=len(part), desc=f"{prefix} shards", unit="img", disable=len(part) < 10_000, leave=False)
    for start in range(0, len(part), shard_size):
        path = out / f"{prefix}-{start // shard_size:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        table = []
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(start, min(start + shard_size, len(part))):
                key = f"{i:09d}"
                data, ext = _encoded(part, i, short_side)
                offset = _add(tar, f"{key}.{ext}", data)
                label = int(part.labels[i])
                if label != UNLABELED:
                    _add(tar, f"{key}.cls", str(label).encode())
                _add(tar, f"{key}.id", part.ids[i].encode("utf-8"))
                table.append([offset, len(data), ext, label, part.ids[i]])
        tmp.replace(path)  # a shard appears whole or not at all
        bar.update(len(table))
        side = {"version": 1, "tar_bytes": path.stat().st_size, "samples": table}
        sidecar(str(path)).write_text(json.dumps(side, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    bar.close()
    return paths


def write_shards(spec: str, out: str | Path, shard_size: int = 10_000, *, test: str | None = None,
                 unlabeled: str | None = None, root: str | None = None, on_corrupt: str = "skip",
                 short_side: int | None = None) -> dict[str, int]:
    """Write the parts of any source as shards under ``out`` (``train-*.tar``, ``test-*.tar``, ``val-*.tar``,
    each with its ``.idx.json`` sample table, and ``classes.txt``), readable with ``--data OUT`` or
    ``--data 'OUT/train-{000000..N}.tar'``; ``short_side``: store larger images shrunk to it (see
    :func:`_shrunk`). Returns the number of shards per part."""
    if shard_size < 1:
        raise SemivitError(f"--shard-size is {shard_size}: use a positive number of samples per shard")
    if short_side is not None and short_side < 8:
        raise SemivitError(f"--short-side is {short_side}: use the training size or a little more (e.g. 256)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SemivitError(f"'{out}' is a file: pass a folder to write the shards into")
    if out.is_dir() and any(out.glob("*-*.tar")):
        raise SemivitError(f"'{out}' already holds shards: pass an empty or new folder")
    # stream_threshold=0: file sources stay undecoded, so each image's original bytes are copied
    parts = load_parts(spec, test=test, unlabeled=unlabeled, root=root, on_corrupt=on_corrupt, stream_threshold=0)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for prefix, part in (("train", parts.train), ("test", parts.test), ("val", parts.val)):
        if part is not None:
            counts[prefix] = len(write_part(part, out, prefix, shard_size, short_side))
    if parts.train.classes:
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in parts.train.classes), encoding="utf-8")
    return counts
