"""Run under ``torchrun --nproc_per_node 2``: NT-Xent on this rank's half of a batch, negatives gathered."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from semivit.methods.losses import nt_xent

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)  # the joined batch
    part = slice(rank * 4, rank * 4 + 4)
    a, b = z1[part].clone().requires_grad_(True), z2[part].clone().requires_grad_(True)
    loss, _ = nt_xent(a, b, temperature=0.5)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)  # the mean over ranks, as DDP's gradient averaging implies
    save_file({"loss": total / world, "grad1": a.grad / world, "grad2": b.grad / world},
              str(Path(sys.argv[1]) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()
