"""What every source family shares: options, the :class:`Parts` a family returns, decoding image files into
an :class:`ImageSet` (in memory, or streamed above a threshold), and array conversions.

A family module (``files``, ``arrays``, ``builtin``, ``hf``, ``shards``) exposes ``claims(spec, path)`` and
``load(spec, path, size, mode, opts)``; :mod:`semivit.data.sources` asks each in turn.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from semivit.data.imageset import ImageSet
from semivit.errors import SemivitError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
#: modes whose values run past 255: 16-bit (X-ray, microscopy, scientific PNG/TIFF) and 32-bit integer
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
#: EXIF orientations that swap width and height (rotated by 90° or 270°, possibly mirrored)
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112
#: the longest side the size chosen from the data may have (one huge scan must not set every image's size)
MAX_AUTO_SIDE = 1024
_EXT = {"jpeg": "jpg", "tiff": "tif"}  # PIL format name -> file extension, where they differ
_UNREADABLE = (OSError, ValueError, SyntaxError, KeyError, zipfile.BadZipFile, Image.DecompressionBombError)
KINDS = ("pass an image folder, a .csv, a .npz, a .zip, a .parquet, a Hugging Face folder or hf:ORG/NAME, "
         "tar shards ('train-{000000..000009}.tar') or a built-in name (digits, cifar10, ...)")


@dataclass
class Opts:
    root: Path
    download: bool
    on_corrupt: str
    stream_threshold: int


@dataclass
class Parts:
    """What a family's ``load`` returns. ``val``: a validation part the source itself provides (MedMNIST's
    ``val_images``, a Hugging Face 'validation' split); it becomes the run's validation split."""

    train: ImageSet
    test: ImageSet | None = None
    val: ImageSet | None = None
    flip: bool = True
    name: str | None = None


@dataclass
class Files:
    """Image files of one part before decoding: locations (paths, or members of ``zip_path``), ids, labels."""

    locs: list  # paths or zip members (str); row numbers for other containers
    ids: list[str]
    labels: list  # class per file, or multi-hot rows (list of 0/1, -1 unknown)
    classes: list[str]
    zip_path: str | None = None


def image_mode(img: Image.Image) -> str:
    """'L' for grey images (also grey palettes), else 'RGB': the mode a file is stored in after reading."""
    if img.mode == "P":  # a palette: grey when every palette entry has R = G = B
        pal = img.getpalette() or []
        return "L" if all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3)) else "RGB"
    return "L" if img.mode in _GREY_MODES else "RGB"


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1 = as stored; phone photos are often stored sideways with 6 or 8)."""
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: read the pixels as stored
        return 1


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says, as every viewer shows it (a no-op without the tag)."""
    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def wide_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey image as 8-bit grey, scaled from the full 16-bit range: value v
    becomes round(v / 257), so 65535 → 255. PIL's own conversion clips at 255, which turns 16-bit X-rays and
    micrographs into nearly white images. Values past 65535 (32-bit data) are clipped there."""
    arr = np.asarray(img).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, want: str) -> Image.Image:
    """``img`` converted to 'L' or 'RGB'. Transparent pixels (RGBA, LA, palettes with transparency) are
    composited on white, which is how viewers show them: a plain convert would keep the stored colour
    under alpha 0, often black, an artefact no camera produces."""
    if img.mode == want:
        return img  # skipping a same-mode copy saves ~10%
    if img.mode in _WIDE_MODES:
        img = wide_to_8bit(img)
        if want == "L":
            return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert(want)


class Decoder:
    """Decodes image ``i`` of a file list to a uint8 H×W×C array (streamed ImageSets use it as ``read``).

    Resize rule: every image is resized to ``size`` (H, W) with bilinear filtering (antialiased by PIL when
    shrinking), without keeping the aspect ratio: a centre crop would drop content the label may depend on.

    Picklable so DataLoader workers can carry it; each process reopens its files lazily because an open
    handle's file offset must not be shared between processes: a worker forked after the parent opened the
    zip would seek on the same offset as its siblings and read another member's bytes.
    """

    def __init__(self, locs: list[str], zip_path: str | None, size: tuple[int, int] | None = None,
                 mode: str | None = None) -> None:
        self.locs, self.zip_path, self.size, self.mode = locs, zip_path, size, mode
        self._zip: zipfile.ZipFile | None = None
        self._pid = os.getpid()
        self.sizes: Counter = Counter()  # (W, H) of the images decoded, for the report of mixed sizes

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def _drop_inherited_handles(self) -> None:
        """After a fork, forget the parent's open handles (subclasses holding more extend this)."""
        if self._pid != os.getpid():
            self._zip, self._pid = None, os.getpid()

    def where(self, i: int) -> str:
        return f"{self.zip_path}:{self.locs[i]}" if self.zip_path else self.locs[i]

    def _bytes(self, i: int) -> bytes:
        """The encoded file of image ``i``."""
        if self.zip_path is None:
            return Path(self.locs[i]).read_bytes()
        self._drop_inherited_handles()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.zip_path)
        return self._zip.read(self.locs[i])

    def _open(self, i: int) -> Image.Image:
        if self.zip_path is None:
            return Image.open(self.locs[i])  # lazily: probing a folder's headers reads no pixel data
        return Image.open(io.BytesIO(self._bytes(i)))

    def raw_file(self, i: int) -> tuple[bytes, str]:
        """The encoded bytes of image ``i`` as stored, and its file extension (``semivit shards`` copies
        them rather than re-encoding)."""
        data = self._bytes(i)
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
        return data, _EXT.get(fmt, fmt)

    def probe(self, i: int) -> tuple[tuple[int, int], str] | None:
        """(H, W) and 'L'/'RGB' from the header only, or None when the file does not open."""
        try:
            with self._open(i) as img:
                size = (img.width, img.height) if orientation(img) in _SWAPPING_ORIENTATIONS else \
                    (img.height, img.width)
                return size, image_mode(img)
        except _UNREADABLE:
            return None

    def array(self, i: int) -> np.ndarray | None:
        """Image ``i`` at ``size`` in ``mode`` (None: 'L' for grey files, else 'RGB'); None if corrupt."""
        try:
            arr, stored_size = decode_bytes(self._bytes(i), self.size, self.mode)
        except _UNREADABLE:
            return None
        self.sizes[stored_size] += 1
        return arr

    def __call__(self, i: int) -> torch.Tensor:
        arr = self.array(i)
        if arr is None:  # only files that went bad after loading (headers were checked) get here
            raise SemivitError(f"cannot read image '{self.where(i)}': restore the file or reload the data")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_bytes(data: bytes, size: tuple[int, int] | None, mode: str | None) -> tuple[np.ndarray, tuple[int, int]]:
    """An encoded image as a uint8 H×W×C array at ``size`` (None: its own) in ``mode`` (None: its own), and
    its stored (W, H) (:func:`decode_pil`). Raises one of ``_UNREADABLE`` when it does not decode.

    PIL decodes (libjpeg-turbo: within 3% of torchvision's deprecated ``decode_jpeg`` per core, the same
    pixels); the resize is torchvision's, which is where the time went (benchmarks/decode_throughput.py).
    """
    with Image.open(io.BytesIO(data)) as img:
        stored = img.size[::-1] if orientation(img) in _SWAPPING_ORIENTATIONS else img.size  # as shown, undrafted
        return decode_pil(img, size, mode), stored


def _draft_pays(img: Image.Image, size: tuple[int, int] | None) -> bool:
    return size is not None and img.format == "JPEG" and img.width >= 2 * size[1] and img.height >= 2 * size[0]


def _resized(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """H×W×C uint8 at ``size``: bilinear, antialiased when shrinking (as PIL), aspect ratio not kept."""
    if size is None or arr.shape[:2] == tuple(size):
        return arr
    from torchvision.transforms.v2.functional import resize

    # H×W×C memory seen as C×H×W (channels last) is the layout the uint8 kernel runs on without copies:
    # ~4× faster than PIL's resize, which cost as much as decoding a 500×375 JPEG
    x = torch.from_numpy(np.require(arr, requirements="W")).permute(2, 0, 1)
    return resize(x, list(size), antialias=True).permute(1, 2, 0).contiguous().numpy()


def decode_pil(img: Image.Image, size: tuple[int, int] | None, mode: str | None) -> np.ndarray:
    """An open PIL image as a uint8 H×W×C array at ``size`` (None: its own) in ``mode`` (None: its own).

    A JPEG shrunk at least 2× on both sides is decoded in draft mode: libjpeg scales the DCT by 1/2, 1/4 or
    1/8 to the smallest size still ≥ ``size`` (what makes phone photos cheap), then the resize finishes.
    """
    turned = orientation(img) in _SWAPPING_ORIENTATIONS
    if _draft_pays(img, size[::-1] if turned and size else size):
        img.draft(None, (size[0], size[1]) if turned else (size[1], size[0]))  # type: ignore[index]
    img = to_mode(upright(img), mode or image_mode(img))
    arr = np.asarray(img)
    return _resized(arr.reshape(arr.shape[0], arr.shape[1], -1), size)


def report_skipped(where: str, reasons: Counter, first: str | None) -> None:
    """One warning line counting what was skipped under ``where`` and why ('skipped 2 unreadable image(s),
    1 non-image file(s) under DIR (first: ...)')."""
    if not reasons:
        return
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    warnings.warn(f"skipped {why} under {where}" + (f" (first: '{first}')" if first else ""), stacklevel=3)


def files_to_set(files: Files, where: str, size: tuple[int, int] | None, mode: str | None, opts: Opts,
                 skipped: Counter | None = None, first_skipped: str | None = None,
                 decoder: Decoder | None = None) -> ImageSet:
    """Decode (or, above the stream threshold, check the headers of) ``files`` into an ImageSet.

    ``skipped`` counts files already left out by the caller, by reason (not images, missing); they are
    reported with the unreadable ones in one line. ``decoder`` reads other containers than files and zips
    (its ``locs`` are ``files.locs``).
    """
    skipped = Counter(skipped or {})
    n = len(files.locs)
    if n == 0:
        extra = f" ({sum(skipped.values())} other files skipped)" if skipped else ""
        raise SemivitError(f"no images found under {where}{extra}: put .jpg/.png files there (in class "
                           "sub-folders for labels)")
    dec = decoder or Decoder(files.locs, files.zip_path)
    dec.size, dec.mode = size, mode
    stream = n > opts.stream_threshold
    if stream:
        probes = [dec.probe(i) for i in range(n)]
        ok = [p is not None for p in probes]
    else:  # the most common size sets the size when none is given (capped: see common_size)
        probes = [dec.probe(i) for i in range(n)]
        readable = [p[0] for p in probes if p is not None]
        dec.size = size or (common_size(readable, where) if readable else (1, 1))
        try:
            arrays = [dec.array(i) if probes[i] is not None else None for i in range(n)]
        except MemoryError:
            raise SemivitError(f"the images under {where} do not fit in memory at {dec.size[1]}×{dec.size[0]}: set "
                               f"data.image_size to a smaller size") from None
        ok = [a is not None for a in arrays]
    bad = [i for i in range(n) if not ok[i]]
    if bad and opts.on_corrupt == "fail":
        raise SemivitError(f"cannot read image '{dec.where(bad[0])}' ({len(bad)} unreadable in all): fix or "
                           "delete it, or pass --set data.on_corrupt=skip to skip unreadable images")
    if len(bad) == n:
        raise SemivitError(f"no readable images under {where} ({n} files, e.g. '{dec.where(0)}'): check them")
    if bad:
        skipped["unreadable image(s)"] += len(bad)
        first_skipped = dec.where(bad[0])
    report_skipped(where, skipped, first_skipped)
    if not stream and size is None and len(dec.sizes) > 1:
        (w0, h0), (w1, h1) = min(dec.sizes, key=lambda s: s[0] * s[1]), max(dec.sizes, key=lambda s: s[0] * s[1])
        warnings.warn(f"images under {where} come in {len(dec.sizes)} sizes ({w0}×{h0} to {w1}×{h1}): all resized "
                      f"to {dec.size[1]}×{dec.size[0]}, the most common size (bilinear, aspect ratio not kept); "
                      "set data.image_size to choose", stacklevel=2)
    keep = [i for i in range(n) if ok[i]]
    labels = torch.tensor([files.labels[i] for i in keep], dtype=torch.long)  # N, or N×C multi-hot
    ids = [files.ids[i] for i in keep]
    if stream:
        good = [probes[i] for i in keep]
        dec.size = size or common_size([g[0] for g in good], where)
        dec.mode = mode or ("RGB" if any(m == "RGB" for _, m in good) else "L")
        dec.locs = [files.locs[i] for i in keep]
        return ImageSet(labels, ids, files.classes, 3 if dec.mode == "RGB" else 1, dec.size, read=dec)
    return ImageSet(labels, ids, files.classes, *stack_arrays([arrays[i] for i in keep]))


def common_size(sizes: list[tuple[int, int]], where: str) -> tuple[int, int]:
    """The (H, W) most images have (ties: the first seen), with its longest side capped at
    :data:`MAX_AUTO_SIDE` (aspect kept, with a warning): one 12,000-px scan sorted first used to set every
    image's size and exhaust memory."""
    (h, w), _ = Counter(sizes).most_common(1)[0]
    if max(h, w) > MAX_AUTO_SIDE:
        scale = MAX_AUTO_SIDE / max(h, w)
        capped = (max(1, round(h * scale)), max(1, round(w * scale)))
        warnings.warn(f"images under {where} are mostly {w}×{h}: resized to {capped[1]}×{capped[0]} (longest side "
                      f"{MAX_AUTO_SIDE}); set data.image_size to choose", stacklevel=3)
        return capped
    return h, w


def stack_arrays(arrays: list[np.ndarray]) -> tuple[int, tuple[int, int], torch.Tensor]:
    """(channels, (H, W), uint8 N×C×H×W) from same-size H×W×C arrays; any RGB image makes all RGB."""
    c = max(a.shape[2] for a in arrays)
    x = np.stack([a if a.shape[2] == c else np.repeat(a, c, axis=2) for a in arrays])
    return c, (x.shape[1], x.shape[2]), torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
