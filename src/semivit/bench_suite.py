"""What a benchmark suite is: its cells (data set × labels × method × seed) and settings, as
:func:`semivit.bench.load_suite` reads them from YAML. Shared by the runner (:mod:`semivit.bench`) and the
reports (:mod:`semivit.bench_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    data: str
    labels: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.data}/{self.labels}/{self.method}/seed{self.seed}"


@dataclass
class Suite:
    name: str
    out: Path
    seeds: list[int]
    budget: dict[str, float]
    settings: dict[str, Any]
    data: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    path: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # data set → why it is skipped

    def cells(self) -> list[Cell]:
        out = []
        for dname, d in self.data.items():
            if dname in self.skipped:
                continue
            for labels in _as_list(d["labels"]):
                for mname, m in self.methods.items():
                    if "data" in m and dname not in m["data"]:
                        continue  # a method row meant for some data sets only (e.g. an ablation)
                    for seed in d.get("seeds", self.seeds):
                        out.append(Cell(dname, str(labels), mname, int(seed)))
        return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]
