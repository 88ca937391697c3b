"""Training throughput of a method against the bare model step, measured in the same run.

    python benchmarks/throughput.py --data ../shared/data/cifar10_jpeg.zip --extract --model vit_nano

prints images/s of (a) the bare model step — forward, backward and AdamW on a fixed random batch of the
same shape, no data path — and (b) the full training step of ``--method`` through the Trainer (batch
indexing, augmentation on the device, method logic, logging), and their ratio. The data path and method
overhead is 1 − ratio (for methods with more forward passes per image than the bare step, compare
against the bare step's cost per pass).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from semivit.config import Config, apply_overrides
from semivit.core.device import amp_dtype, resolve_device
from semivit.data import prepare_data
from semivit.engine.trainer import train
from semivit.models.factory import create_model


def bare_step_images_per_sec(model: torch.nn.Module, shape: tuple[int, ...], num_classes: int, steps: int,
                             warmup: int = 5, device: torch.device | None = None,
                             dtype: torch.dtype | None = None) -> float:
    """Forward + backward + AdamW step on one fixed batch (the model's own speed limit).

    On a GPU the step runs under the same autocast ``dtype`` as the Trainer's, and the clock stops after a
    synchronize, so queued kernels are counted.
    """
    device = device or torch.device("cpu")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(shape, device=device)
    y = torch.randint(num_classes, (shape[0],), device=device)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return shape[0] * steps / (time.perf_counter() - start)


def trainer_images_per_sec(run_dir: Path) -> float:
    """Median images/s over the logged windows, skipping the first (start-up)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rates = [float(r["train/images_per_sec"]) for r in csv.DictReader(f) if r.get("train/images_per_sec")]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--extract", action="store_true", help="unzip --data to a temp folder and train from it")
    p.add_argument("--labels", default="all")
    p.add_argument("--method", default="supervised")
    p.add_argument("--model", default="vit_nano")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--amp", default="auto", help="the Trainer's train.amp (GPU only): auto | bf16 | fp16 | off")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.data
    tmp = tempfile.TemporaryDirectory()
    if args.extract:
        with zipfile.ZipFile(source) as z:
            z.extractall(tmp.name)
        tops = [d for d in Path(tmp.name).iterdir() if d.is_dir()]
        source = str(tops[0] if len(tops) == 1 else tmp.name)
    start = time.perf_counter()
    cfg = apply_overrides(Config(), {
        "data.source": source, "data.labels": args.labels, "model.name": args.model,
        "train.method": args.method, "train.steps": args.steps, "train.batch_size": args.batch_size,
        "train.eval_every": 0, "train.log_every": 10, "train.ckpt_every": 10**9, "train.out": tmp.name,
        "train.name": "bench", "train.progress": False, "train.tensorboard": False, "train.device": args.device,
        "train.amp": args.amp})
    data = prepare_data(cfg.data, cfg.train.seed)
    load_seconds = time.perf_counter() - start
    images = data.train
    model = create_model(args.model, images.num_classes, images.channels, images.image_size[0])
    shape = (args.batch_size, images.channels, *images.image_size)
    device = resolve_device(args.device)
    dtype = amp_dtype(args.amp, device)
    # bare step before and after the training run, averaged, so slow drifts of the machine cancel out
    bare_before = bare_step_images_per_sec(model, shape, images.num_classes, steps=max(10, args.steps // 3),
                                          device=device, dtype=dtype)
    result = train(cfg, data)
    full = trainer_images_per_sec(result.run_dir)
    bare_after = bare_step_images_per_sec(model, shape, images.num_classes, steps=max(10, args.steps // 3),
                                          device=device, dtype=dtype)
    bare = (bare_before + bare_after) / 2
    print(f"data: {args.data} ({len(images)} train images, {images.channels}×{images.image_size[0]}px), "
          f"loaded in {load_seconds:.1f}s; model {args.model}; batch {args.batch_size}; "
          f"device {device}{' ' + str(dtype) if dtype else ''}; threads {torch.get_num_threads()}")
    print(f"bare model step (fwd+bwd+AdamW): {bare:8.1f} images/s (before {bare_before:.1f}, after "
          f"{bare_after:.1f})")
    print(f"{args.method} training step:      {full:8.1f} images/s (labeled + unlabeled images)")
    print(f"ratio: {full / bare:.3f}   (data path + method overhead: {100 * (1 - full / bare):.1f}%)")
    if result.metrics.get("test_top1") is not None:
        print(f"test top-1 after {args.steps} steps: {result.metrics['test_top1']:.4f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
