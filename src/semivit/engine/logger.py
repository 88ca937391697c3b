"""Metrics to CSV, TensorBoard, an experiment tracker (MLflow, Weights & Biases) and a progress bar, from
rank 0 only."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from semivit.core.io import atomic_write
from semivit.errors import SemivitError

_SHORT = {"images_per_sec": "img/s"}  # names too long for a progress bar


TRACKERS = ("none", "mlflow", "wandb")
_EXTRA = {"mlflow": "mlflow", "wandb": "wandb"}


def check_tracker(name: str) -> None:
    """One line, before any data loads, for an unknown tracker or one whose package is missing."""
    if name not in TRACKERS:
        raise SemivitError(f"train.tracker must be one of {', '.join(TRACKERS)}, got '{name}'")
    if name != "none":
        import importlib.util

        if importlib.util.find_spec(name) is None:
            raise SemivitError(f"train.tracker={name} needs the {name} package: pip install 'semivit[{_EXTRA[name]}]' "
                               f"(or set train.tracker=none)")


class _Tracker:
    """The rows of a run, and its settings once, to MLflow or Weights & Biases."""

    def __init__(self, name: str, run_dir: Path, settings: dict[str, Any]) -> None:
        import importlib

        self.name, self.lib = name, importlib.import_module(name)
        flat = _flatten(settings)
        if name == "mlflow":
            self.lib.start_run(run_name=run_dir.name)
            self.lib.log_params({k: str(v)[:500] for k, v in flat.items()})
        else:
            self.run = self.lib.init(name=run_dir.name, dir=str(run_dir), config=flat, reinit=True)

    def log(self, step: int, row: dict[str, float]) -> None:
        values = {k: float(v) for k, v in row.items() if k != "step"}
        if self.name == "mlflow":
            self.lib.log_metrics(values, step=step)
        else:
            self.run.log(values, step=step)

    def close(self) -> None:
        if self.name == "mlflow":
            self.lib.end_run()
        else:
            self.run.finish()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunLogger:
    """Writes ``metrics.csv`` (one row per logged step or evaluation) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, *, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True, desc: str = "", tracker: str = "none",
                 settings: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self._rows: list[dict[str, Any]] = []
        self._fields: list[str] = []
        self._tb = None
        self._bar = None
        self._tracker: _Tracker | None = None
        if not enabled:
            return
        if tracker != "none":
            check_tracker(tracker)
            self._tracker = _Tracker(tracker, run_dir, settings or {})
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
        if self._tracker is not None:
            self._tracker.log(step, row)
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
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
