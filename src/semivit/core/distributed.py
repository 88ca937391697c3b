"""DDP through ``torchrun`` (NCCL on GPUs, gloo on CPU): process-group set-up and small collectives.

semivit never launches processes itself: ``torchrun --nproc_per_node N -m semivit.cli train ...`` sets
RANK / WORLD_SIZE / LOCAL_RANK, and :func:`init_distributed` reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank)


def device_and_ranks(name: str) -> tuple[torch.device, DistInfo]:
    """The device ``name`` (cpu | cuda | auto) of this process, and its place among the torchrun processes
    (joining their group): under DDP each process takes the GPU of its local rank."""
    from semivit.core.device import resolve_device

    device = resolve_device(name)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return device, info


def world_size() -> int:
    """The number of DDP processes (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (the same shape on each rank) concatenated along dim 0 in rank order, without
    gradient; ``x`` itself in a single process. A collective, not a host sync: per-rank state that must be the
    same everywhere (SSMAE's pseudo-label memory) is written from the gathered values on every rank."""
    world = world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers to every rank. DDP does this before each forward, so after the last step each rank
    still holds the BatchNorm statistics of its own last batch: called once at the end of training, every
    rank then returns the model rank 0 saved."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
