"""Operators issued per training step, data path against the method's forward + backward + AdamW.

    python benchmarks/op_count.py --model vit_tiny --methods supervised,fixmatch,uda,ssmae,byol

When a GPU step is bound by the host issuing kernels (small models: ViT-Tiny at 64 tokens on an H100), its
time follows the number of operators more than their FLOPs. This counts them on the CPU with a
``TorchDispatchMode``, with the augmentation forced onto its GPU code path (every RandAugment op on the whole
batch, blended with ``torch.where``), leaving out metadata-only operators (views, transposes) that launch no
kernel.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import semivit.data.augment as augment
from method_throughput import METHODS, make_method  # noqa: E402  (benchmarks/ is on sys.path when run)
from semivit.config import Config, apply_overrides
from semivit.data import prepare_data

METADATA_ONLY = {"view", "_unsafe_view", "select", "slice", "unsqueeze", "squeeze", "expand", "t", "permute",
                 "transpose", "detach", "alias", "as_strided", "split", "unbind", "chunk"}


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators that reach a kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.__name__.split(".")[0] not in METADATA_ONLY:
            self.count += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="supervised,fixmatch,ema_teacher,uda,ssmae,byol")
    p.add_argument("--model", help="the ViT for every method (default: each method's vit_nano)")
    p.add_argument("--data", default="digits")
    args = p.parse_args()
    augment._SUBSET_DEVICES = frozenset()  # the CUDA code path, whatever device this runs on
    torch.set_num_threads(1)
    print("| method | model | data path operators | fwd + bwd + AdamW operators | data path share |")
    print("|---|---|---|---|---|")
    data = None
    for name in args.methods.split(","):
        method_name, model, batch_size, params = METHODS[name]
        model = args.model or model
        cfg = apply_overrides(Config(), {"data.source": args.data, "data.labels": "4-per-class",
                                         "model.name": model, "train.method": method_name, "train.steps": 10,
                                         "train.batch_size": batch_size, "train.device": "cpu"})
        cfg.method = dict(params)
        data = data or prepare_data(cfg.data, 0)
        method, batches, _ = make_method(cfg, data)
        opt = torch.optim.AdamW([q for q in method.parameters() if q.requires_grad], lr=1e-5, foreach=True)
        with OperatorCount() as data_ops:
            batch = batches.next(0)
        with OperatorCount() as step_ops:
            method(batch, 0).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        share = data_ops.count / (data_ops.count + step_ops.count)
        print(f"| {name} | {model} | {data_ops.count} | {step_ops.count} | {share:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
