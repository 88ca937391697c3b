"""Run under ``torchrun --nproc_per_node 2``: trains a tiny model with gloo DDP, saves each rank's weights."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from semivit.core.distributed import cleanup
from semivit.engine.trainer import Trainer
from tests.conftest import tiny_config

if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = Trainer(tiny_config(out, **{"train.steps": 6, "train.eval_every": 3, "train.device": "cpu"}))
    result = trainer.fit()
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{trainer.dist.rank}.safetensors"))
    assert torch.distributed.get_world_size() == 2
    cleanup()
