"""Metrics to CSV, TensorBoard and a progress bar, from rank 0 only."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from semivit.core.io import atomic_write

_SHORT = {"images_per_sec": "img/s"}  # names too long for a progress bar


class RunLogger:
    """Writes ``metrics.csv`` (one row per logged step or evaluation) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, *, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True, desc: str = "") -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self._rows: list[dict[str, Any]] = []
        self._fields: list[str] = []
        self._tb = None
        self._bar = None
        if not enabled:
            return
        if self.path.exists():  # resuming: keep the rows of steps already done, drop later ones
            with open(self.path, newline="") as f:
                self._rows = [r for r in csv.DictReader(f) if int(float(r.get("step") or 0)) <= start_step]
            for row in self._rows:
                self._add_fields(row)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
            except ImportError:  # tensorboard is optional at run time
                self._tb = None
        if progress:
            interactive = sys.stderr.isatty()
            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, unit="step",
                             mininterval=0.5 if interactive else 30.0, leave=True, file=sys.stderr)

    def _add_fields(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self._fields:
                self._fields.append(key)

    def log(self, step: int, metrics: dict[str, float], *, prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, **{f"{prefix}/{k}": v for k, v in metrics.items()}}
        self._rows.append(row)
        self._add_fields(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)
        self.flush()

    def progress(self, steps: int, postfix: dict[str, float] | None = None) -> None:
        """Advance the bar; ``postfix`` (given at log steps) replaces the metrics it shows."""
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:  # an empty update would wipe the last logged metrics every step
                self._bar.set_postfix({_SHORT.get(k, k): f"{v:.0f}" if v >= 100 else f"{v:.3g}"
                                       for k, v in postfix.items()}, refresh=False)

    def flush(self) -> None:
        """Rewrite metrics.csv atomically through a unique temp file (two writers never share one)."""
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._fields)
                writer.writeheader()
                writer.writerows(self._rows)

        atomic_write(self.path, write, durable=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
