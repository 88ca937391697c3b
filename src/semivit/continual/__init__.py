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
