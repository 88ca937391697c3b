"""Run under ``torchrun --nproc_per_node 2``: the PAWS loss with this rank's half of the supports and of
the anchor views; supports gathered across ranks, ME-MAX's mean prediction all-reduced."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from semivit.methods.losses import gather_supports, paws_loss, smooth_one_hot, snn

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    supports, anchors = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    targets = torch.randn(8, 3, generator=g).softmax(-1)
    part = slice(rank * 4, rank * 4 + 4)
    s, a = supports[part].clone().requires_grad_(True), anchors[part].clone().requires_grad_(True)
    joined, joined_labels = gather_supports(s, labels[part])
    probs = snn(a, joined, smooth_one_hot(joined_labels, 3, 0.1), tau=0.1)
    loss, _ = paws_loss(probs, targets[part])
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    save_file({"loss": total / world, "grad_s": s.grad / world, "grad_a": a.grad / world,
               "labels": joined_labels}, str(Path(sys.argv[1]) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()
