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

from semivit.engine.checkpoint import load_model


def images_per_sec(model: torch.nn.Module, batch: torch.Tensor, seconds: float = 3.0) -> float:
    with torch.no_grad():
        for _ in range(3):  # warm-up
            model(batch)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            n += 1
    return n * len(batch) / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="run folders or model.safetensors files")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    rates = []
    for path in args.models:
        model, _ = load_model(path)
        spec = model.spec
        batch = torch.rand(args.batch_size, spec.in_chans, spec.image_size, spec.image_size)
        rate = images_per_sec(model, batch, args.seconds)
        rates.append(rate)
        params = sum(p.numel() for p in model.parameters())
        print(f"{path}: {spec.name} {spec.kwargs.get('depth', '')}×{spec.kwargs.get('embed_dim', '')} "
              f"{params / 1e6:.2f}M params  {rate:9.1f} images/s  speed-up ×{rate / rates[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
