"""Reading a run folder: which folder holds a finished run (or a recipe's stages), its resolved config,
whether its method trains the classifier, and where to evaluate. Shared by the report and the labeling
loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semivit.config import Config, apply_overrides, load_yaml
from semivit.data.imageset import ImageSet
from semivit.errors import SemivitError

__all__ = ["check_model_fits", "resolve_device", "run_config", "run_folder", "stage_folders", "trains_classifier"]


def run_folder(run: str | Path) -> Path:
    """The folder of a finished run that holds ``config.yaml`` and ``checkpoints/``: the run itself, or a
    recipe root's last stage (``stageK-METHOD``)."""
    p = Path(run).expanduser()
    if not p.is_dir():
        raise SemivitError(f"run '{run}' not found: pass a run folder (runs/NAME)")
    if (p / "config.yaml").is_file():
        return p
    stages = stage_folders(p)
    if stages:
        return stages[-1]
    raise SemivitError(f"'{run}' is not a run folder (no config.yaml): pass runs/NAME of a finished run")


def stage_folders(root: Path) -> list[Path]:
    """A recipe root's ``stageK-METHOD`` folders in stage order (empty for a single run)."""
    def number(d: Path) -> int:
        digits = "".join(c for c in d.name.split("-")[0] if c.isdigit())
        return int(digits or 0)

    return sorted((d for d in root.glob("stage*-*") if d.is_dir() and (d / "config.yaml").is_file()), key=number)


def run_config(run_dir: Path) -> Config:
    """The resolved config a run wrote (``config.yaml``)."""
    return apply_overrides(Config(), load_yaml(run_dir / "config.yaml"))


def trains_classifier(method: str) -> bool:
    """Whether ``method`` trains the classifier head (pre-training methods leave it untrained)."""
    from semivit.methods import method_class

    try:
        return bool(method_class(method).trains_classifier)
    except SemivitError:
        return True


def check_model_fits(model: Any, images: ImageSet, what: str) -> None:
    spec = model.spec
    if spec.in_chans != images.channels or spec.image_size != images.image_size[0]:
        raise SemivitError(f"the data is {images.channels}×{images.image_size[0]} px but '{what}' takes "
                           f"{spec.in_chans}×{spec.image_size} px: use a model trained on this data, or set "
                           f"data.image_size")


def resolve_device(name: str) -> str:
    from semivit.core.device import resolve_device as resolve

    return str(resolve(name))
