"""Run as one "node" of ``torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d``: trains a tiny model
with gloo DDP, then saves this rank's weights and the unlabeled indices its data stream draws in one epoch."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from semivit.core.distributed import cleanup
from semivit.data.loaders import IndexStream
from semivit.engine.trainer import Trainer
from tests.conftest import tiny_config

if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = Trainer(tiny_config(out, **{"train.steps": 4, "train.eval_every": 0, "train.device": "cpu"}))
    result = trainer.fit()
    rank, world = trainer.dist.rank, trainer.dist.world
    pool = trainer.data.split.unlabeled
    stream = IndexStream(pool, 16, trainer.cfg.train.seed, 2, rank, world)  # the unlabeled stream's own setup
    drawn = torch.cat([stream.next() for _ in range(len(pool) // (16 * world))])
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file({**state, "drawn": drawn}, str(out / f"rank{rank}.safetensors"))
    assert torch.distributed.get_world_size() == 2
    cleanup()
