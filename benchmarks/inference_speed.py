"""Inference throughput of saved models, measured in one run (e.g. a distilled student against its teacher).

    python benchmarks/inference_speed.py runs/X/stage2-supervised runs/X/stage3-distill --batch-size 256

prints images/s of a forward pass (eval mode, no gradients) on a fixed random batch for each model, their
parameter counts, and the speed-up of each model over the first.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from semivit.core.device import amp_dtype, resolve_device
from semivit.engine.checkpoint import load_model


def images_per_sec(model: torch.nn.Module, batch: torch.Tensor, seconds: float = 3.0,
                   dtype: torch.dtype | None = None) -> float:
    """Forward passes per second × batch size; on a GPU under autocast ``dtype``, synchronised per pass."""
    cuda = batch.is_cuda
    with torch.no_grad(), torch.autocast(batch.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for _ in range(3):  # warm-up
            model(batch)
        if cuda:
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            n += 1
            if cuda:
                torch.cuda.synchronize()
    return n * len(batch) / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="run folders or model.safetensors files")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--amp", default="auto", help="GPU autocast as the Trainer's train.amp: auto | bf16 | fp16 | off")
    args = p.parse_args()
    device = resolve_device(args.device)
    dtype = amp_dtype(args.amp, device)
    rates = []
    for path in args.models:
        model, _ = load_model(path)
        spec = model.spec
        model.to(device)
        batch = torch.rand(args.batch_size, spec.in_chans, spec.image_size, spec.image_size, device=device)
        rate = images_per_sec(model, batch, args.seconds, dtype)
        rates.append(rate)
        params = sum(p.numel() for p in model.parameters())
        print(f"{path}: {spec.name} {spec.kwargs.get('depth', '')}×{spec.kwargs.get('embed_dim', '')} "
              f"{params / 1e6:.2f}M params  {rate:9.1f} images/s  speed-up ×{rate / rates[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
