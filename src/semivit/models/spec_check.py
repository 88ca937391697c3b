"""Validate a model description read from a file (a run's ``model.safetensors`` metadata, a hub folder's
``config.json``) *before* anything is built from it. A forged or damaged file must end in one line naming the
field, never in a traceback, and never in an attempt to allocate a 10⁹-class classifier."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from semivit.errors import SemivitError

if TYPE_CHECKING:
    from semivit.models.factory import ImageClassifier

MAX_CLASSES = 100_000  # ImageNet-21k has 21,843
MAX_CHANNELS = 64
MAX_IMAGE_SIZE = 4096
MAX_WIDTH = 16_384  # embed_dim, head_hidden
MAX_DEPTH = 256  # blocks, heads, head layers
MAX_PARAMETERS = 5e9  # a rough count of what the described network would allocate

#: spec.kwargs keys semivit writes, each with its check
_INT_KWARGS = {"patch_size": (1, MAX_IMAGE_SIZE), "embed_dim": (1, MAX_WIDTH), "depth": (1, MAX_DEPTH),
               "num_heads": (1, MAX_DEPTH), "head_layers": (0, MAX_DEPTH), "head_hidden": (1, MAX_WIDTH),
               "backbone_size": (1, MAX_IMAGE_SIZE)}
_OTHER_KWARGS = {"drop_path", "drop_path_rate", "timm_architecture", "timm_model_args", "pretrained_tag",
                 "resolution", "embedding", "interpolation", "outlier_head"}


def _int(value: Any, field: str, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SemivitError(f"{where}: '{field}' must be a whole number, got {value!r}: the file is damaged or "
                           f"forged; re-export the model")
    if not low <= value <= high:
        raise SemivitError(f"{where}: '{field}' is {value}, outside [{low}, {high}]: the file is damaged or "
                           f"forged; re-export the model")
    return value


def check_spec(spec: Any, where: str) -> dict[str, Any]:
    """``spec`` (a :meth:`ModelSpec.to_dict`) checked field by field; returns it. ``where`` names the file."""
    if not isinstance(spec, dict):
        raise SemivitError(f"{where}: the model spec is a {type(spec).__name__}, not a mapping: re-export the model")
    for key in ("name", "num_classes", "in_chans", "image_size"):
        if key not in spec:
            raise SemivitError(f"{where}: the model spec has no '{key}': the file is damaged or forged; re-export "
                               f"the model")
    unknown = set(spec) - {"name", "num_classes", "in_chans", "image_size", "kwargs", "classes", "multilabel",
                           "thresholds"}
    if unknown:
        raise SemivitError(f"{where}: unknown model spec field(s) {sorted(unknown)}: re-export the model")
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise SemivitError(f"{where}: the model name must be a string, got {spec['name']!r}")
    classes = _int(spec["num_classes"], "num_classes", 1, MAX_CLASSES, where)
    _int(spec["in_chans"], "in_chans", 1, MAX_CHANNELS, where)
    _int(spec["image_size"], "image_size", 1, MAX_IMAGE_SIZE, where)
    names = spec.get("classes") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            (names and len(names) != classes):
        raise SemivitError(f"{where}: 'classes' must list {classes} class names, got {str(names)[:80]}")
    if not isinstance(spec.get("multilabel", False), bool):
        raise SemivitError(f"{where}: 'multilabel' must be true or false, got {spec['multilabel']!r}")
    thresholds = spec.get("thresholds") or []
    if not isinstance(thresholds, list) or (thresholds and len(thresholds) != classes) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds):
        raise SemivitError(f"{where}: 'thresholds' must list {classes} numbers in [0, 1], got {str(thresholds)[:80]}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise SemivitError(f"{where}: the model spec's 'kwargs' must be a mapping, got {type(kwargs).__name__}")
    unknown = set(kwargs) - set(_INT_KWARGS) - _OTHER_KWARGS
    if unknown:
        raise SemivitError(f"{where}: unknown model setting(s) {sorted(unknown)} in the spec: re-export the model")
    for key, (low, high) in _INT_KWARGS.items():
        if kwargs.get(key) is not None:
            _int(kwargs[key], key, low, high, where)
    for key in ("drop_path", "drop_path_rate"):
        value = kwargs.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise SemivitError(f"{where}: '{key}' must be a number in [0, 1), got {value!r}")
    width, depth = kwargs.get("embed_dim") or 0, kwargs.get("depth") or 0
    estimate = 12 * width * width * depth + classes * max(width, kwargs.get("head_hidden") or 0, 1)
    if estimate > MAX_PARAMETERS:
        raise SemivitError(f"{where}: the described network has ~{estimate:.1e} parameters (over "
                           f"{MAX_PARAMETERS:.0e}): the file is damaged or forged")
    return spec


def check_hub_config(config: Any, where: str) -> dict[str, Any]:
    """A hub folder's ``config.json`` checked before timm builds from it: the architecture is a known timm
    model, ``num_classes`` and the input size are bounded whole numbers, ``model_args`` holds plain values."""
    import timm

    if not isinstance(config, dict):
        raise SemivitError(f"{where}: config.json holds a {type(config).__name__}, not a mapping")
    arch = config.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise SemivitError(f"{where}: 'architecture' is {arch!r}, not a timm architecture: re-export the model")
    _int(config.get("num_classes", 1000), "num_classes", 0, MAX_CLASSES, where)
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise SemivitError(f"{where}: 'model_args' must be a mapping, got {type(args).__name__}")
    for key, value in args.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > MAX_WIDTH * 16:
                raise SemivitError(f"{where}: model_args.{key} is {value}, out of range")
        elif isinstance(value, (list, tuple)):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_WIDTH * 16
                       for v in value):
                raise SemivitError(f"{where}: model_args.{key} must list numbers in range, got {str(value)[:80]}")
        else:
            raise SemivitError(f"{where}: model_args.{key} has a {type(value).__name__}: plain values only")
    pretrained = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained, dict):
        raise SemivitError(f"{where}: 'pretrained_cfg' must be a mapping")
    size = pretrained.get("input_size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise SemivitError(f"{where}: pretrained_cfg.input_size must be [channels, height, width], got {size!r}")
        _int(size[0], "pretrained_cfg.input_size[0]", 1, MAX_CHANNELS, where)
        for k in (1, 2):
            _int(size[k], f"pretrained_cfg.input_size[{k}]", 1, MAX_IMAGE_SIZE, where)
    for key in ("mean", "std"):
        value = pretrained.get(key)
        if value is not None and (not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise SemivitError(f"{where}: pretrained_cfg.{key} must list numbers, got {str(value)[:80]}")
    return config


def model_from_spec(spec: dict[str, Any], where: str = "the model file") -> ImageClassifier:
    """Rebuild a model from :meth:`ModelSpec.to_dict` (as stored in checkpoint metadata), after checking every
    field (:func:`check_spec`: a forged file is one line, not a huge allocation)."""
    from semivit.models.factory import create_model

    check_spec(spec, where)
    kwargs = dict(spec.get("kwargs") or {})
    drop_path = kwargs.pop("drop_path", kwargs.pop("drop_path_rate", 0.0))
    allowed = {k: kwargs[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "head_layers",
                                      "head_hidden") if k in kwargs}
    hub = None
    if "timm_architecture" in kwargs:  # a pretrained backbone: rebuilt offline from what the spec recorded
        from semivit.models.hub import HubModel

        hub = HubModel(spec["name"], kwargs["timm_architecture"], kwargs.get("pretrained_tag"),
                       {"input_size": (spec["in_chans"], kwargs["backbone_size"], kwargs["backbone_size"]),
                        "interpolation": kwargs.get("interpolation", "bilinear")},
                       dict(kwargs.get("timm_model_args") or {}))
        allowed.pop("patch_size", None)
        allowed["resolution"] = str(kwargs["backbone_size"])
    model = create_model(spec["name"], spec["num_classes"], spec["in_chans"], spec["image_size"],
                         drop_path=drop_path, classes=spec.get("classes"), hub=hub, **allowed)
    if kwargs.get("embedding"):  # a pre-training method's trained embedding (PAWS's projector)
        model.attach_embedding(kwargs["embedding"])
    if kwargs.get("outlier_head") is not None:  # OpenMatch's one-vs-all heads
        if kwargs["outlier_head"] is not True:
            raise SemivitError(f"{where}: the model spec's kwargs.outlier_head must be true, got "
                               f"{str(kwargs['outlier_head'])[:40]}")
        from semivit.models.outlier import attach_outlier_head

        attach_outlier_head(model)
    model.spec.multilabel = bool(spec.get("multilabel", False))
    model.spec.thresholds = [float(t) for t in spec.get("thresholds") or []]
    return model
