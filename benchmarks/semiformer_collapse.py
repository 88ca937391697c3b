"""Semiformer on 28-px data: does the recipe collapse, and why? (issue 19, finding 6; Weng et al., ECCV 2022)

Runs the shipped ``semiformer`` recipe (or with ``--set`` overrides) once and, at every validation, measures
besides the trainer's own validation top-1 (the evaluation EMA, ``train.ema``):

* ``live_eval``  — the live network in eval mode (BatchNorm running statistics),
* ``live_train`` — the live network with BatchNorm on the validation batch's own statistics (the way the
  training-mode weak pass sees a batch), drop-path off,
* ``weak_joint`` / ``weak_eval`` (every 20 steps, on that step's unlabeled weak views, against the hidden
  labels; the conv head) — the weak views passed in training mode *inside* the training batch (labeled +
  weak + strong, so BatchNorm normalises them with the statistics the labeled images get), and in eval
  mode (running statistics, the reference's teacher pass); ``weak_alone`` is the old training-mode pass (the
  weak batch's own statistics); the method's own pass (``teacher_mode``, default batch) is ``weak_acc_conv`` in
  ``metrics.csv``;
* ``ema_avgbuf`` — an evaluation EMA that also averages the BatchNorm buffers (timm's ``ModelEma``, which
  the reference code uses), for comparison with the trainer's (buffers copied from the live network).

The per-step training metrics (mask, pseudo-label accuracy against the hidden labels, each head's weak-view
accuracy) are the run's ``metrics.csv``. Prints one table and writes ``diagnostics.csv`` in the run folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/semiformer_collapse.py --data digits \
        --set data.image_size=28 --steps 300 --name d28
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

import torch
from torch import nn

from semivit.config import load_yaml, parse_set_args
from semivit.data.imageset import ImageSet
from semivit.data.loaders import Batch
from semivit.engine import trainer as trainer_mod
from semivit.engine.evaluate import predict_logits, top1
from semivit.engine.stage_eval import StageEvaluation
from semivit.pipeline import find_recipe, run_stages, stage_configs


class BufferAveragingEMA(nn.Module):
    """θ' ← m·θ' + (1−m)·θ over parameters *and* floating buffers (timm ``ModelEma``, as the reference)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(v.detach(), 1.0 - self.decay)
            else:
                e.copy_(v)


@torch.no_grad()
def train_bn_logits(model: nn.Module, images: ImageSet, indices: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits with BatchNorm normalising by each chunk's own statistics (running stats left untouched)."""
    from semivit.data.augment import to_float

    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    return torch.cat([net(to_float(images.get(indices[s:s + batch]))).float()
                      for s in range(0, len(indices), batch)])


@torch.no_grad()
def weak_probe(model: nn.Module, batch: Batch) -> dict[str, float]:
    """Conv-head accuracy on the weak unlabeled views: alone in training mode, inside the joint training batch
    in training mode, and in eval mode. BatchNorm buffers are restored, so training is not disturbed."""
    saved = copy.deepcopy([b.clone() for b in model.buffers()])
    x_l, u_w, u_s, truth = batch.x["weak"], batch.u["weak"], batch.u["strong"], batch.u_true
    was = model.training
    out = {}
    try:
        model.train()
        out["weak_alone"] = model.stream_logits(u_w)["conv"]
        joint = model.stream_logits(torch.cat([x_l, u_w, u_s]))["conv"]
        out["weak_joint"] = joint[len(x_l):len(x_l) + len(u_w)]
        out["weak_labeled_strong"] = model.stream_logits(torch.cat([x_l, u_s]))["conv"][:len(x_l)]
        model.eval()
        out["weak_eval"] = model.stream_logits(u_w)["conv"]
    finally:
        for b, v in zip(model.buffers(), saved):
            b.copy_(v)
        model.train(was)
    known = truth >= 0
    res = {k: float((v.argmax(-1)[known] == truth[known]).float().mean()) for k, v in out.items()
           if k != "weak_labeled_strong"}
    res["labeled_acc"] = float((out["weak_labeled_strong"].argmax(-1) == batch.y).float().mean())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="semiformer")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--labels", default="10-per-class")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/semiformer-collapse")
    ap.add_argument("--name", default="run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    overrides = {"data.source": args.data, "data.labels": args.labels, "train.seed": args.seed,
                 "train.out": args.out, "train.progress": False, "train.tensorboard": False,
                 "train.device": "cpu", **parse_set_args(args.set)}
    if args.steps:
        overrides["train.steps"] = args.steps
    _, configs = stage_configs(load_yaml(find_recipe(args.recipe)), overrides)
    if len(configs) != 1:
        raise SystemExit("one-stage recipes only")

    rows: list[dict[str, float]] = []
    shadow: dict[str, BufferAveragingEMA] = {}
    live: dict[str, nn.Module] = {}
    update = trainer_mod.ModelEMA.update
    validate = StageEvaluation.validate

    def ema_update(self, model, decay=None):  # keep a handle on the live network, and a buffer-averaging EMA
        update(self, model, decay)
        live["net"] = model
        if "ema" not in shadow:
            shadow["ema"] = BufferAveragingEMA(model, self.decay)
        shadow["ema"].update(model)

    def validated(self, net, step, state, logger):
        acc = validate(self, net, step, state, logger)
        if "net" in live:
            val, data = self.inputs.data.split.val, self.inputs.data.train
            y = data.labels[val]
            row = {"step": step, "val_ema": acc,
                   "live_eval": top1(predict_logits(live["net"], data, val), y),
                   "live_train": top1(train_bn_logits(live["net"], data, val), y),
                   "ema_avgbuf": top1(predict_logits(shadow["ema"].module, data, val), y)}
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        return acc

    from semivit.methods.semiformer import Semiformer

    step_fn = Semiformer.training_step
    probes: list[dict[str, float]] = []

    def probed_step(self, batch, step):
        if step % 20 == 0 and batch.u_true is not None:
            probes.append({"step": step, **weak_probe(self.model, batch)})
            print(" ".join(f"{k}={v:.3f}" for k, v in probes[-1].items()), flush=True)
        return step_fn(self, batch, step)

    Semiformer.training_step = probed_step  # type: ignore[method-assign]
    trainer_mod.ModelEMA.update = ema_update  # type: ignore[method-assign]
    StageEvaluation.validate = validated  # type: ignore[method-assign]
    root = Path(args.out) / args.name
    result = run_stages(configs, root)
    with open(result.run_dir / "diagnostics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
        w.writeheader()
        w.writerows(rows)
    with open(result.run_dir / "weak_probe.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(probes[0]) if probes else ["step"])
        w.writeheader()
        w.writerows(probes)
    print({k: v for k, v in result.metrics.items() if "top1" in k})
    return 0


if __name__ == "__main__":
    sys.exit(main())
