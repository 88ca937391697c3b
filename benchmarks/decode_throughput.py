"""JPEG decoding per CPU core: how many cores keep one GPU's ViT-S/16 training step fed (issue 16).

    OMP_NUM_THREADS=1 python benchmarks/decode_throughput.py --data ../shared/data/cifar10_jpeg.zip \
        --gpu-images-per-sec 2900

Every path turns an encoded JPEG into the 224×224 RGB uint8 array the training batch needs (bilinear,
aspect ratio not kept, as semivit's loader), on one thread:
- ``pil``: PIL decodes the whole image, then resizes (semivit's path before this benchmark);
- ``pil-draft``: PIL's JPEG draft mode first — libjpeg scales the DCT by 1/2, 1/4 or 1/8 while decoding, to
  the smallest size still ≥ 224 — then the same resize (semivit's path now, for JPEGs shrunk ≥ 2×);
- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo) on one image, then an antialiased resize;
- ``torchvision-batched``: ``decode_jpeg`` on a list of 32 (the API nvJPEG batches on a GPU; on a CPU it
  loops).
The pixels of the draft path are compared with the full decode (PSNR). The test images: the first N CIFAR-10
training JPEGs upscaled (bicubic) to 500×375 — ImageNet's typical size — with Gaussian noise (σ 12) so
that they carry a photo's detail, saved at quality 90 (their mean size is printed; ImageNet's is ~110 kB).
``--gpu-images-per-sec``: a ViT-S/16 training step's images/s on the GPU (bf16), to turn images/s per core
into cores per GPU.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import zipfile

import numpy as np
import torch
from PIL import Image

from semivit.data.sources.common import decode_bytes, decode_pil

SIZE = (224, 224)


def make_jpegs(zip_path: str, n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(m for m in zf.namelist() if "/train/" in m and m.endswith(".jpg"))[:n]
        for name in names:
            img = Image.open(io.BytesIO(zf.read(name))).convert("RGB").resize((500, 375), Image.BICUBIC)
            arr = np.asarray(img, np.float32) + rng.normal(0, 12, (375, 500, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def shrunk(jpegs: list[bytes]) -> list[bytes]:
    """The same images stored at 224 px on the short side (quality 90): what shards written for 224-px
    training hold."""
    out = []
    for data in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((299, 224), Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_full(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize(SIZE, Image.BILINEAR))


def pil_draft(data: bytes) -> np.ndarray:
    """PIL with draft mode (decode_pil; draft applies when both sides shrink ≥ 2×)."""
    with Image.open(io.BytesIO(data)) as img:
        return decode_pil(img, SIZE, "RGB")


def semivit(data: bytes) -> np.ndarray:
    """The loader's own path."""
    return decode_bytes(data, SIZE, "RGB")[0]


def tv_one(data: bytes) -> torch.Tensor:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resize

    x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return resize(x, list(SIZE), antialias=True)


def tv_batched(batch: list[bytes]) -> list[torch.Tensor]:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resize

    xs = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in batch])
    return [resize(x, list(SIZE), antialias=True) for x in xs]


def rate(fn, items: list, repeats: int) -> float:
    """Images per second, the best of ``repeats`` passes (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10_jpeg.zip")
    p.add_argument("-n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpu-images-per-sec", type=float)
    args = p.parse_args()
    torch.set_num_threads(1)
    jpegs = make_jpegs(args.data, args.n)
    print(f"{len(jpegs)} JPEGs, 500×375, quality 90, mean {statistics.fmean(map(len, jpegs)) / 1000:.0f} kB; "
          f"1 thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), to 224×224 RGB")
    batches = [jpegs[i:i + 32] for i in range(0, len(jpegs), 32)]
    rows = [("pil (full decode + resize)", rate(pil_full, jpegs, args.repeats)),
            ("pil-draft + torchvision resize (decode_pil)", rate(pil_draft, jpegs, args.repeats)),
            ("torchvision decode_jpeg + resize", rate(tv_one, jpegs, args.repeats)),
            ("torchvision decode_jpeg, batches of 32",
             rate(tv_batched, batches, args.repeats) * len(jpegs) / len(batches)),
            ("semivit's decode_bytes", rate(semivit, jpegs, args.repeats)),
            ("semivit's decode_bytes, JPEGs stored at 299×224", rate(semivit, shrunk(jpegs), args.repeats))]
    base = rows[0][1]
    print("| path | images/s per core | × pil |" + (" cores per GPU |" if args.gpu_images_per_sec else ""))
    print("|---|---|---|" + ("---|" if args.gpu_images_per_sec else ""))
    for name, r in rows:
        cores = f" {args.gpu_images_per_sec / r:.1f} |" if args.gpu_images_per_sec else ""
        print(f"| {name} | {r:.0f} | {r / base:.2f} |{cores}")
    diff = [np.mean((pil_full(d).astype(np.float64) - semivit(d)) ** 2) for d in jpegs[:64]]
    print(f"semivit vs PIL decode + PIL resize: PSNR {10 * np.log10(255 ** 2 / statistics.fmean(diff)):.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
