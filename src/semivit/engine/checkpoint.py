"""Checkpoints and exported weights, as the engine and the commands use them: the files are
:mod:`semivit.core.checkpoint` (atomic, never unpickled), the model loading :mod:`semivit.models.io`."""

from semivit.core.checkpoint import (
    capture_rng,
    export_weights,
    exported_file,
    load_checkpoint,
    read_export_meta,
    read_spec,
    read_weights,
    restore_rng,
    save_checkpoint,
)
from semivit.models.io import load_model

__all__ = ["capture_rng", "export_weights", "exported_file", "load_checkpoint", "load_model", "read_export_meta",
           "read_spec", "read_weights", "restore_rng", "save_checkpoint"]
