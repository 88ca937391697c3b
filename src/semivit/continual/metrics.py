"""What a continual run reports (class-incremental, every class seen so far evaluated with one head).

- accuracy matrix R: ``R[i][j]`` = top-1 on the test images of task j's classes after training task i
  (j ≤ i), predicting among all classes seen up to task i (the reference's ``validate``: logits restricted
  to the seen classes; no task identity is given);
- ``A_i``: top-1 on every seen class's test images after task i; **final accuracy** ``A_T`` (the paper's
  number); **average incremental accuracy** (1/T) Σ_i A_i (Rebuffi et al., iCaRL);
- **forgetting** (Chaudhry et al. 2018): for each task j < T, max_{i<T} R[i][j] − R[T][j], averaged over j;
  how much of each old task's best accuracy is lost by the end (lower is better; None with one task).
"""

from __future__ import annotations

from typing import Any

import torch


def seen_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, tasks: list[list[int]],
                        upto: int) -> tuple[list[float | None], float]:
    """Per-task top-1 and overall top-1 of ``logits`` (N×K, over all K classes) on test images of the
    classes of tasks 0..``upto``: classes not seen yet are excluded from the prediction (their logits set to
    −∞). Entries after ``upto`` are None."""
    seen = torch.tensor(sorted(c for t in tasks[:upto + 1] for c in t))
    masked = torch.full_like(logits, float("-inf"))
    masked[:, seen] = logits[:, seen]
    hits = (masked.argmax(-1) == labels).float()
    row: list[float | None] = []
    for j, classes in enumerate(tasks):
        mine = torch.isin(labels, torch.tensor(classes))
        row.append(float(hits[mine].mean()) if j <= upto and mine.any() else None)
    overall = float(hits[torch.isin(labels, seen)].mean())
    return row, overall


def forgetting(matrix: list[list[float | None]]) -> float | None:
    """Average forgetting of the tasks before the last (Chaudhry et al. 2018); None with fewer than 2 rows."""
    last = len(matrix) - 1
    if last < 1:
        return None
    drops = []
    for j in range(last):
        before = [matrix[i][j] for i in range(j, last) if matrix[i][j] is not None]
        final = matrix[last][j]
        if before and final is not None:
            drops.append(max(before) - final)
    return sum(drops) / len(drops) if drops else None


def summary(matrix: list[list[float | None]], overall: list[float]) -> dict[str, Any]:
    """Final accuracy, average incremental accuracy and forgetting of a finished (or partial) run."""
    return {"final_accuracy": overall[-1] if overall else None,
            "average_incremental_accuracy": sum(overall) / len(overall) if overall else None,
            "forgetting": forgetting(matrix), "tasks_done": len(overall)}


def format_table(matrix: list[list[float | None]], overall: list[float], tasks: list[list[int]],
                 title: str = "") -> str:
    """The accuracy matrix as a Markdown table (rows: after task i; columns: task j's classes; in %)."""
    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.1f}"

    head = ["after task", *[f"T{j + 1} {{{','.join(map(str, c))}}}" for j, c in enumerate(tasks)], "seen (A_i)"]
    lines = [f"### {title}" if title else "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (row, a) in enumerate(zip(matrix, overall)):
        lines.append("| " + " | ".join([str(i + 1), *[pct(v) for v in row], pct(a)]) + " |")
    s = summary(matrix, overall)
    lines.append("")
    lines.append(f"final accuracy {pct(s['final_accuracy'])}% · average incremental accuracy "
                 f"{pct(s['average_incremental_accuracy'])}% · forgetting "
                 f"{'n/a' if s['forgetting'] is None else pct(s['forgetting']) + ' points'}")
    return "\n".join(line for line in lines if line is not None).lstrip("\n") + "\n"
