"""Continual semi-supervised learning (NNCSL, Kang et al. ICCV 2023): class-incremental tasks with a few
labels each, a replay buffer of labeled exemplars, one Trainer run per task, and evaluation on every class
seen so far after each task.

- :mod:`.tasks`: the class-incremental task sequence and each task's split (labels at the share, unlabeled);
- :mod:`.buffer`: the class-balanced replay buffer of labeled exemplars;
- :mod:`.metrics`: the accuracy matrix, average incremental accuracy and forgetting;
- :mod:`.loop`: runs a method (NNCSL or a baseline) over the sequence, resumable between and inside tasks;
- :mod:`.commands`: ``semivit continual``.

The method itself is :mod:`semivit.methods.nncsl`.
"""

from typing import Any

#: --method → the recipe its tasks run, settings laid over the recipe's stage, whether it replays the buffer
#: and whether each task distils from the previous one
METHODS: dict[str, dict[str, Any]] = {
    "nncsl": {"recipe": "nncsl", "params": {}, "buffer": True},
    "csl": {"recipe": "nncsl", "params": {"w_dist": 0.0}, "buffer": True},
    "paws": {"recipe": "nncsl", "params": {"w_dist": 0.0, "mask": False}, "buffer": True},
    "finetune": {"recipe": "nncsl-baseline", "params": {}, "buffer": False},
    "replay": {"recipe": "nncsl-baseline", "params": {}, "buffer": True},
    "joint": {"recipe": "nncsl", "params": {"w_dist": 0.0}, "buffer": False, "joint": True},
}
STATE, RESULTS, TABLE = "continual.json", "results.json", "results.md"
