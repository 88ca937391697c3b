"""Run under ``torchrun --nproc_per_node 2``: Noisy Student's class counts, summed over the ranks."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from semivit.methods.noisy_student import NoisyStudent, NoisyStudentParams
from tests.test_neighbours import saved_teacher, tiny_vit

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = Path(sys.argv[1])
    (out / f"teacher{rank}").mkdir()
    teacher = saved_teacher(out / f"teacher{rank}")  # any frozen teacher: only the counts are checked
    method = NoisyStudent(tiny_vit(), NoisyStudentParams(teacher=teacher, balance=True), 3, 10)
    hard = torch.tensor([[0, 0, 1, 0], [2, 0, 1, 1]][rank])  # each rank sees other teacher labels
    weights = method.balance_weights(hard, torch.ones(4, dtype=torch.bool))
    save_file({"counts": method.class_counts, "weights": weights}, str(out / f"rank{rank}.safetensors"))
    dist.destroy_process_group()
