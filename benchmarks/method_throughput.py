"""Training throughput of every method against its own bare step and the machine's matmul peak.

    python benchmarks/method_throughput.py --data ../shared/data/cifar10_jpeg.zip --steps 40

For each method, in one run:
- **bare step**: the method's own forward + backward + AdamW on one fixed batch of already-made views,
  already on the device — the same forward/backward passes (number of images, masking, two streams,
  teacher passes) with no sampling, decoding, augmentation, hooks (EMA) or logging. The network's floor.
- **training step**: the Trainer's median images/s over logged windows (index sampling, uint8 → float,
  views made on the device, method logic, EMA, metric sums, logging).
- **ratio** = training ÷ bare: what the data path and the loop cost (target ≥ 0.85 on CPU).
- **FLOPs per image**: counted with ``torch.utils.flop_counter`` over one bare step (forward + backward,
  divided by the images of the step), and **utilisation** = FLOPs per image × training images/s ÷ the
  machine's measured matmul peak (a large fp32 — or bf16 on GPU — matmul timed here).
Images per step count labeled and unlabeled images (each once, whatever its number of views).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from semivit.config import Config, apply_overrides, parse_set_args
from semivit.core.device import amp_dtype, resolve_device
from semivit.data import prepare_data
from semivit.engine.checkpoint import export_weights
from semivit.engine.trainer import Trainer, train
from semivit.methods import method_class
from throughput import trainer_images_per_sec  # noqa: E402  (benchmarks/ is on sys.path when run)

# name → (method, model, labeled batch, method settings): the shipped recipes' settings for each method
METHODS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "supervised": ("supervised", "vit_nano", 64, {}),
    "fixmatch": ("fixmatch", "vit_nano", 32, {"mu": 5}),
    "ema_teacher": ("ema_teacher", "vit_nano", 32, {"mu": 5, "pseudo_mixup": "mixup"}),
    "mae": ("mae", "vit_nano", 128, {}),
    "simclr": ("simclr", "vit_nano", 128, {}),
    "distill": ("distill", "vit_nano", 64, {}),
    "paws": ("paws", "vit_nano", 64, {"multicrop": 0}),
    "ssmae": ("ssmae", "vit_nano", 32, {"mu": 5}),
    "semiformer": ("semiformer", "semiformer_tiny", 32, {"mu": 7}),
    "byol": ("byol", "vit_nano", 128, {}),
    "s4l": ("s4l", "vit_nano", 32, {"task": "rotation", "mu": 1}),
    "uda": ("uda", "vit_nano", 32, {"mu": 5, "tsa": "log"}),
    "noisy_student": ("noisy_student", "vit_nano", 32, {"mu": 3}),
    "feature_distill": ("feature_distill", "vit_nano", 64, {}),
}
TEACHER_METHODS = {"distill", "noisy_student", "feature_distill"}


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of repeated n×n matmuls: the practical ceiling the model's matmuls could reach here."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def make_method(cfg: Config, data: Any) -> tuple[Any, Any, Trainer]:
    trainer = Trainer(cfg, data)
    cls = method_class(cfg.train.method)
    method = cls(trainer.build_model(), trainer.params, data.train.num_classes, cfg.train.steps or 1)
    method.setup(len(data.train))
    method.to(trainer.device)
    return method, trainer.inputs.batches(cfg, method.data_request(), trainer.dist), trainer


def bare_method_step(cfg: Config, data: Any, steps: int, warmup: int = 3) -> tuple[float, float, int]:
    """Images/s, FLOPs per image and images per step of the method's forward + backward + AdamW on one fixed batch."""
    method, batches, trainer = make_method(cfg, data)
    device, dtype = trainer.device, amp_dtype(cfg.train.amp, trainer.device)
    batch = batches.next(0)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-5)
    method.train()

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = method(batch, i)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops() / batch.size
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch.size * steps / (time.perf_counter() - start), flops, batch.size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--labels", default="25-per-class")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=40, help="training steps per method (bare: a third of it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    p.add_argument("--repeats", type=int, default=1, help="measure each method this many times (median)")
    p.add_argument("--model", help="the ViT for every method but Semiformer (default: each method's vit_nano); "
                   "e.g. vit_tiny on a GPU, where vit_nano is launch-bound")
    p.add_argument("--semiformer-model", help="Semiformer's model (default semiformer_tiny)")
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiply every labeled batch (GPU: 2-4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting for every method, e.g. ViT-S/16 at 224 px on 32-px data: --model "
                        "vit_small_patch16_224.augreg_in21k --set model.pretrained=none --set model.resolution=224")
    args = p.parse_args()
    device = resolve_device(args.device)
    tmp = tempfile.TemporaryDirectory()
    base = apply_overrides(Config(), {"data.source": args.data, "data.labels": args.labels,
                                      "train.device": args.device, "train.amp": args.amp})
    data = prepare_data(base.data, 0)
    dtype = amp_dtype(args.amp, device)
    peak = matmul_peak_flops(device, dtype or torch.float32)
    teacher_file = Path(tmp.name) / "teacher.safetensors"
    print(f"data {args.data} ({data.train.channels}×{data.train.image_size[0]} px), device {device}"
          f"{' ' + str(dtype) if dtype else ''}, threads {torch.get_num_threads()}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    print("| method | model | images/step | bare step img/s | training step img/s | ratio | GFLOP/image "
          "(fwd+bwd) | utilisation |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.methods.split(","):
        method_name, model, batch_size, params = METHODS[name]
        if model.startswith("semiformer"):
            model = args.semiformer_model or model
        else:
            model = args.model or model
        batch_size = max(1, round(batch_size * args.batch_scale))
        settings = {"data.source": args.data, "data.labels": args.labels, "model.name": model,
                    "train.method": method_name, "train.steps": args.steps, "train.batch_size": batch_size,
                    "train.eval_every": 0, "train.log_every": 5, "train.ckpt_every": 10**9,
                    "train.out": tmp.name, "train.name": name, "train.progress": False,
                    "train.tensorboard": False, "train.device": args.device, "train.amp": args.amp,
                    "train.ema": 0.99 if name in ("fixmatch", "semiformer", "uda") else None}
        if method_name in TEACHER_METHODS:
            if not teacher_file.is_file():  # a fresh network of the student's shape: speed, not accuracy
                cfg0 = apply_overrides(Config(), {**settings, "train.method": "supervised"})
                net = Trainer(cfg0, data).build_model()
                export_weights(net, teacher_file, net.spec.to_dict())
            params = {**params, "teacher": str(teacher_file)}
        cfg = apply_overrides(Config(), {**settings, **parse_set_args(args.set)})
        cfg.method = dict(params)
        bares, fulls = [], []
        for _ in range(args.repeats):
            bare, flops, images = bare_method_step(cfg, data, steps=max(5, args.steps // 3))
            result = train(cfg, data)
            bares.append(bare)
            fulls.append(trainer_images_per_sec(result.run_dir))
        bare, full = statistics.median(bares), statistics.median(fulls)
        print(f"| {name} | {model} | {images} | {bare:.3g} | {full:.3g} | {full / bare:.3f} | {flops / 1e9:.3f} | "
              f"{flops * full / peak:.1%} |", flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
