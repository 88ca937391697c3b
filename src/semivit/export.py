"""``semivit export RUN --format hub|onnx|torchscript``: the trained classifier, where models go next.

What is exported is the run's ``model.safetensors``: the evaluation model (the EMA teacher where the run
has one, the EMA of ``train.ema`` otherwise), with no training-only heads (projectors, decoders,
predictors live on the method, not on the classifier).

- ``hub``: a folder in the Hugging Face hub / timm layout: ``config.json`` (timm ``architecture``,
  ``model_args``, ``num_classes``, ``label_names``, ``pretrained_cfg`` with mean/std and input size) and
  ``model.safetensors`` holding the timm backbone's own state dict. ``timm.create_model("local-dir:FOLDER",
  pretrained=True)`` loads it (feed it images normalised with the config's mean/std at its input size), as
  does ``semivit predict FOLDER``; ``huggingface_hub.upload_folder`` publishes it as it is.
- ``onnx``: ``model.onnx`` (opset ≥ 17, dynamic batch) whose input ``images`` is float N×C×H×W in [0, 1]
  at the run's image size, normalisation and any resize inside; output ``logits`` (a multi-label model adds
  ``probs`` and ``labels``, with its per-class thresholds in the graph). Checked against the
  PyTorch outputs with onnxruntime before it is kept.
- ``torchscript``: ``model.pt`` traced with the same input convention.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semivit.errors import SemivitError
from semivit.models.outlier import HUB_FILE as OUTLIER_HEAD_FILE

log = logging.getLogger("semivit")

FORMATS = ("hub", "onnx", "torchscript")
#: the ONNX check: largest |ONNX − PyTorch| logit difference accepted in fp32
ONNX_TOLERANCE = 1e-4


def find_model_file(run: str | Path, weights: str = "model") -> Path:
    """The ``.safetensors`` to export from a run folder (a pipeline's last stage), a checkpoints folder or
    a file. ``weights``: ``model`` (the final evaluation model) or ``best`` (best validation top-1)."""
    p = Path(run).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise SemivitError(f"run '{run}' not found: pass a run folder (runs/NAME) or its model.safetensors")
    stages = sorted((d for d in p.glob("stage*-*") if d.is_dir()),
                    key=lambda d: int("".join(c for c in d.name.split("-")[0] if c.isdigit()) or 0))
    folder = stages[-1] if stages else p
    for candidate in (folder / "checkpoints" / f"{weights}.safetensors", folder / f"{weights}.safetensors"):
        if candidate.is_file():
            return candidate
    raise SemivitError(f"no {weights}.safetensors in '{folder}': has the run finished? (best.safetensors exists "
                       f"only when the run validated)")


# --------------------------------------------------------------------------------------------------- hub
def timm_architecture(model: Any) -> tuple[str, dict[str, Any]]:
    """The timm registry name and constructor arguments that rebuild ``model.backbone`` exactly."""
    spec, kw = model.spec, model.spec.kwargs
    if kw.get("head_layers"):
        raise SemivitError("this model keeps projection-head layers before its classifier (model.head_layers="
                           f"{kw['head_layers']}), which timm cannot rebuild: export --format onnx or "
                           "torchscript, or fine-tune it with model.head_layers=0 first")
    if not hasattr(model.backbone, "forward_head") or spec.name.startswith("semiformer"):
        raise SemivitError(f"'{spec.name}' is not a timm model: export it with --format onnx or torchscript")
    from semivit.models.factory import RESNETS, VIT_SIZES

    args: dict[str, Any] = {"num_classes": spec.num_classes, "in_chans": spec.in_chans}
    if "timm_architecture" in kw:  # a pretrained backbone (models/hub.py)
        args.update(kw.get("timm_model_args") or {})
        if hasattr(model.backbone, "patch_embed"):
            args["img_size"] = kw["backbone_size"]
        return kw["timm_architecture"], args
    if spec.name in VIT_SIZES:  # semivit's own sizes are timm VisionTransformers with these arguments
        args.update(img_size=spec.image_size, patch_size=kw["patch_size"], embed_dim=kw["embed_dim"],
                    depth=kw["depth"], num_heads=kw["num_heads"], global_pool="avg")
        return "vit_base_patch16_224", args
    if spec.name in RESNETS and spec.image_size <= 64:
        raise SemivitError(f"'{spec.name}' at {spec.image_size} px uses a CIFAR-style 3×3 stem that timm cannot "
                           f"rebuild from a name: export it with --format onnx or torchscript")
    args.update({k: v for k, v in kw.items() if k in ("patch_size",)})
    if hasattr(model.backbone, "patch_embed"):
        args["img_size"] = spec.image_size
    return spec.name.partition(".")[0], args


def export_hub(model: Any, out: Path) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` in the timm / hub layout through timm's own
    ``save_for_hf`` (see module doc): the backbone's state dict, and a config whose ``pretrained_cfg`` holds the
    input size, mean/std and interpolation the model really uses (a pretrained backbone's resize inside the model
    included), plus a ``semivit`` entry that rebuilds the whole classifier."""
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    spec = model.spec
    arch, args = timm_architecture(model)
    size = spec.kwargs.get("backbone_size") or spec.image_size
    classes = spec.classes or [str(i) for i in range(spec.num_classes)]
    pretrained_cfg = {
        "architecture": arch,
        "input_size": [spec.in_chans, size, size],
        "interpolation": spec.kwargs.get("interpolation", "bilinear"),  # what the model resizes with
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [round(float(v), 6) for v in model.mean.flatten()],
        "std": [round(float(v), 6) for v in model.std.flatten()],
        "classifier": model.classifier_attr,
        # the stem timm adapts when a user loads the folder with another in_chans
        "first_conv": next((n for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)), None),
        "license": "other",
    }
    # how semivit rebuilds the whole classifier (its input size, and the resize inside the model)
    config = {"label_names": classes, "semivit": {"spec": spec.to_dict()}}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        backbone = model.backbone
        saved = getattr(backbone, "pretrained_cfg", None)
        # timm's config writer reads the input settings from the model's pretrained_cfg
        backbone.pretrained_cfg = {**(saved or {}), **pretrained_cfg}
        try:
            save_for_hf(backbone, str(tmp), model_config=config, model_args=args, safe_serialization=True)
        finally:
            backbone.pretrained_cfg = saved
        written = json.loads((tmp / "config.json").read_text())
        (tmp / "README.md").write_text(_model_card(written))
        if getattr(model, "outlier_head", None) is not None:  # not a timm module: beside the backbone's weights
            save_file({k: v.detach().cpu().contiguous() for k, v in model.outlier_head.state_dict().items()},
                      str(tmp / OUTLIER_HEAD_FILE))
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir() or any(p.name not in ("config.json", "model.safetensors", "README.md", OUTLIER_HEAD_FILE)
                                   for p in out.iterdir()):
            raise SemivitError(f"'{out}' exists and is not an earlier hub export: choose another -o folder")
        shutil.rmtree(out)
    tmp.rename(out)


def _model_card(config: dict[str, Any]) -> str:
    c, size = config["pretrained_cfg"], config["pretrained_cfg"]["input_size"]
    return (f"---\nlibrary_name: timm\ntags: [image-classification, timm, semivit]\n---\n"
            f"# {config['architecture']} fine-tuned with semivit\n\n"
            f"{config['num_classes']} classes: {', '.join(config['label_names'][:20])}"
            f"{' …' if len(config['label_names']) > 20 else ''}.\n\n"
            f"```python\nimport timm, torch\nmodel = timm.create_model('local-dir:THIS_FOLDER', pretrained=True)"
            f".eval()\n# images: float N×{size[0]}×{size[1]}×{size[2]} in [0, 1]\n"
            f"mean = torch.tensor({c['mean']}).view(1, -1, 1, 1)\nstd = torch.tensor({c['std']}).view(1, -1, 1, 1)\n"
            f"logits = model((images - mean) / std)\n```\n\nOr: `semivit predict THIS_FOLDER image.png`.\n")


# ------------------------------------------------------------------------------------------ onnx, script
def _example(model: Any, batch: int = 2) -> torch.Tensor:
    s = model.spec
    return torch.rand(batch, s.in_chans, s.image_size, s.image_size, generator=torch.Generator().manual_seed(0))


def export_onnx(model: Any, out: Path, opset: int = 18, exporter: str = "dynamo") -> float:
    """Write ``out`` (``model.onnx``) with a dynamic batch axis; returns the largest |ONNX − PyTorch| logit
    difference on a batch of another size than the traced one, checked with onnxruntime."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError:
        raise SemivitError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'semivit[export]'") \
            from None
    if opset < 17:
        raise SemivitError(f"--opset {opset}: use 17 or newer (LayerNorm is a single operator from 17)")
    multilabel = bool(getattr(model.spec, "multilabel", False))
    names = onnx_outputs(model)
    model = (_MultiLabelOutputs(model) if multilabel else _OutlierOutputs(model) if len(names) == 2 else
             _PlainForward(model)).eval()
    x = _example(model.inner)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with torch.no_grad():
            if exporter == "dynamo":
                torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=names,
                                  opset_version=opset, dynamo=True, external_data=False,
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
            elif exporter == "legacy":
                torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=names,
                                  opset_version=opset, dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}})
            else:
                raise SemivitError(f"unknown ONNX exporter '{exporter}': use dynamo or legacy")
        check = _example(model.inner, batch=5)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: check.numpy()})[0])
        with torch.no_grad():
            want = model(check)
            diff = float((got - (want[0] if isinstance(want, tuple) else want)).abs().max())
        if not diff < ONNX_TOLERANCE:
            raise SemivitError(f"the ONNX model's logits differ from PyTorch's by {diff:.2e} (> {ONNX_TOLERANCE}): "
                               f"try --onnx-exporter legacy or another --opset")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def export_torchscript(model: Any, out: Path) -> float:
    """Trace to ``out`` (``model.pt``); returns the largest logit difference on a batch of another size."""
    model = _PlainForward(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, _example(model.inner), check_trace=False)
        check = _example(model.inner, batch=5)
        diff = float((traced(check) - model(check)).abs().max())
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        traced.save(str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


class _PlainForward(nn.Module):
    """``images → logits`` as one tensor (a Semiformer's forward gives the fused logits)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.inner(images)
        return out["fused"] if isinstance(out, dict) else out


def onnx_outputs(model: Any) -> list[str]:
    """The ONNX file's output names for ``model``."""
    if getattr(model.spec, "multilabel", False):
        return ["logits", "probs", "labels"]
    return ["logits", "outlier_score"] if getattr(model, "outlier_head", None) is not None else ["logits"]


class _OutlierOutputs(_PlainForward):
    """A model with an outlier head (OpenMatch's one-vs-all heads): ``logits`` and each image's ``outlier_score``,
    1 − p⁺ of the predicted class's head (``models/outlier.py``)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        from semivit.models.outlier import model_outlier_scores

        return model_outlier_scores(self.inner, images)


class _MultiLabelOutputs(_PlainForward):
    """A multi-label model's ONNX outputs: ``logits``, ``probs`` (σ of each class) and ``labels`` (1 where a class's
    probability reaches the threshold chosen on the validation split, which the graph holds as a constant)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__(inner)
        self.register_buffer("thresholds", torch.tensor(inner.spec.decision_thresholds()).view(1, -1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(images)
        probs = logits.sigmoid()
        return logits, probs, (probs >= self.thresholds).to(torch.uint8)


# ------------------------------------------------------------------------------------------- the command
def export_run(run: str | Path, fmt: str, out: str | Path | None = None, *, weights: str = "model",
               opset: int = 18, exporter: str = "dynamo") -> tuple[Path, str]:
    """Export the run's classifier; returns the written path and a one-line summary."""
    from semivit.engine.checkpoint import load_model

    if fmt not in FORMATS:
        raise SemivitError(f"unknown export format '{fmt}': use {', '.join(FORMATS)}")
    source = find_model_file(run, weights)
    model, _ = load_model(source)
    model = model.float().eval()
    default = {"hub": "hub", "onnx": "model.onnx", "torchscript": "model.pt"}[fmt]
    target = Path(out) if out else source.parent.parent / "export" / default
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    shape = f"{spec.in_chans}×{spec.image_size}×{spec.image_size}"
    if fmt == "hub":
        export_hub(model, target)
        summary = (f"hub folder {target} ({spec.name}, {spec.num_classes} classes); load it with "
                   f"timm.create_model('local-dir:{target}', pretrained=True) or semivit predict {target}")
    elif fmt == "onnx":
        diff = export_onnx(model, target, opset=opset, exporter=exporter)
        names = onnx_outputs(model)
        outputs = ("outputs " if len(names) > 1 else "output ") + ", ".join(f"'{n}'" for n in names)
        summary = (f"ONNX {target} (opset {opset}, input 'images' N×{shape} float in [0, 1], {outputs}); "
                   f"onnxruntime matches PyTorch to {diff:.1e}")
    else:
        diff = export_torchscript(model, target)
        summary = f"TorchScript {target} (input N×{shape} float in [0, 1]); matches PyTorch to {diff:.1e}"
    log.info("exported %s from %s", fmt, source)
    return target, summary
