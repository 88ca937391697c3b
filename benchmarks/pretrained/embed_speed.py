"""The embedding pass of a frozen backbone, side by side on this CPU (issue 25): the same images through the
same backbone by each inference path, with images/s, the share of the measured matmul peak, and the largest
difference of its features from the plain path's (a path is only usable if it gives the same features).

Paths: PyTorch NCHW (the plain path), channels_last, onnxruntime (the backbone exported with torch.onnx), each
at several batch sizes; all in one process, one after another, on the same 1,024 CIFAR-10 images.

    python benchmarks/pretrained/efficientnet_lite_hub.py /tmp/lite0-hub
    OMP_NUM_THREADS=2 python benchmarks/pretrained/embed_speed.py --model local-dir:/tmp/lite0-hub \\
        --data ../shared/data/cifar10_jpeg.zip --resolution 96
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from method_throughput import matmul_peak_flops  # noqa: E402
from semivit.config import Config, apply_overrides  # noqa: E402
from semivit.core.distributed import DistInfo  # noqa: E402
from semivit.data import prepare_data  # noqa: E402
from semivit.data.augment import to_float  # noqa: E402
from semivit.engine.stage import build_model  # noqa: E402


class Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classifier_input(x)


def timed(fn, x: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    fn(x[:batch])  # warm-up: allocations, caches, the first run of a session
    start = time.perf_counter()
    out = torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])
    return len(x) / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--json")
    args = parser.parse_args()
    cfg = apply_overrides(Config(), {"model.name": args.model, "model.resolution": str(args.resolution),
                                     "data.source": args.data, "data.labels": "10-per-class", "data.val": "0"})
    data = prepare_data(cfg.data, 0)
    model = build_model(cfg, data, DistInfo(), torch.device("cpu")).eval()
    x = to_float(data.train.get(torch.arange(args.images)))
    embed = Embed(model).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        embed(x[:8])
    flops_per_image = counter.get_total_flops() / 8
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32)
    rows, reference = [], None
    with torch.inference_mode():
        for batch in args.batches:
            speed, out = timed(embed, x, batch)
            reference = out if reference is None else reference
            rows.append(("pytorch NCHW", batch, speed, float((out - reference).abs().max())))
        last = Embed(model).to(memory_format=torch.channels_last).eval()
        for batch in args.batches:
            speed, out = timed(lambda b: last(b.contiguous(memory_format=torch.channels_last)), x, batch)
            rows.append(("pytorch channels_last", batch, speed, float((out - reference).abs().max())))
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "embed.onnx"  # the exporter semivit export uses (dynamo), a dynamic batch axis
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(embed, (x[:4].clone(),), str(path), input_names=["x"], output_names=["h"],
                                  opset_version=18, dynamo=True, external_data=False,
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for batch in args.batches:
                speed, out = timed(lambda b, s=session: torch.from_numpy(s.run(None, {"x": b.numpy()})[0]), x, batch)
                rows.append(("onnxruntime", batch, speed, float((out - reference).abs().max())))
    except ImportError:
        print("onnxruntime is not installed (pip install -e '.[export]'): its rows are left out")
    print(f"{args.model} at {args.resolution} px: {flops_per_image / 1e9:.3f} GFLOP per image; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    print("| path | batch | images/s | share of matmul peak | max |Δ feature| vs NCHW |")
    print("|---|---|---|---|---|")
    for name, batch, speed, diff in rows:
        print(f"| {name} | {batch} | {speed:.0f} | {speed * flops_per_image / peak:.1%} | {diff:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"flops_per_image": flops_per_image, "peak": peak, "rows": rows}))


if __name__ == "__main__":
    main()
