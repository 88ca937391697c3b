"""The replay buffer: a fixed number of labeled exemplars, balanced over the classes seen so far.

After each task the authors' ``make_buffer_lst`` (kangzhiq/NNCSL ``src/utils.py``) keeps everything while it
fits and otherwise ``size // seen classes`` exemplars per class, the first ones of the old classes (those it
already holds) and of the new classes' labels (in their subset file's random order), and fills the rest from
the new classes. :meth:`ReplayBuffer.update` does the same by water-filling: every class gets an equal share,
what a class cannot fill (it has fewer labels) goes to the others, leftover single slots go to the new
task's classes first (as the authors fill the remainder from the current task), then to the old ones.
Only labeled images enter it; unlabeled images are never stored.
"""

from __future__ import annotations

from typing import Any

import torch


class ReplayBuffer:
    """At most ``size`` labeled training-image indices, grouped by class (``size`` 0: no buffer)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("buffer size must be ≥ 0")
        self.size = size
        self.by_class: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_class.values())

    def indices(self) -> torch.Tensor:
        """The exemplars' training-image indices (sorted)."""
        flat = [i for c in sorted(self.by_class) for i in self.by_class[c]]
        return torch.tensor(sorted(flat), dtype=torch.long)

    def classes(self) -> list[int]:
        return sorted(c for c, v in self.by_class.items() if v)

    def update(self, labeled: torch.Tensor, labels: torch.Tensor, classes: list[int], seed: int) -> None:
        """Add the task of ``classes`` (its labeled indices ``labeled``, their ``labels``), then rebalance.

        The new classes' candidates are taken in a seeded random order; old classes keep their first
        exemplars (they can only lose some)."""
        if self.size == 0:
            return
        g = torch.Generator().manual_seed(seed)
        candidates = dict(self.by_class)
        for c in classes:
            members = labeled[labels == c]
            candidates[c] = members[torch.randperm(len(members), generator=g)].tolist()
        first = sorted(classes) + sorted(set(candidates) - set(classes))  # leftover slots: new classes first
        alloc = balanced_counts({c: len(candidates[c]) for c in first}, self.size)
        self.by_class = {c: candidates[c][:alloc[c]] for c in sorted(candidates)}

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "by_class": {str(c): v for c, v in self.by_class.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = int(state["size"])
        self.by_class = {int(c): [int(i) for i in v] for c, v in state["by_class"].items()}


def balanced_counts(available: dict[int, int], size: int) -> dict[int, int]:
    """How many exemplars each class keeps: equal shares of ``size``, capped by what a class has, the rest
    redistributed (water-filling); all of them when everything fits. Single leftover slots go to the classes
    in ``available``'s order."""
    alloc = {c: 0 for c in available}
    active = [c for c, n in available.items() if n > 0]
    remaining = min(size, sum(available.values()))
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for c in list(active):
            give = min(share, available[c] - alloc[c], remaining)
            alloc[c] += give
            remaining -= give
            if alloc[c] == available[c]:
                active.remove(c)
            if remaining == 0:
                break
    return alloc
