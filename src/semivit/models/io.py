"""Loading a saved classifier: a semivit ``.safetensors`` export (rebuilt from the spec in its metadata) or a
hub-layout folder. The files themselves are read by :mod:`semivit.core.checkpoint`, never unpickled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from semivit.core.checkpoint import exported_file, read_weights
from semivit.errors import SemivitError
from semivit.models.hub_folder import is_hub_folder, load_hub_folder
from semivit.models.spec_check import model_from_spec


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved classifier (see :func:`export_weights`), or load a hub-layout folder; returns the model
    and the metadata."""
    if is_hub_folder(path):  # a hub-layout folder (`semivit export --format hub`, or any timm folder)
        model = load_hub_folder(path)
        return model, {"semivit_spec": model.spec.to_dict()}
    tensors, meta = read_weights(path)
    model = model_from_spec(meta["semivit_spec"], str(exported_file(path)))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:  # weights that do not fit the spec they came with
        raise SemivitError(f"'{exported_file(path)}': its weights do not match its model spec "
                           f"({str(e).splitlines()[0][:160]}): the file is damaged; re-export the model") from None
    return model.eval(), meta
